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


def check_int_rank(rank: Any, upper: int, *, what: str = "rank") -> int:
    """Check an integer rank lies in [1, upper]."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"{what} must be a positive integer; got {rank!r} of type {type(rank).__name__}")
    rank = int(rank)
    if rank < 1 or rank > upper:
        raise ValueError(f"{what} must be between 1 and {upper}; got {what}={rank}")
    return rank


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
