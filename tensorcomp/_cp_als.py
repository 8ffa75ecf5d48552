"""Alternating least squares for CP on any TensorLy backend.

The pieces :func:`tensorcomp.cp` is built from:

* :func:`compress` projects a tensor on the leading subspaces of its mode
  unfoldings (Gram eigenvectors, as HOSVD computes them, one mode after
  another on the already projected tensor), giving a small Tucker core whose
  CP decompositions lift back to CP decompositions of the tensor
  (CANDELINC); :func:`lift` maps the factors back;
* :class:`ALS` runs alternating least squares sweeps on a tensor (a core or
  the tensor itself). The matricised-tensor-times-Khatri-Rao products
  (MTTKRPs) of a sweep come from two large matrix products: the modes are
  split into a leading and a trailing group, the tensor viewed as a
  (leading sizes) x (trailing sizes) matrix is multiplied once by the
  Khatri-Rao product of the trailing factors and every leading mode's MTTKRP
  is read from that small product; then the same for the trailing group.
  The normal equations carry a small ridge, so a singular system (collinear
  components, more components than a mode has rows) never raises. After
  each sweep a point further along the last step is tried and kept when it
  fits better, which cuts the number of sweeps.

Factors keep unit-norm columns, each component's scale in ``weights``.
Errors come from the last mode's MTTKRP and the factors' Gram matrices
(``||x - x_hat||^2 = ||x||^2 - 2 <x, x_hat> + ||x_hat||^2``), so no sweep
rebuilds the full tensor. Array operations go through the TensorLy backend
of the tensor the state was built for, its functions fetched once: per-call
dispatch dominates the small problems a compressed core poses.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
import tensorly as tl
from tensorly.backend import BackendManager

from ._algebra import leading_subspace, mode_product, rank_for_energy

__all__ = ["ALS", "compress", "initial_factors", "lift"]

# Ridge added to the normal equations, whose matrices have a unit diagonal.
_RIDGE = {"float64": 1e-12, "float32": 1e-6}
# Extrapolation: first step length (a multiple of the last sweep's step), its
# growth after an accepted step, and its cap.
_STEP_START, _STEP_GROWTH, _STEP_MAX = 1.0, 1.5, 8.0


def _dtype_name(x: Any) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


def _view_transposed(matrix: np.ndarray) -> np.ndarray:
    return matrix.T


def _add_reduce(array: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.add.reduce(array, axis=axis)


def _cholesky_solver(dtype: Any) -> Any:
    """``solve(a, b)`` for a symmetric positive definite ``a`` by LAPACK's ``posv``; raises if it is not."""
    (posv,) = scipy.linalg.get_lapack_funcs(("posv",), (np.empty(1, dtype=dtype),))

    def solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _, solution, info = posv(a, b)
        if info != 0:
            raise np.linalg.LinAlgError(f"posv info={info}")
        return solution

    return solve


def _hadamard(matrices: Sequence[Any]) -> Any:
    out = matrices[0]
    for matrix in matrices[1:]:
        out = out * matrix
    return out


