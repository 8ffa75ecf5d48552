"""Tucker decomposition by higher-order orthogonal iteration (HOOI) from HOSVD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorly as tl

from ._algebra import leading_subspace, mode_product, multi_mode_product, squared_norm
from ._backend import backend_for
from ._results import TuckerResult, explained
from ._validate import check_eps, check_integer, check_mode_ranks, check_real, check_tensor, to_safe_range
from .hosvd import _hosvd

__all__ = ["tucker"]


def tucker(
    x: Any,
    eps: float = 0.9,
    *,
    rank: int | Sequence[int] | None = None,
    n_iter_max: int = 20,
    tol: float = 1e-6,
) -> TuckerResult:
    """Tucker decomposition: HOSVD's ranks and factors refined by HOOI.

    Starts from :func:`hosvd` (which picks the ranks from ``eps`` unless
    ``rank`` is given), then alternately replaces each factor by the leading
    subspace of ``x`` projected on all other factors. Each sweep can only
    raise ``||core||``; the best iterate is returned, so the reconstruction
    error is never above HOSVD's at the same ranks.

    Parameters
    ----------
    x : tensor, shape (M_1, ..., M_d), d >= 2
    eps : float, default 0.9
        Fraction of each mode's energy HOSVD keeps when choosing the ranks.
    rank : int or sequence of int, optional
        Fixed ranks; overrides ``eps`` (see :func:`hosvd`).
    n_iter_max : int, default 20
        Maximum number of HOOI sweeps, ``>= 0`` (0 returns HOSVD's result).
    tol : float, default 1e-6
        Stop when a sweep raises the explained variance by less than this;
        a finite real number ``>= 0``.

    Returns
    -------
    TuckerResult

    Raises
    ------
    ValueError
        As :func:`hosvd`, or ``n_iter_max < 0``, or ``tol`` negative, NaN or infinite.
    TypeError
        As :func:`hosvd`, or ``n_iter_max`` is not an integer (``2.5``,
        ``"3"``, ``True``) or ``tol`` not a real number.

    Examples
    --------
    >>> import numpy as np
    >>> import tensorcomp
    >>> x = np.random.default_rng(0).standard_normal((6, 5, 4))
    >>> h, t = tensorcomp.hosvd(x, rank=2), tensorcomp.tucker(x, rank=2)
    >>> t.explained_variance >= h.explained_variance
    True
    """
    eps = check_eps(eps)
    n_iter_max = check_integer(n_iter_max, "n_iter_max", minimum=0)
    tol = check_real(tol, "tol", minimum=0.0)
    with backend_for(x):
        x, peak = check_tensor(x, min_order=2, method="tucker")
        x, scale = to_safe_range(x, peak)
        ranks = None if rank is None else check_mode_ranks(rank, tl.shape(x))
        total = squared_norm(x) if peak > 0 else 0.0
        best = _hosvd(x, eps, ranks, total)
        if total == 0.0:
            return best
        ranks = best.rank
        factors = list(best.factors)
        previous = best.explained_variance
        order = tl.ndim(x)
        for _ in range(n_iter_max):
            for mode in range(order):
                others = [m for m in range(order) if m != mode]
                projected = multi_mode_product(x, [tl.transpose(factors[m]) for m in others], others)
                factors[mode], _ = leading_subspace(projected, mode, rank=ranks[mode])
            core = mode_product(projected, tl.transpose(factors[-1]), order - 1)
            current = explained(squared_norm(core), total)
            if current > best.explained_variance:
                best = TuckerResult(core, list(factors), explained_variance=current)
            if current - previous < tol:
                break
            previous = current
        if scale != 1.0:
            best = TuckerResult(best.core * scale, list(best.factors), explained_variance=best.explained_variance)
        return best
