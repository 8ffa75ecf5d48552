"""Validation of public arguments: one place, messages that name the argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import tensorly as tl

_INTEGER_KINDS = ("int", "uint", "bool")


def check_eps(eps: Any) -> float:
    """Return ``eps`` as a float after checking it lies in (0, 1]."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number in (0, 1]; got {eps!r} of type {type(eps).__name__}")
    eps = float(eps)
    if not (0.0 < eps <= 1.0):  # also rejects NaN
        raise ValueError(f"eps must be in (0, 1] (the fraction of energy to keep); got eps={eps!r}")
    return eps


def _dtype_name(x: Any) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


def check_tensor(x: Any, *, min_order: int, method: str) -> tuple[Any, float]:
    """Validate the input tensor of a decomposition.

    Returns the tensor, cast to the backend's default floating dtype when it
    holds integers or booleans and to float32 when it is a 16-bit float (the
    linear algebra these methods need has no 16-bit kernels), together with
    its largest absolute value, which callers use to detect an all-zero input.
    Must be called inside :func:`tensorcomp._backend.backend_for`.
    """
    shape = tuple(tl.shape(x))
    if len(shape) < min_order:
        raise ValueError(
            f"{method} needs a tensor of order >= {min_order}; got x of order {len(shape)} with shape {shape}"
        )
    if any(n == 0 for n in shape):
        raise ValueError(f"x must not have empty dimensions; got shape {shape}")
    if getattr(x, "requires_grad", False):
        # Decompositions are not differentiable: keep their arrays out of autograd's graph.
        x = x.detach()
    dtype = _dtype_name(x)
    if "complex" in dtype:
        raise TypeError(f"{method} supports real tensors only; got x of dtype {dtype}")
    if dtype.startswith(_INTEGER_KINDS):
        # Multiplying by a Python float promotes to the backend's default float
        # (float64 for numpy, the default dtype for torch and jax) on x's device.
        x = x * 1.0
    elif dtype in ("float16", "bfloat16"):
        x = _to_float32(x)
    peak = float(tl.to_numpy(tl.max(tl.abs(x))))
    if not math.isfinite(peak):
        raise ValueError(f"x contains NaN or Inf values; {method} needs finite input")
    return x, peak


def _to_float32(x: Any) -> Any:
    if not hasattr(x, "astype"):  # torch tensors spell it .float()
        return x.float()
    return x.astype("float32")


def max_rank(shape: Sequence[int], mode: int) -> int:
    """Largest meaningful rank of the mode-``mode`` unfolding of a tensor of ``shape``."""
    rest = math.prod(shape) // shape[mode]
    return min(shape[mode], rest)


def check_integer(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` after checking it is an integer in ``[minimum, maximum]``.

    The one integer check of the package: a value that is not an integer
    (``bool``, ``2.5``, ``"3"``, ``None``) raises :class:`TypeError`; an integer
    out of range raises :class:`ValueError`. NumPy integers (``np.int64(2)``)
    are integers. Both messages name the argument.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{_interval(minimum, maximum)}; got {value!r} of type {type(value).__name__}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer{_interval(minimum, maximum)}; got {name}={value}")
    return value


def check_real(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a ``float`` after checking it is a finite real number in ``[minimum, maximum]``.

    Same policy as :func:`check_integer`: not a real number (``bool``,
    ``"a"``, ``None``) raises :class:`TypeError`; NaN, an infinity or a
    value out of range raises :class:`ValueError`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{_interval(minimum, maximum)}; got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be a finite real number{_interval(minimum, maximum)}; got {name}={value!r}")
    return value


def _interval(minimum: float | None, maximum: float | None) -> str:
    if minimum is None and maximum is None:
        return ""
    if maximum is None:
        return f" >= {minimum}"
    if minimum is None:
        return f" <= {maximum}"
    return f" between {minimum} and {maximum}"


def check_int_rank(rank: Any, upper: int, *, what: str = "rank") -> int:
    """Check an integer rank lies in [1, upper]."""
    return check_integer(rank, what, minimum=1, maximum=upper)


def check_mode_ranks(rank: Any, shape: Sequence[int]) -> tuple[int, ...]:
    """Per-mode Tucker ranks from an int (same for every mode) or a sequence."""
    uppers = [max_rank(shape, n) for n in range(len(shape))]
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        return tuple(check_int_rank(rank, min(uppers), what="rank") for _ in shape)
    if not isinstance(rank, Sequence) or isinstance(rank, str):
        raise TypeError(f"rank must be an int or a sequence of {len(shape)} ints; got {rank!r}")
    if len(rank) != len(shape):
        raise ValueError(f"rank must have one entry per mode ({len(shape)}); got rank={tuple(rank)!r}")
    return tuple(check_int_rank(r, u, what=f"rank[{n}]") for n, (r, u) in enumerate(zip(rank, uppers)))


# Decompositions form Gram matrices, whose entries are squares of x's: outside these ranges of
# max|x| they under- or overflow (a 1e-170 float64 tensor has an all-zero Gram, a 1e20 float32 one an infinite one).
_SAFE_EXPONENTS = {"float64": 400, "float32": 40}


def to_safe_range(x: Any, peak: float) -> tuple[Any, float]:
    """``x`` divided by a power of two that brings ``max|x|`` near 1 when it is too small or too large, and that factor.

    The factor is a power of two, so the division is exact; callers multiply
    one stored array of their result by it. Returns ``(x, 1.0)`` for an input
    in the safe range (the usual case: no copy) or an all-zero one.
    """
    if peak <= 0.0:
        return x, 1.0
    limit = _SAFE_EXPONENTS.get(_dtype_name(x).rsplit(".", 1)[-1], 40)
    exponent = math.frexp(peak)[1]
    if -limit <= exponent <= limit:
        return x, 1.0
    scale = math.ldexp(1.0, exponent)
    return x / scale, scale