class _Ops:
    """The array operations of one ALS state, bound to one backend's functions."""

    def __init__(self, x: Any, rank: int):
        backend = BackendManager.current_backend()
        self.dot, self.sum, self.sqrt, self.reshape = backend.dot, backend.sum, backend.sqrt, backend.reshape
        self.transpose, self.solve_system, self.to_numpy = backend.transpose, backend.solve, backend.to_numpy
        self.tensor = backend.tensor
        # ``a @ b.T`` with ``a`` of R rows: PyTorch's CPU matmul runs it far faster
        # than ``b @ a.T``, NumPy's BLAS the other way round.
        self.wide = backend.backend_name != "numpy"
        if backend.backend_name == "numpy":
            # The ufunc's own reduction, the .T view and LAPACK's Cholesky solver
            # called directly skip NumPy's Python-level wrappers, which cost more
            # than the arithmetic on a small core.
            self.sum, self.transpose = _add_reduce, _view_transposed
            self.solve_system = _cholesky_solver(x.dtype)
        self.context = backend.context(x)
        name = _dtype_name(x)
        self.shift = backend.eye(rank, **self.context) * _RIDGE.get(name, 1e-6)
        self.ones = backend.ones((rank,), **self.context)
        # Added to column norms before dividing: a zero column stays zero, and
        # any norm above the dtype's smallest normal number is unaffected.
        self.tiny = float(np.finfo(name if name in ("float16", "float32", "float64") else "float64").tiny)

    def host(self, value: Any) -> float:
        return float(self.to_numpy(value))

    def gram(self, matrix: Any) -> Any:
        return self.dot(self.transpose(matrix), matrix)

    def normalise(self, matrix: Any) -> tuple[Any, Any]:
        """Column norms of ``matrix`` and ``matrix`` with unit columns (a zero column stays zero)."""
        norms = self.sqrt(self.sum(matrix * matrix, axis=0))
        return norms, matrix / (norms + self.tiny)

    def khatri_rao_t(self, matrices: Sequence[Any]) -> Any:
        """Transposed column-wise Kronecker product, shape ``(R, prod M_k)``; the first matrix's row index varies slowest."""
        out = self.transpose(matrices[0])
        for matrix in matrices[1:]:
            out = self.reshape(out[:, :, None] * self.transpose(matrix)[:, None, :], (out.shape[0], -1))
        return out

    def dot_transposed(self, a: Any, b: Any) -> Any:
        """``a @ b.T``."""
        if self.wide:
            return self.dot(a, self.transpose(b))
        return self.transpose(self.dot(b, self.transpose(a)))

    def contract(self, t: Any, factors: Sequence[Any | None]) -> Any:
        """``t`` of shape ``(R, M_0, ..., M_{k-1})`` summed over each mode axis ``a`` whose ``factors[a]`` is given,
        weighted by ``factors[a][:, r]`` (the component index ``r``, the first axis, is shared)."""
        for axis in reversed(range(len(factors))):
            factor = factors[axis]
            if factor is not None:
                shape = [factor.shape[1]] + [1] * (len(t.shape) - 1)
                shape[axis + 1] = factor.shape[0]
                t = self.sum(t * self.reshape(self.transpose(factor), tuple(shape)), axis=axis + 1)
        return t

    def solve(self, rhs: Any, system: Any) -> Any:
        """``inv(system + ridge * I) @ rhs``: with ``rhs`` a transposed MTTKRP, the transposed least-squares update.

        ``system`` is a Hadamard product of unit-column Gram matrices (unit
        diagonal, positive semi-definite), so the ridge makes it positive
        definite; should a backend still fail, a host pseudo-inverse solves it.
        """
        system = system + self.shift
        try:
            return self.solve_system(system, rhs)
        except Exception:  # noqa: BLE001 - any backend's singular-system error
            g = np.asarray(self.to_numpy(system), dtype=np.float64)
            b = np.asarray(self.to_numpy(rhs), dtype=np.float64)
            return self.tensor(np.linalg.pinv(g, hermitian=True) @ b, **self.context)


