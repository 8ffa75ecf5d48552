"""Warm-started subspace iteration: Tucker factors refined from the previous step's.

During training, the activations a layer sees change little from one step to
the next, and so do their dominant subspaces. Instead of a fresh HOSVD each
step, each factor ``U_n`` is refined from the previous one with one step of
orthogonal (subspace) iteration, ``U_n <- orth(X_(n) X_(n)^T U_n)``, with the
ranks kept fixed and no eigendecomposition. The product is formed in the
cheaper of two orders: two thin products with ``x`` (about ``4 K_n N`` flops
per step for ``N`` elements), or the mode Gram once (about ``2 M_n N``) and
then ``(M_n, M_n) @ (M_n, K_n)`` per step, which wins when the rank is more
than about half the mode size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import tensorly as tl
from tensorly.cp_tensor import CPTensor
from tensorly.tt_tensor import TTTensor

from ._algebra import (
    _orthonormal_columns,
    leading_subspace,
    mode_gram,
    mode_product,
    multi_mode_product,
    squared_norm,
)
from ._backend import backend_for
from ._results import TuckerResult, explained
from ._validate import check_eps, check_integer, check_mode_ranks, check_tensor, to_safe_range
from .hosvd import _hosvd

__all__ = ["subspace_iteration"]


def subspace_iteration(
    x: Any,
    eps: float = 0.9,
    *,
    rank: int | Sequence[int] | None = None,
    init: TuckerResult | None = None,
    n_iter: int = 1,
) -> TuckerResult:
    """Tucker decomposition by subspace iteration, warm-started from ``init``.

    Without ``init`` this is :func:`hosvd` (ranks from ``eps`` or ``rank``).
    With ``init`` (typically the previous training step's result for the same
    layer), each factor takes ``n_iter`` steps of orthogonal iteration from
    ``init.factors[n]`` at rank ``init.rank[n]``. A mode whose size changed
    (e.g. a smaller last batch) is recomputed from scratch at the same rank
    (capped at its size).

    Parameters
    ----------
    x : tensor, shape (M_1, ..., M_d), d >= 2
    eps : float, default 0.9
        Used to choose the ranks when there is no ``init``.
    rank : int or sequence of int, optional
        Fixed ranks; overrides both ``eps`` and ``init``'s ranks.
    init : TuckerResult, optional
        Factors to start from, of the same order as ``x``: a
        :class:`~tensorcomp.TuckerResult`, a tensorly ``TuckerTensor``, or any object
        whose ``.factors`` hold one 2-D factor matrix per mode (on any
        backend; they are moved to ``x``'s).
    n_iter : int, default 1
        Orthogonal-iteration steps per mode, ``>= 1`` (NumPy integers too).

    Returns
    -------
    TuckerResult

    Raises
    ------
    ValueError
        As :func:`hosvd`; also if ``init`` has another order than ``x``, a
        factor without columns, or ``n_iter < 1``.
    TypeError
        As :func:`hosvd`; also if ``n_iter`` is not an integer, or ``init``
        is not a Tucker decomposition (an array, an :class:`~tensorcomp.SVDResult`,
        :class:`~tensorcomp.CPResult` or :class:`~tensorcomp.TTResult`).

    Examples
    --------
    >>> import numpy as np
    >>> import tensorcomp
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((16, 8, 4, 4))
    >>> first = tensorcomp.subspace_iteration(x, eps=0.8)
    >>> nxt = tensorcomp.subspace_iteration(x + 0.01 * rng.standard_normal(x.shape), init=first)
    >>> nxt.rank == first.rank
    True
    """
    eps = check_eps(eps)
    n_iter = check_integer(n_iter, "n_iter", minimum=1)
    previous_factors = None if init is None else _init_factors(init)
    with backend_for(x):
        x, peak = check_tensor(x, min_order=2, method="subspace_iteration")
        x, scale = to_safe_range(x, peak)
        shape = tuple(tl.shape(x))
        ranks = None if rank is None else check_mode_ranks(rank, shape)
        total = squared_norm(x) if peak > 0 else 0.0
        if previous_factors is None:
            return _hosvd(x, eps, ranks, total, scale)
        if len(previous_factors) != len(shape):
            raise ValueError(f"init must be of order {len(shape)} like x; got a decomposition of order {len(previous_factors)}")
        factors = []
        for mode, previous in enumerate(previous_factors):
            rows, columns = previous.shape
            k = ranks[mode] if ranks is not None else min(columns, shape[mode])
            if rows != shape[mode] or columns != k:
                factor, _ = leading_subspace(x, mode, rank=k)
            else:
                factor = _refine(x, tl.tensor(previous, **tl.context(x)), mode, n_iter)
            factors.append(factor)
        core = multi_mode_product(x, [tl.transpose(f) for f in factors])
        kept = explained(squared_norm(core), total)
        return TuckerResult(core * scale if scale != 1.0 else core, factors, explained_variance=kept)


_INIT_ACCEPTS = (
    "init must be a Tucker decomposition of x's order (a TuckerResult such as the previous hosvd, tucker or "
    "subspace_iteration result, a tensorly TuckerTensor, or any object whose .factors are one 2-D matrix per mode)"
)


def _init_factors(init: Any) -> list[Any]:
    """The factor matrices of a warm start, after checking ``init`` is a Tucker decomposition.

    Anything whose ``.factors`` are 2-D arrays is taken (the adapters keep
    only the factors between steps), except CP and tensor-train results: an
    :class:`~tensorcomp.SVDResult` or :class:`~tensorcomp.CPResult` has 2-D
    factors too, but they are not Tucker factors.
    """
    kind = type(init).__name__
    if isinstance(init, (CPTensor, TTTensor)):
        family = "tensor-train" if isinstance(init, TTTensor) else "CP"
        raise TypeError(f"{_INIT_ACCEPTS}; got {kind}, a {family} decomposition, whose factors are not Tucker factors")
    factors = getattr(init, "factors", None)
    if not isinstance(factors, Sequence) or isinstance(factors, (str, bytes)):
        raise TypeError(f"{_INIT_ACCEPTS}; got an object of type {kind}")
    for n, factor in enumerate(factors):
        shape = getattr(factor, "shape", None)
        if shape is None or len(shape) != 2:
            raise TypeError(f"{_INIT_ACCEPTS}; got {kind} whose factors[{n}] has shape {shape}")
        if shape[1] < 1:
            raise ValueError(f"init.factors[{n}] must have at least one column; got shape {tuple(shape)}")
    return list(factors)


def _refine(x: Any, factor: Any, mode: int, n_iter: int) -> Any:
    """``n_iter`` steps of ``U <- orth(X_(n) X_(n)^T U)``, through the mode Gram where that is cheaper."""
    shape = tuple(tl.shape(x))
    size, rows, k = math.prod(shape), shape[mode], tl.shape(factor)[1]
    through_gram = 2 * rows * size + 2 * n_iter * rows * rows * k
    through_x = 4 * n_iter * k * size
    if through_gram < through_x:
        gram = mode_gram(x, mode)
        for _ in range(n_iter):
            factor = _orthonormal_columns(tl.dot(gram, factor))
        return factor
    others = [m for m in range(len(shape)) if m != mode]
    for _ in range(n_iter):
        projected = mode_product(x, tl.transpose(factor), mode)  # x ×_n U^T
        factor = _orthonormal_columns(tl.tensordot(x, projected, axes=(others, others)))
    return factor
