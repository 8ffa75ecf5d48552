"""Truncated higher-order SVD: every mode truncated to a fraction of its energy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorly as tl

from ._algebra import leading_subspace, multi_mode_product, squared_norm
from ._backend import backend_for
from ._results import TuckerResult, explained
from ._validate import check_eps, check_mode_ranks, check_tensor, to_safe_range

__all__ = ["hosvd"]


def _hosvd(x: Any, eps: float, ranks: Sequence[int] | None, total: float, scale: float = 1.0) -> TuckerResult:
    """HOSVD on a validated tensor (divided by ``scale``, see ``to_safe_range``), inside its backend context."""
    factors = []
    for mode in range(tl.ndim(x)):
        factor, _ = leading_subspace(x, mode, eps=eps, rank=None if ranks is None else ranks[mode])
        factors.append(factor)
    core = multi_mode_product(x, [tl.transpose(f) for f in factors])
    kept = explained(squared_norm(core), total)
    return TuckerResult(core * scale if scale != 1.0 else core, factors, explained_variance=kept)


def hosvd(x: Any, eps: float = 0.9, *, rank: int | Sequence[int] | None = None) -> TuckerResult:
    """Truncated HOSVD keeping a fraction ``eps`` of each mode's energy.

    For each mode ``n`` the factor ``U_n`` holds the leading left singular
    vectors of the mode-``n`` unfolding ``X_(n)``: the fewest ``K_n`` with
    ``sum_{i<=K_n} s_i^2 / ||x||^2 >= eps``. The core is
    ``x ×_1 U_1^T ... ×_d U_d^T``. The singular subspaces come from the
    eigendecomposition of ``X_(n) X_(n)^T`` (``M_n x M_n``), which
    gives the same ranks and subspaces as an SVD of the unfolding at a
    fraction of its cost.

    Error bound: ``||x - x_hat||^2 <= sum_n (1 - eps) ||x||^2``, i.e. the
    explained variance is at least ``1 - d (1 - eps)``; the achieved value,
    ``||core||^2 / ||x||^2``, is stored in ``explained_variance``.

    Parameters
    ----------
    x : tensor, shape (M_1, ..., M_d), d >= 2
        Any TensorLy backend's array; see :func:`svd` for dtype handling.
    eps : float, default 0.9
        Fraction of each mode's energy to keep, in (0, 1]; 1.0 keeps all.
    rank : int or sequence of int, optional
        Fixed ranks ``(K_1, ..., K_d)`` (an int means the same for every
        mode), each in ``[1, min(M_n, prod_{m != n} M_m)]``; overrides ``eps``.

    Returns
    -------
    TuckerResult
        ``core`` of shape ``rank``, ``factors[n]`` of shape ``(M_n, K_n)``
        with orthonormal columns. Stores ``prod K_n + sum M_n K_n`` elements.

    Raises
    ------
    ValueError
        Bad ``eps`` or ``rank``, ``x`` of order < 2, an empty dimension, NaN or Inf.
    TypeError
        ``x`` is not a dense real array of a TensorLy backend (see
        :func:`svd`), ``eps`` is not a real number, or ``rank`` not an
        integer or a sequence of integers (``rank=2.5``, ``rank=(2, 2.0, 2)``).

    Examples
    --------
    >>> import numpy as np
    >>> import tensorcomp
    >>> rng = np.random.default_rng(0)
    >>> x = np.einsum("i,j,k->ijk", *(rng.standard_normal(n) for n in (8, 6, 5)))
    >>> res = tensorcomp.hosvd(x, eps=0.9)
    >>> res.rank
    (1, 1, 1)
    >>> core, factors = res
    >>> bool(np.allclose(res.to_tensor(), x))
    True
    """
    eps = check_eps(eps)
    with backend_for(x):
        x, peak = check_tensor(x, min_order=2, method="hosvd")
        x, scale = to_safe_range(x, peak)
        ranks = None if rank is None else check_mode_ranks(rank, tl.shape(x))
        total = squared_norm(x) if peak > 0 else 0.0
        return _hosvd(x, eps, ranks, total, scale)