class ALS:
    """ALS on one tensor: its matrix view, the current weights, unit-norm factors and their Grams.

    Must be built inside the tensor's backend context (its functions are
    fetched then and used from there on, whatever the current backend).

    Parameters
    ----------
    x : tensor, shape (M_0, ..., M_{d-1}), d >= 2
    total : float
        ``||x||^2``.
    weights, factors
        Starting point: ``weights`` of shape (R,), ``factors[n]`` of shape
        ``(M_n, R)`` with unit-norm columns.
    discarded : float, default 0
        Squared norm that ``x`` lacks of the tensor it stands for (a core:
        what its compression dropped), in the same units as ``total``; it is
        added to :attr:`error` and counts in the relative error.

    Attributes
    ----------
    error : float
        Squared residual ``||x - [weights; factors]||^2 + discarded``.
    sweeps : int
        Sweeps run so far.
    """

    def __init__(self, x: Any, total: float, weights: Any, factors: Sequence[Any], *, discarded: float = 0.0):
        self.shape = tuple(x.shape)
        order = len(self.shape)
        self.rank = int(weights.shape[0])
        self.ops = _Ops(x, self.rank)
        # Split the modes where the larger side of the matrix view is smallest:
        # the Khatri-Rao products and the partial MTTKRPs then stay small.
        self.split = min(range(1, order), key=lambda h: max(math.prod(self.shape[:h]), math.prod(self.shape[h:])))
        self.matrix = self.ops.reshape(x, (math.prod(self.shape[: self.split]), -1))
        self.total = float(total)
        self.discarded = float(discarded)
        self.weights = weights
        self.factors = list(factors)
        self.grams = [self.ops.gram(f) for f in self.factors]
        self._partial: Any = None  # (trailing factors, leading partial) kept from the last evaluation
        self.error = self._error_of(self.weights, self.factors, self.grams)
        self.sweeps = 0

    @property
    def relative_error(self) -> float:
        """``sqrt(error / (total + discarded))``."""
        whole = self.total + self.discarded
        return math.sqrt(self.error / whole) if whole > 0 else 0.0

    # ----------------------------------------------------------- products

    def _leading_partial(self, factors: Sequence[Any]) -> Any:
        """``x`` contracted with the trailing factors: shape ``(R, M_0, ..., M_{h-1})``.

        Both partials are formed as (R x big) products, in the orientation
        each backend multiplies fastest (:meth:`_Ops.dot_transposed`).
        """
        product = self.ops.dot_transposed(self.ops.khatri_rao_t(factors[self.split :]), self.matrix)
        return self.ops.reshape(product, (self.rank,) + self.shape[: self.split])

    def _trailing_partial(self, factors: Sequence[Any]) -> Any:
        """``x`` contracted with the leading factors: shape ``(R, M_h, ..., M_{d-1})``."""
        product = self.ops.dot(self.ops.khatri_rao_t(factors[: self.split]), self.matrix)
        return self.ops.reshape(product, (self.rank,) + self.shape[self.split :])

    def inner(self, factors: Sequence[Any]) -> Any:
        """``<x, a_r o b_r o ...>`` for each component ``r``, shape (R,); keeps the leading partial."""
        partial = self._leading_partial(factors)
        self._partial = (factors[self.split :], partial)
        return self.ops.contract(partial, factors[: self.split])

    def _error_of(self, weights: Any, factors: Sequence[Any], grams: Sequence[Any]) -> float:
        ops = self.ops
        outer = weights[:, None] * weights[None, :]
        residual = ops.sum(_hadamard(grams) * outer) - 2.0 * ops.sum(weights * self.inner(factors))
        return max(self.total + ops.host(residual), 0.0) + self.discarded

    # -------------------------------------------------------------- sweeps

    def _update_group(self, partial: Any, modes: range) -> tuple[Any, Any, Any]:
        """Update ``modes`` in order from their partial MTTKRP.

        Returns the last mode's transposed MTTKRP, transposed solution and system.
        """
        ops = self.ops
        for mode in modes:
            mttkrp = ops.contract(partial, [None if m == mode else self.factors[m] for m in modes])
            system = _hadamard([g for m, g in enumerate(self.grams) if m != mode])
            combined = ops.solve(mttkrp, system)
            self.weights, self.factors[mode] = ops.normalise(ops.transpose(combined))
            self.grams[mode] = ops.gram(self.factors[mode])
        return mttkrp, combined, system

    def sweep(self) -> float:
        """One ALS sweep over every mode; returns the new :attr:`error`."""
        ops, split = self.ops, self.split
        cached, self._partial = self._partial, None
        if cached is not None and all(a is b for a, b in zip(cached[0], self.factors[split:])):
            partial = cached[1]
        else:
            partial = self._leading_partial(self.factors)
        self._update_group(partial, range(split))
        partial = self._trailing_partial(self.factors)
        mttkrp, combined, system = self._update_group(partial, range(split, len(self.factors)))
        # With C the last mode's solution (weights included), V its system and M
        # its MTTKRP: ||x_hat||^2 = sum((C^T C) * V) and <x, x_hat> = sum(M * C).
        residual = ops.sum(ops.gram(ops.transpose(combined)) * system) - 2.0 * ops.sum(mttkrp * combined)
        self.error = max(self.total + ops.host(residual), 0.0) + self.discarded
        self.sweeps += 1
        return self.error

    def _extrapolate(self, previous: tuple[Any, list[Any]], step: float) -> bool:
        """Try ``current + step * (current - previous)``; keep it if it fits better."""
        ops = self.ops
        weights_before, factors_before = previous
        candidate = [now + step * (now - before) for now, before in zip(self.factors[:-1], factors_before)]
        # The weights ride on the last factor.
        last_now, last_before = self.factors[-1] * self.weights, factors_before[-1] * weights_before
        candidate.append(last_now + step * (last_now - last_before))
        grams = [ops.gram(f) for f in candidate]
        error = self._error_of(ops.ones, candidate, grams)
        if not error < self.error:
            self._partial = None
            return False
        norms = []
        for mode, factor in enumerate(candidate):
            scale, candidate[mode] = ops.normalise(factor)
            grams[mode] = ops.gram(candidate[mode])
            norms.append(scale)
        # The kept leading partial came from the unnormalised trailing factors.
        scale = ops.reshape(_hadamard(norms[self.split :]) + ops.tiny, (self.rank,) + (1,) * self.split)
        self._partial = (candidate[self.split :], self._partial[1] / scale)
        self.weights, self.factors, self.grams, self.error = _hadamard(norms), candidate, grams, error
        return True

    def run(self, n_iter_max: int, tol: float, *, extrapolate: bool = True, target: float | None = None) -> float:
        """Sweep until a sweep lowers the relative error by less than ``tol``, or ``n_iter_max`` sweeps.

        With ``target`` (a squared error), also stop as soon as :attr:`error`
        is at most ``target``, or when even at the last sweep's rate the
        sweeps left could not bring it there. Returns :attr:`error`, which
        never increases (up to rounding).
        """
        step = _STEP_START
        for done in range(n_iter_max):
            if target is not None and self.error <= target:
                break
            before, relative_before = self.error, self.relative_error
            previous = (self.weights, self.factors[:])
            self.sweep()
            if extrapolate and done > 0:
                if self._extrapolate(previous, step):
                    step = min(step * _STEP_GROWTH, _STEP_MAX)
                else:
                    step = _STEP_START
            if relative_before - self.relative_error < tol:
                break
            left = n_iter_max - done - 1
            if target is not None and self.error > target and (before - self.error) * left < self.error - target:
                break
        return self.error

    def least_squares_weights(self) -> Any:
        """Set the weights that minimise the error for the current factors (ridge-regularised)."""
        ops = self.ops
        inner = ops.reshape(self.inner(self.factors), (self.rank, 1))
        self.weights = ops.reshape(ops.solve(inner, _hadamard(self.grams)), (self.rank,))
        self.error = self._error_of(self.weights, self.factors, self.grams)
        return self.weights


