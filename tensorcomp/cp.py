"""CP (CANDECOMP/PARAFAC) decomposition with the rank chosen from a target explained variance."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import tensorly as tl

from ._algebra import squared_norm
from ._backend import backend_for
from ._cp_als import ALS, compress, initial_factors, lift
from ._results import CPResult, explained
from ._validate import check_eps, check_int_rank, check_integer, check_real, check_tensor, to_safe_range

__all__ = ["cp"]

# A fixed-rank fit compresses each mode to rank + max(_OVERSAMPLE, rank // 2) vectors.
_OVERSAMPLE = 4
# The rank search compresses each mode to the fewest vectors that drop at most
# this share of the allowed error 1 - eps (spread over the modes).
_COMPRESSION_SHARE = 0.25
# Sweeps on the full tensor after lifting a core's solution: repeated while one
# lowers the relative error by at least _REFINE_GAIN (or tol, if larger), at most _REFINE_SWEEPS.
_REFINE_GAIN, _REFINE_SWEEPS = 1e-4, 10


def _explained(x: Any, weights: Any, factors: list[Any], total: float) -> float:
    residual = x - tl.cp_to_tensor((weights, factors))
    return explained(total - squared_norm(residual), total)


def _scaled_cp(scale: float, weights: Any, factors: list[Any], *, explained_variance: float) -> CPResult:
    """The result for the input before ``to_safe_range`` divided it by ``scale``."""
    return CPResult(weights * scale if scale != 1.0 else weights, factors, explained_variance=explained_variance)


class _Core:
    """``x`` compressed once: its Tucker core on the host (float64, unit norm) and the bases that lift factors back.

    The core's ALS is a small problem whose cost is per-call overhead, least
    with NumPy; float64 makes its error bookkeeping exact enough to decide
    whether a rank reaches ``eps``. Must be built in ``x``'s backend context;
    the ALS states it makes must be used inside ``backend_for(self.tensor)``.
    """

    def __init__(self, x: Any, total: float, *, ranks: list[int] | None = None, eps: float | None = None):
        core, self.bases = compress(x, ranks=ranks, eps=eps)
        host = np.array(tl.to_numpy(core), dtype=np.float64)
        kept = float(np.sum(host * host))
        self.norm = math.sqrt(kept) if kept > 0 else 1.0
        self.tensor = host / self.norm
        self.compressed = any(b is not None for b in self.bases)
        # What the compression dropped, in units of ||core||^2.
        self.discarded = max(total - kept, 0.0) / self.norm**2 if self.compressed else 0.0
        self.context = tl.context(x)

    def allowed_error(self, eps: float) -> float:
        """Largest squared error (core units, dropped energy included) whose explained variance is >= eps."""
        return (1.0 - eps) * (1.0 + self.discarded)

    def _state(self, weights: np.ndarray, factors: list[np.ndarray]) -> ALS:
        state = ALS(self.tensor, 1.0, weights, factors, discarded=self.discarded)
        state.least_squares_weights()
        return state

    def start(self, rank: int) -> ALS:
        """A rank-``rank`` state started from the core's leading mode subspaces."""
        return self._state(np.ones(rank), initial_factors(self.tensor, rank))

    def grown(self, state: ALS, extra: int) -> ALS:
        """``state``'s components plus ``extra`` new ones from the residual's leading mode subspaces."""
        residual = self.tensor - tl.cp_to_tensor((state.weights, state.factors))
        new = initial_factors(residual, extra, seed=state.rank)
        factors = [np.concatenate([f, n], axis=1) for f, n in zip(state.factors, new)]
        return self._state(np.concatenate([state.weights, np.zeros(extra)]), factors)

    def shrunk(self, state: ALS, rank: int) -> ALS:
        """The ``rank`` heaviest components of ``state``."""
        keep = np.sort(np.argsort(-np.abs(state.weights), kind="stable")[:rank])
        return self._state(state.weights[keep], [f[:, keep] for f in state.factors])

    def lifted(self, state: ALS) -> tuple[Any, list[Any]]:
        """``state``'s solution as weights and factors of ``x`` (its backend, dtype and device)."""
        weights = tl.tensor(state.weights * self.norm, **self.context)
        factors = [tl.tensor(f, **self.context) for f in state.factors]
        return weights, lift(factors, self.bases)


