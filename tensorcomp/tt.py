"""Tensor-train decomposition by TT-SVD with a guaranteed explained variance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import tensorly as tl

from ._algebra import leading_subspace, squared_norm
from ._backend import backend_for
from ._results import TTResult, explained
from ._validate import check_eps, check_int_rank, check_integer, check_tensor, is_rank_sequence, to_safe_range

__all__ = ["tt"]


def _bond_bounds(shape: Sequence[int]) -> list[int]:
    """Largest useful TT rank of each of the d-1 internal bonds."""
    return [min(math.prod(shape[: k + 1]), math.prod(shape[k + 1 :])) for k in range(len(shape) - 1)]


def _check_tt_rank(rank: Any, shape: Sequence[int]) -> list[int]:
    bounds = _bond_bounds(shape)
    if not is_rank_sequence(rank):
        rank = check_int_rank(rank, max(bounds), alternative=f" or a sequence of {len(bounds)} integers")
        return [min(rank, b) for b in bounds]
    rank = list(rank)
    if len(rank) == len(shape) + 1:
        first, last = (check_integer(rank[k], f"rank[{k}]") for k in (0, len(rank) - 1))
        if first != 1 or last != 1:
            raise ValueError(f"boundary TT ranks must be 1; got rank={tuple(rank)!r}")
        rank = rank[1:-1]
    if len(rank) != len(bounds):
        raise ValueError(
            f"rank must have {len(bounds)} internal ranks (or {len(shape) + 1} with the boundary 1s); got rank={tuple(rank)!r}"
        )
    return [check_int_rank(r, b, what=f"rank[{k + 1}]") for k, (r, b) in enumerate(zip(rank, bounds))]


def tt(x: Any, eps: float = 0.9, *, rank: int | Sequence[int] | None = None) -> TTResult:
    """Tensor-train (TT-SVD) decomposition with explained variance at least ``eps``.

    Sweeps left to right; at bond ``k`` the current ``(r_{k-1} M_k) x rest``
    matrix is truncated to the fewest singular vectors whose discarded energy
    stays within ``delta^2 = (1 - eps) ||x||^2 / (d - 1)`` (Oseledets'
    delta-truncation). The discarded parts are mutually orthogonal, so
    ``||x - x_hat||^2 <= (1 - eps) ||x||^2``: the achieved explained variance,
    stored in ``explained_variance``, is guaranteed ``>= eps``.

    Parameters
    ----------
    x : tensor, shape (M_1, ..., M_d), d >= 2
    eps : float, default 0.9
        Guaranteed fraction of the total energy kept, in (0, 1].
    rank : int or sequence of int, optional
        Maximum rank of every bond (int, capped at each bond's natural bound
        ``min(prod(M_1..M_k), prod(M_{k+1}..M_d))``) or the ``d - 1`` internal
        ranks (or ``d + 1`` with the boundary 1s, TensorLy's convention);
        overrides ``eps``.

    Returns
    -------
    TTResult
        ``factors[k]`` of shape ``(r_k, M_k, r_{k+1})``; all but the last are
        left-orthonormal.

    Raises
    ------
    ValueError
        Bad ``eps`` or ``rank``, ``x`` of order < 2, an empty dimension, NaN or Inf.
    TypeError
        ``x`` is not a dense real array of a TensorLy backend (see
        :func:`svd`), ``eps`` is not a real number, or ``rank`` not an
        integer or a sequence of integers.

    Examples
    --------
    >>> import numpy as np
    >>> import tensorcomp
    >>> x = np.random.default_rng(0).standard_normal((4, 5, 6))
    >>> res = tensorcomp.tt(x, eps=0.8)
    >>> res.explained_variance >= 0.8
    True
    >>> res.rank[0], res.rank[-1]
    (1, 1)
    """
    eps = check_eps(eps)
    with backend_for(x):
        x, peak = check_tensor(x, min_order=2, method="tt")
        x, scale = to_safe_range(x, peak)
        shape = tuple(tl.shape(x))
        d = len(shape)
        ranks = None if rank is None else _check_tt_rank(rank, shape)
        total = squared_norm(x) if peak > 0 else 0.0
        budget = (1.0 - eps) * total / (d - 1)
        factors = []
        carry = x
        r_prev = 1
        for k in range(d - 1):
            matrix = tl.reshape(carry, (r_prev * shape[k], -1))
            if ranks is not None:
                cap = min(ranks[k], *tl.shape(matrix))
                u, _ = leading_subspace(matrix, 0, rank=cap)
            elif total == 0.0:  # all zero: rank 1 suffices (the budget of 0 would keep every rank)
                u, _ = leading_subspace(matrix, 0, rank=1)
            else:
                here = squared_norm(matrix)
                local_eps = 1.0 if budget <= 0.0 else (1.0 - budget / here if here > 0 else 0.0)
                u, _ = leading_subspace(matrix, 0, eps=local_eps)
            r_next = tl.shape(u)[1]
            factors.append(tl.reshape(u, (r_prev, shape[k], r_next)))
            carry = tl.dot(tl.transpose(u), matrix)
            r_prev = r_next
        kept = explained(squared_norm(carry), total)
        factors.append(tl.reshape(carry * scale if scale != 1.0 else carry, (r_prev, shape[-1], 1)))
        return TTResult(factors, explained_variance=kept)