def _truncation_order(shape: Sequence[int], ranks: Sequence[int] | None) -> list[int]:
    """The order of modes in which sequential truncation does least work.

    Step ``k`` costs about ``(M_n + K_n) * N_k`` (its Gram matrix and its
    projection), ``N_k`` the size left after the earlier steps. With ranks
    unknown (``eps``), the smallest modes go first: their Grams are the cheapest.
    """
    order = len(shape)
    if ranks is None or order > 6:
        return sorted(range(order), key=lambda m: shape[m])

    def work(sequence: tuple[int, ...]) -> float:
        size, total = float(math.prod(shape)), 0.0
        for mode in sequence:
            kept = min(ranks[mode], shape[mode])
            if kept < shape[mode]:
                total += (shape[mode] + kept) * size
                size *= kept / shape[mode]
        return total

    return list(min(itertools.permutations(range(order)), key=work))


def compress(
    x: Any, *, ranks: Sequence[int] | None = None, eps: float | None = None
) -> tuple[Any, list[Any | None]]:
    """Tucker core of ``x`` on leading mode subspaces, and those bases.

    The modes are truncated one after another (sequentially truncated HOSVD):
    each basis holds the leading eigenvectors of the mode Gram matrix of
    ``x`` already projected on the bases before it, so only the first Gram
    is of the full tensor. The energy the core lacks is exactly the sum of
    what the steps dropped. Each mode keeps ``ranks[n]`` vectors, or the
    fewest holding a fraction ``eps`` of the projected tensor's energy in
    that mode (the core then keeps at least ``1 - d (1 - eps)`` of ``x``'s
    energy). A mode kept whole gets ``None`` instead of an identity basis
    and is not multiplied.
    """
    shape = tuple(x.shape)
    bases: list[Any | None] = [None] * len(shape)
    core = x
    for mode in _truncation_order(shape, ranks):
        size = shape[mode]
        if ranks is not None and ranks[mode] >= size:
            continue
        basis, energies = leading_subspace(core, mode, rank=None if ranks is None else ranks[mode], eps=eps)
        if ranks is None and rank_for_energy(energies, eps) >= size:
            continue
        bases[mode] = basis
        core = mode_product(core, tl.transpose(basis), mode)
    return core, bases


def lift(factors: Sequence[Any], bases: Sequence[Any | None]) -> list[Any]:
    """Factors of the core mapped back to the tensor's modes (unit columns stay unit)."""
    return [f if b is None else tl.dot(b, f) for f, b in zip(factors, bases)]


def initial_factors(x: Any, rank: int, seed: int = 0) -> list[Any]:
    """Unit-norm starting factors: each mode's leading ``rank`` subspace, padded with seeded random columns."""
    rng = np.random.default_rng(seed)
    context = tl.context(x)
    factors = []
    for mode, size in enumerate(x.shape):
        k = min(rank, size)
        u, _ = leading_subspace(x, mode, rank=k)
        if k < rank:
            extra = rng.standard_normal((size, rank - k))
            extra /= np.linalg.norm(extra, axis=0)
            u = tl.concatenate([u, tl.tensor(extra, **context)], axis=1)
        factors.append(u)
    return factors