def _refined(x: Any, total: float, core: _Core, state: ALS, n_iter_max: int, tol: float) -> tuple[Any, list[Any]]:
    """The core's solution lifted to ``x``, then full-tensor ALS sweeps while they still gain.

    A core's solution only uses the compressed subspaces; the first full sweep
    lets the factors leave them, which usually lowers the error by far more
    than the sweeps after it. No sweep runs when nothing was dropped.
    """
    weights, factors = core.lifted(state)
    if not core.compressed or core.discarded <= 0.0 or n_iter_max == 0:
        return weights, factors
    full = ALS(x, total, weights, factors)
    full.run(min(n_iter_max, _REFINE_SWEEPS), max(tol, _REFINE_GAIN), extrapolate=False)
    return full.weights, full.factors


def _fixed_rank(x: Any, total: float, rank: int, n_iter_max: int, tol: float) -> tuple[Any, list[Any]]:
    """CP of ``x`` at ``rank``: ALS on a core of ranks ``rank + oversampling``, lifted and refined."""
    width = rank + max(_OVERSAMPLE, rank // 2)
    core = _Core(x, total, ranks=[min(n, width) for n in tl.shape(x)])
    with backend_for(core.tensor):
        state = core.start(rank)
        state.run(n_iter_max, tol)
    return _refined(x, total, core, state, n_iter_max, tol)


def _search(x: Any, total: float, eps: float, max_rank: int, n_iter_max: int, tol: float) -> tuple[Any, list[Any]]:
    """CP of ``x`` at the smallest rank the search finds reaching ``eps`` (or at ``max_rank``).

    One compression; every rank is fitted on the core, warm-started. A probe
    stops as soon as it reaches ``eps`` or can no longer reach it at its
    current rate. The bisection stops within ``max(1, rank // 64)`` of the
    smallest passing rank (exact below rank 128; at most 1.6% more storage).
    """
    keep = 1.0 - _COMPRESSION_SHARE * (1.0 - eps) / tl.ndim(x)
    core = _Core(x, total, eps=keep)
    # A fit passes with a margin of a few units in x's last place, so that
    # recomputing its explained variance in x's precision cannot put it below eps.
    margin = 8.0 * float(np.finfo(str(x.dtype).rsplit(".", 1)[-1]).eps) * (1.0 + core.discarded)
    target = core.allowed_error(eps) - margin
    with backend_for(core.tensor):
        # Doubling: ranks 1, 2, 4, ... up to max_rank, each from the previous fit plus new components.
        state = core.start(1)
        failing, passing = 0, None
        while True:
            state.run(n_iter_max, tol, target=target)
            if state.error <= target:
                passing = state
                break
            failing, best = state.rank, state
            if state.rank >= max_rank:
                break
            state = core.grown(state, min(2 * state.rank, max_rank) - state.rank)
        if passing is None:
            # The max_rank fit is the result: let it converge.
            best.run(n_iter_max - best.sweeps, tol)
            final = best
        else:
            # Bisection between the last failing and the first passing rank.
            while passing.rank - failing > max(1, passing.rank // 64):
                state = core.shrunk(passing, (passing.rank + failing) // 2)
                state.run(n_iter_max, tol, target=target)
                if state.error <= target:
                    passing = state
                else:
                    failing = state.rank
            # It just reached eps: a few more sweeps while they still gain much.
            passing.run(n_iter_max - passing.sweeps, max(tol, _REFINE_GAIN))
            final = passing
    return _refined(x, total, core, final, n_iter_max, tol)


def _through_numpy(
    x: Any, eps: float, rank: int | None, max_rank: int | None, n_iter_max: int, tol: float
) -> tuple[CPResult, int]:
    """:func:`cp` of a JAX array computed with NumPy, the result converted back.

    JAX compiles every operation anew for each combination of shapes and
    static arguments it meets; the many small, differently shaped products
    of ALS and of a rank search made a 6 x 5 x 4 decomposition spend most of
    a minute compiling. Must be called in ``x``'s backend context.
    """
    context = tl.context(x)
    result, max_rank = _cp(np.asarray(x), eps, rank, max_rank, n_iter_max, tol)
    weights = tl.tensor(result.weights, **context)
    factors = [tl.tensor(f, **context) for f in result.factors]
    return CPResult(weights, factors, explained_variance=result.explained_variance), max_rank


def _cp(
    x: Any, eps: float, rank: int | None, max_rank: int | None, n_iter_max: int, tol: float
) -> tuple[CPResult, int]:
    """:func:`cp` on validated options; returns the result and the ``max_rank`` the search used."""
    with backend_for(x) as backend:
        x, peak = check_tensor(x, min_order=2, method="cp")
        shape = tuple(tl.shape(x))
        bound = math.prod(shape)
        if rank is not None:
            rank = check_int_rank(rank, bound)
        if backend == "jax":
            return _through_numpy(x, eps, rank, max_rank, n_iter_max, tol)
        x, scale = to_safe_range(x, peak)
        max_rank = max(1, bound // sum(shape)) if max_rank is None else min(max_rank, bound)
        total = squared_norm(x) if peak > 0 else 0.0
        if total == 0.0:
            components = 1 if rank is None else rank
            zero_weights = tl.zeros((components,), **tl.context(x))
            units = [tl.tensor(np.repeat(np.eye(n, 1), components, axis=1), **tl.context(x)) for n in shape]
            return _scaled_cp(scale, zero_weights, units, explained_variance=1.0), max_rank
        if rank is not None:
            weights, factors = _fixed_rank(x, total, rank, n_iter_max, tol)
        else:
            weights, factors = _search(x, total, eps, max_rank, n_iter_max, tol)
        explained_variance = _explained(x, weights, factors, total)
        return _scaled_cp(scale, weights, factors, explained_variance=explained_variance), max_rank


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

    ``x`` is approximated by ``sum_r w_r a_r^(1) o ... o a_r^(d)``, R
    components with unit-norm factor columns.

    Algorithm. ``x`` is first compressed once to a Tucker core on the
    leading subspaces of its mode unfoldings (the eigenvectors of the mode
    Gram matrices, as :func:`hosvd` computes them, one mode after another on
    the tensor already projected on the earlier modes' subspaces, so only
    the first Gram is of the full tensor); a CP decomposition of the core,
    lifted back through those bases, is one of ``x`` (CANDELINC).
    ALS runs on the core, on the host in float64 whatever the backend
    (a small problem); each sweep is followed by a trial step further along
    the last one, kept when it fits better. The lifted factors are then
    refined by full ALS sweeps on ``x`` (on its backend and device) while a
    sweep still lowers the relative error by at least ``max(tol, 1e-4)``,
    at most 10, none when the compression dropped nothing. Every normal
    equation carries a small ridge (``1e-6`` of its unit diagonal in float32,
    ``1e-12`` in float64), so collinear components or more components than
    a mode has rows never make it singular.

    With ``rank``, the core keeps ``rank + max(4, rank // 2)`` vectors per
    mode (or the whole mode). Without it the rank is searched on one core
    whose modes keep enough vectors to drop, together, at most a quarter of
    the allowed error ``1 - eps``: ranks 1, 2, 4, ... are fitted until one reaches
    ``eps``, each warm-started from the previous fit plus new components
    from the residual's leading mode subspaces; then the gap between the
    last failing and the first passing rank is bisected, each probe started
    from the heaviest components of the passing fit, until the gap is at
    most ``max(1, rank // 64)`` (exact below rank 128). A probe stops as
    soon as it reaches ``eps`` (with a margin of a few units in the last
    place of ``x``'s dtype), or when at its current rate its remaining
    sweeps could not; the chosen fit is then lifted and refined. A
    ``max_rank`` fit that does not reach ``eps`` runs to convergence. ALS is
    a local method, so "smallest" is with respect to this search.
    Explained variances during the search are those of the lifted fit, in
    float64 (the dropped energy counts as error); the returned
    ``explained_variance`` is computed from the residual of the result.

    JAX arrays are decomposed with NumPy and the result converted back to
    JAX arrays on the default device: JAX would compile every operation for
    each new shape, which made ALS and the rank search minutes slow.

    Parameters
    ----------
    x : tensor, shape (M_1, ..., M_d), d >= 2
        Any TensorLy backend's array; see :func:`svd` for dtype handling.
    eps : float, default 0.9
        Target fraction of the energy, in (0, 1].
    rank : int, optional
        Fit exactly this rank, in ``[1, prod(M)]`` (no search); overrides ``eps``.
    max_rank : int, optional
        Largest rank the search tries, an integer ``>= 1`` (capped at
        ``prod(M)``). Default: the largest rank that stores no more than the
        dense tensor, ``prod(M) // sum(M)`` (at least 1). If it cannot reach
        ``eps``, the ``max_rank`` solution is returned with a
        :class:`RuntimeWarning`.
    n_iter_max : int, default 100
        Most ALS sweeps per fitted rank on the core, an integer ``>= 0``
        (the full-tensor refinement adds at most ``min(n_iter_max, 10)``).
        ``0`` returns the starting point: the leading mode subspaces with
        least-squares weights.
    tol : float, default 1e-7
        A fit stops when a sweep lowers the relative error
        ``||x - x_hat|| / ||x||`` by less than ``tol``, a finite real ``>= 0``.

    Returns
    -------
    CPResult
        ``weights`` of shape (R,), ``factors[n]`` of shape ``(M_n, R)`` with
        unit-norm columns, on ``x``'s backend, dtype and device; stores
        ``R (1 + sum(M))`` numbers.

    Raises
    ------
    TypeError
        ``rank``, ``max_rank`` or ``n_iter_max`` not an integer (``2.5``,
        ``"3"``, ``True``), ``tol`` or ``eps`` not a real number; ``x`` not an
        array of a TensorLy backend, or complex.
    ValueError
        ``eps`` outside (0, 1]; ``rank``, ``max_rank``, ``n_iter_max`` or
        ``tol`` out of range (``tol`` NaN or infinite); ``x`` of order < 2,
        with an empty dimension, NaN or Inf. Linear-algebra errors are never
        raised.

    Warns
    -----
    RuntimeWarning
        When the search (no ``rank``) returns an explained variance below
        ``eps``: ``max_rank`` does not reach it (the ``max_rank`` fit is
        returned), or, by rounding, the exact residual of a fit the search
        accepted falls just short.

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
    >>> weights, factors = tensorcomp.cp(x, rank=2)
    >>> weights.shape, [f.shape for f in factors]
    ((2,), [(5, 2), (5, 2), (5, 2)])
    """
    eps = check_eps(eps)
    n_iter_max = check_integer(n_iter_max, "n_iter_max", minimum=0)
    tol = check_real(tol, "tol", minimum=0.0)
    if max_rank is not None:
        max_rank = check_integer(max_rank, "max_rank", minimum=1)
    result, max_rank = _cp(x, eps, rank, max_rank, n_iter_max, tol)
    if rank is None and result.explained_variance < eps:
        if result.rank >= max_rank:
            message = f"cp: max_rank={max_rank} reaches an explained variance of {result.explained_variance:.4f} "
            message += f"< eps={eps}; returning the max_rank solution (raise max_rank to reach eps)"
        else:  # the search's estimate passed, the exact residual (rounding) did not
            message = f"cp: the rank-{result.rank} fit reaches an explained variance of "
            message += f"{result.explained_variance:.6f}, just below eps={eps}"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return result
