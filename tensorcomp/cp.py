"""CP (CANDECOMP/PARAFAC) decomposition with the rank chosen from a target explained variance."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import tensorly as tl
from tensorly.decomposition import parafac

from ._algebra import leading_subspace, squared_norm
from ._backend import backend_for
from ._results import CPResult, explained
from ._validate import check_eps, check_int_rank, check_tensor, to_safe_range

__all__ = ["cp"]


def _explained(x: Any, weights: Any, factors: list[Any], total: float) -> float:
    residual = x - tl.cp_to_tensor((weights, factors))
    return explained(total - squared_norm(residual), total)


def _fit(x: Any, rank: int, init: tuple[Any, list[Any]], n_iter_max: int, tol: float) -> tuple[Any, list[Any]]:
    with warnings.catch_warnings():
        # TensorLy warns that a given init combined with normalize_factors is
        # "not recommended"; warm starts are exactly what this module wants.
        warnings.filterwarnings("ignore", message="It is not recommended to initialize", category=UserWarning)
        # TensorLy's ALS with normalize_factors=True hits a singular system on
        # matrices (order 2) of rank > 1; normalising after the fit is equivalent.
        normalize = tl.ndim(x) > 2
        weights, factors = parafac(x, rank, init=init, n_iter_max=n_iter_max, tol=tol, normalize_factors=normalize)
    if not normalize:
        weights, factors = tl.cp_normalize((weights, factors))
    return weights, list(factors)


def _grow(x: Any, weights: Any, factors: list[Any], extra: int) -> tuple[Any, list[Any]]:
    """Previous solution plus ``extra`` components from the residual's leading subspaces.

    With ``weights=None`` there is no previous solution: the start is the
    leading subspaces of ``x`` itself (TensorLy's ``init='svd'``, from the mode
    Grams instead of a full SVD of every unfolding).
    """
    residual = x if weights is None else x - tl.cp_to_tensor((weights, factors))
    new = []
    for mode, size in enumerate(tl.shape(x)):
        k = min(extra, size)
        u, _ = leading_subspace(residual, mode, rank=k)
        if k < extra:  # a short mode: repeat its directions; ALS separates them
            u = tl.concatenate([u] * math.ceil(extra / k), axis=1)[:, :extra]
        new.append(u if weights is None else tl.concatenate([factors[mode], u], axis=1))
    scale = math.sqrt(max(squared_norm(residual), 1e-30) / extra)
    extra_weights = tl.ones((extra,), **tl.context(x)) * scale
    if weights is None:
        return extra_weights, new
    return tl.concatenate([weights, extra_weights], axis=0), new


def _shrink(weights: Any, factors: list[Any], rank: int) -> tuple[Any, list[Any]]:
    """The ``rank`` heaviest components of a normalised CP solution."""
    order = tl.to_numpy(tl.abs(weights)).argsort()[::-1][:rank].copy()
    # An integer array of the weights' own backend and device indexes them everywhere.
    index = tl.tensor(order, **{k: v for k, v in tl.context(weights).items() if k == "device"})
    return weights[index], [f[:, index] for f in factors]


def _scaled_cp(scale: float, weights: Any, factors: list[Any], *, explained_variance: float) -> CPResult:
    """The result for the input before ``to_safe_range`` divided it by ``scale``."""
    return CPResult(weights * scale if scale != 1.0 else weights, factors, explained_variance=explained_variance)


def cp(
    x: Any,
    eps: float = 0.9,
    *,
    rank: int | None = None,
    max_rank: int | None = None,
    n_iter_max: int = 100,
    tol: float = 1e-7,
) -> CPResult:
    """CP decomposition by ALS at the smallest rank whose explained variance reaches ``eps``.

    CP has no SVD-like truncation, so the rank is searched: ranks
    1, 2, 4, ... are fitted until one reaches ``eps`` (each warm-started
    from the previous solution plus new components taken from the
    residual's leading subspaces), then the gap between the last failing
    and the first passing rank is bisected, each probe warm-started from the
    heaviest components of the passing solution. ALS is a local method, so
    "smallest" is with respect to this search.

    Parameters
    ----------
    x : tensor, shape (M_1, ..., M_d), d >= 2
    eps : float, default 0.9
        Target fraction of the energy, in (0, 1].
    rank : int, optional
        Fit exactly this rank (no search); overrides ``eps``.
    max_rank : int, optional
        Largest rank the search tries. Default: the largest rank that stores
        no more than the dense tensor, ``prod(M) // sum(M)`` (at least 1).
        If it cannot reach ``eps``, the ``max_rank`` solution is returned
        with a :class:`RuntimeWarning`.
    n_iter_max : int, default 100
        ALS sweeps per fitted rank.
    tol : float, default 1e-7
        ALS convergence tolerance (change of the reconstruction error).

    Returns
    -------
    CPResult
        ``weights`` of shape (R,), ``factors[n]`` of shape ``(M_n, R)`` with
        unit-norm columns.

    Raises
    ------
    ValueError
        Bad ``eps``, ``rank`` or ``max_rank``, ``x`` of order < 2, an empty
        dimension, NaN or Inf.

    Warns
    -----
    RuntimeWarning
        When ``max_rank`` does not reach ``eps``.

    Examples
    --------
    >>> import numpy as np
    >>> import tensorcomp
    >>> rng = np.random.default_rng(0)
    >>> a, b, c = rng.standard_normal((3, 5, 2))
    >>> x = np.einsum("ir,jr,kr->ijk", a, b, c)
    >>> res = tensorcomp.cp(x, eps=0.99)
    >>> res.rank <= 2, res.explained_variance >= 0.99
    (True, True)
    """
    eps = check_eps(eps)
    with backend_for(x):
        x, peak = check_tensor(x, min_order=2, method="cp")
        x, scale = to_safe_range(x, peak)
        shape = tuple(tl.shape(x))
        bound = math.prod(shape)
        if rank is not None:
            rank = check_int_rank(rank, bound)
        if max_rank is None:
            max_rank = max(1, bound // sum(shape))
        elif isinstance(max_rank, bool) or not isinstance(max_rank, numbers.Integral) or max_rank < 1:
            raise ValueError(f"max_rank must be a positive integer; got max_rank={max_rank!r}")
        total = squared_norm(x) if peak > 0 else 0.0
        if total == 0.0:
            components = 1 if rank is None else rank
            zero_weights = tl.zeros((components,), **tl.context(x))
            units = [tl.tensor(np.repeat(np.eye(n, 1), components, axis=1), **tl.context(x)) for n in shape]
            return _scaled_cp(scale, zero_weights, units, explained_variance=1.0)
        if rank is not None:
            weights, factors = _fit(x, rank, _grow(x, None, [], rank), n_iter_max, tol)
            return _scaled_cp(scale, weights, factors, explained_variance=_explained(x, weights, factors, total))

        # Doubling phase: find a passing rank (or reach max_rank).
        failing, passing = 0, None
        current = 1
        weights, factors = _fit(x, 1, _grow(x, None, [], 1), n_iter_max, tol)
        while True:
            score = _explained(x, weights, factors, total)
            if score >= eps:
                passing = (current, weights, factors, score)
                break
            failing, best = current, (current, weights, factors, score)
            if current >= max_rank:
                break
            nxt = min(2 * current, max_rank)
            weights, factors = _fit(x, nxt, _grow(x, weights, factors, nxt - current), n_iter_max, tol)
            current = nxt
        if passing is None:
            warnings.warn(
                f"cp: max_rank={max_rank} reaches an explained variance of {best[3]:.4f} < eps={eps}; "
                "returning the max_rank solution (raise max_rank to reach eps)",
                RuntimeWarning,
                stacklevel=2,
            )
            return _scaled_cp(scale, best[1], best[2], explained_variance=best[3])

        # Bisection between the last failing and the first passing rank.
        while passing[0] - failing > 1:
            mid = (passing[0] + failing) // 2
            weights, factors = _fit(x, mid, _shrink(passing[1], passing[2], mid), n_iter_max, tol)
            score = _explained(x, weights, factors, total)
            if score >= eps:
                passing = (mid, weights, factors, score)
            else:
                failing = mid
        return _scaled_cp(scale, passing[1], passing[2], explained_variance=passing[3])
