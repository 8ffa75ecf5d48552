"""Validation of public arguments: one place, messages that name the argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl

_INTEGER_KINDS = ("int", "uint", "bool")
# dtypes the decompositions take as they are; integers, booleans and 16-bit floats are cast (see check_tensor).
_FLOAT_DTYPES = ("float32", "float64")
_HALF_DTYPES = ("float16", "bfloat16")
_ACCEPTED_INPUT = "a dense real array of a TensorLy backend (numpy.ndarray, torch.Tensor, jax.Array, ...)"


def input_type_error(given: str, hint: str = "") -> TypeError:
    """The one error for an input tensor of a kind the decompositions do not take.

    ``given`` says what ``x`` is (``"a scipy.sparse csr_matrix"``), ``hint``
    how to pass it instead.
    """
    return TypeError(f"x must be {_ACCEPTED_INPUT}; got {given}" + (f"; {hint}" if hint else ""))


def _type_path(x: Any) -> str:
    cls = type(x)
    return f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def check_array_kind(x: Any) -> None:
    """Reject array types a backend would accept but that hold no dense data the decompositions can use.

    Runs before anything touches ``x`` (no conversion, no backend call), so
    a ``numpy.matrix`` or a masked array is never silently turned into
    something else: sparse matrices and arrays (scipy, torch layouts other
    than strided, jax's experimental sparse), ``numpy.matrix`` (its ``*`` is
    a matrix product and it stays 2-D under indexing), numpy masked arrays
    (the mask would be ignored), torch meta tensors (no data) and nested
    tensors (no single shape) raise :func:`input_type_error`.
    """
    module = type(x).__module__
    root = module.split(".")[0]
    if root == "numpy":
        if isinstance(x, np.matrix):
            raise input_type_error("a numpy.matrix", "pass np.asarray(x)")
        if isinstance(x, np.ma.MaskedArray):
            raise input_type_error("a numpy masked array (its mask would be ignored)", "fill it first, e.g. x.filled(0.0)")
    elif root == "scipy" and module.startswith("scipy.sparse"):
        raise input_type_error(f"a scipy.sparse {type(x).__qualname__} (a sparse matrix)", "convert it with x.toarray()")
    elif root == "torch":
        if getattr(x, "is_meta", False):
            raise input_type_error("a torch tensor on the meta device (it holds no data)")
        if getattr(x, "is_nested", False):
            raise input_type_error("a nested torch tensor (it has no single shape)")
        layout = getattr(x, "layout", None)
        if layout is not None and str(layout) != "torch.strided":
            raise input_type_error(f"a torch tensor of layout {layout} (a sparse tensor)", "convert it with x.to_dense()")
    elif root in ("jax", "jaxlib") and module.startswith("jax.experimental.sparse"):
        raise input_type_error(f"a jax sparse {type(x).__qualname__}", "convert it with x.todense()")


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
    Any other dtype (object, strings, datetimes, ``float128``, quantized)
    raises :func:`input_type_error`, complex ones included.
    Must be called inside :func:`tensorcomp._backend.backend_for`, whose
    :func:`check_array_kind` has already rejected sparse, meta and
    ``numpy.matrix`` inputs.
    """
    if getattr(x, "requires_grad", False):
        # Decompositions are not differentiable: keep their arrays out of autograd's graph.
        x = x.detach()
    dtype = _dtype_name(x)
    if "complex" in dtype:
        raise input_type_error(f"a {_type_path(x)} of dtype {dtype}", f"{method} supports real tensors only")
    if dtype.startswith(_INTEGER_KINDS):
        # Multiplying by a Python float promotes to the backend's default float
        # (float64 for numpy, the default dtype for torch and jax) on x's device.
        x = x * 1.0
    elif dtype in _HALF_DTYPES:
        x = _to_float32(x)
    elif dtype not in _FLOAT_DTYPES:
        # object, string, datetime, float128, float8, quantized ...: nothing the linear algebra takes.
        raise input_type_error(
            f"a {_type_path(x)} of dtype {dtype}",
            f"{method} takes float32 and float64 (integers, booleans and 16-bit floats are cast)",
        )
    shape = tuple(tl.shape(x))
    if len(shape) < min_order:
        raise ValueError(
            f"{method} needs a tensor of order >= {min_order}; got x of order {len(shape)} with shape {shape}"
        )
    if any(n == 0 for n in shape):
        raise ValueError(f"x must not have empty dimensions; got shape {shape}")
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


def check_integer(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None, alternative: str = ""
) -> int:
    """``value`` as an ``int`` after checking it is an integer in ``[minimum, maximum]``.

    The one integer check of the package: a value that is not an integer
    (``bool``, ``2.5``, ``"3"``, ``None``) raises :class:`TypeError`; an integer
    out of range raises :class:`ValueError`. NumPy integers (``np.int64(2)``)
    are integers. Both messages name the argument. ``alternative`` names what
    else the argument may be, for the type error (``" or a sequence of 3
    integers"``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer{_interval(minimum, maximum)}{alternative}; "
            f"got {value!r} of type {type(value).__name__}"
        )
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


def check_int_rank(rank: Any, upper: int, *, what: str = "rank", alternative: str = "") -> int:
    """Check an integer rank lies in [1, upper]."""
    return check_integer(rank, what, minimum=1, maximum=upper, alternative=alternative)


def is_rank_sequence(rank: Any) -> bool:
    """Whether ``rank`` is given per mode or bond (a list or tuple, not a string)."""
    return isinstance(rank, Sequence) and not isinstance(rank, (str, bytes))


def check_mode_ranks(rank: Any, shape: Sequence[int]) -> tuple[int, ...]:
    """Per-mode Tucker ranks from an int (same for every mode) or a sequence.

    Every entry goes through :func:`check_integer`: ``rank=2.5`` or
    ``rank=(2, 2.0, 2)`` raise :class:`TypeError`, an integer out of its
    mode's range :class:`ValueError`.
    """
    uppers = [max_rank(shape, n) for n in range(len(shape))]
    if not is_rank_sequence(rank):
        rank = check_int_rank(rank, min(uppers), alternative=f" or a sequence of {len(shape)} integers")
        return tuple(rank for _ in shape)
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
