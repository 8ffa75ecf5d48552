"""Multilinear algebra shared by every decomposition: unfolding, mode products,
rank selection from a spectrum, and truncated eigen/singular subspaces computed
from Gram matrices.

Why Gram matrices: the truncations here only need the leading singular
subspace of an unfolding ``X`` of shape ``(M, R)`` with ``M << R`` (activation
tensors are short and wide in every mode). ``X @ X.T`` costs ``M * M * R``
multiply-adds and runs at matrix-multiply speed on any backend; its symmetric
eigendecomposition is an ``M x M`` problem solved once by LAPACK on the host.
A full SVD of ``X`` costs several times more and is far less parallel.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl
from threadpoolctl import ThreadpoolController

from ._validate import check_real

__all__ = [
    "unfold",
    "mode_product",
    "multi_mode_product",
    "mode_gram",
    "rank_for_energy",
    "leading_subspace",
    "truncated_svd",
    "squared_norm",
]


def squared_norm(x: Any) -> float:
    """Squared Frobenius norm of ``x`` as a Python float."""
    return float(tl.to_numpy(tl.sum(x * x)))


def unfold(x: Any, mode: int) -> Any:
    """Mode-``mode`` unfolding: an ``(x.shape[mode], prod(other dims))`` matrix.

    Columns follow TensorLy's convention (remaining modes in order, C-order).
    """
    shape = tl.shape(x)
    return tl.reshape(tl.moveaxis(x, mode, 0), (shape[mode], -1))


def mode_product(x: Any, matrix: Any, mode: int) -> Any:
    """Mode-``mode`` product ``x ×_mode matrix`` with ``matrix`` of shape ``(J, x.shape[mode])``."""
    shape = tuple(tl.shape(x))
    rows = shape[mode]
    before, after = math.prod(shape[:mode]), math.prod(shape[mode + 1 :])
    # x viewed as (before, rows, after) needs no transposed copy of x, which
    # costs as much as the product itself on the large first products.
    if after == 1:
        product = tl.dot(tl.reshape(x, (before, rows)), tl.transpose(matrix))
    elif before == 1:
        product = tl.dot(matrix, tl.reshape(x, (rows, after)))
    else:
        product = tl.matmul(matrix, tl.reshape(x, (before, rows, after)))
    return tl.reshape(product, shape[:mode] + (tl.shape(matrix)[0],) + shape[mode + 1 :])


def mode_gram(x: Any, mode: int) -> Any:
    """Gram matrix ``X_(n) @ X_(n).T`` of the mode-``mode`` unfolding, shape ``(M_n, M_n)``."""
    shape = tuple(tl.shape(x))
    rows = shape[mode]
    before, after = math.prod(shape[:mode]), math.prod(shape[mode + 1 :])
    if after == 1:
        matrix = tl.reshape(x, (before, rows))
        return tl.dot(tl.transpose(matrix), matrix)
    if before == 1:
        matrix = tl.reshape(x, (rows, after))
        return tl.dot(matrix, tl.transpose(matrix))
    if after >= rows:
        # Sum of per-slice Grams: no transposed copy of x, and the (before, rows,
        # rows) intermediate is no larger than x itself.
        slices = tl.reshape(x, (before, rows, after))
        return tl.sum(tl.matmul(slices, tl.moveaxis(slices, 1, 2)), axis=0)
    others = [m for m in range(len(shape)) if m != mode]
    return tl.tensordot(x, x, axes=(others, others))


def multi_mode_product(x: Any, matrices: Sequence[Any], modes: Sequence[int] | None = None) -> Any:
    """Apply :func:`mode_product` for each ``(matrix, mode)``.

    Modes are applied in the order that shrinks the tensor fastest (the one
    with the smallest ratio ``J / x.shape[mode]`` first), which minimises the
    work of the later products; the result does not depend on the order.
    """
    if modes is None:
        modes = range(len(matrices))
    pairs = list(zip(matrices, modes))
    shape = tl.shape(x)
    pairs.sort(key=lambda p: tl.shape(p[0])[0] / shape[p[1]])
    for matrix, mode in pairs:
        x = mode_product(x, matrix, mode)
    return x


def rank_for_energy(energies: np.ndarray, eps: float) -> int:
    """Smallest ``K`` whose leading ``K`` energies hold at least a fraction ``eps`` of the total.

    Parameters
    ----------
    energies : numpy.ndarray, shape (N,), N >= 1
        Squared singular values (or Gram eigenvalues) in decreasing order; a
        1-D array of real numbers (a list of them is taken too).
    eps : float
        Fraction of the total energy to keep, a finite real number. ``eps >= 1``
        keeps all ``N`` components (exact reconstruction, whatever the
        rounding of the cumulative sum); ``eps <= 0`` and an all-zero
        spectrum keep one.

    Returns
    -------
    int
        ``K`` in ``[1, N]`` with ``sum(energies[:K]) >= eps * sum(energies)``.

    Raises
    ------
    ValueError
        If ``energies`` is empty (there is no rank to choose) or not 1-D, or
        ``eps`` is NaN or infinite.
    TypeError
        If ``energies`` does not hold real numbers, or ``eps`` is not a real number.

    Examples
    --------
    >>> import numpy as np
    >>> rank_for_energy(np.array([6.0, 3.0, 1.0]), 0.9)
    2
    >>> rank_for_energy(np.array([6.0, 3.0, 1.0]), 0.91)
    3
    """
    energies = np.asarray(energies)
    if energies.dtype.kind not in "biuf":
        raise TypeError(f"energies must be real numbers (squared singular values); got an array of dtype {energies.dtype}")
    if energies.ndim != 1:
        raise ValueError(f"energies must be a 1-D spectrum; got an array of shape {energies.shape}")
    n = len(energies)
    if n == 0:
        raise ValueError("energies must not be empty: an empty spectrum has no rank to choose")
    eps = check_real(eps, "eps")
    if eps >= 1.0:
        return n
    total = float(np.sum(energies))
    if eps <= 0.0 or total <= 0.0:
        return 1
    ratio = np.cumsum(energies) / total
    return int(min(np.searchsorted(ratio, eps, side="left") + 1, n))


# Modules whose import loads a BLAS or OpenMP runtime that threadpoolctl can limit.
_THREADED_RUNTIMES = ("numpy", "scipy", "torch", "jax", "sklearn")
_CONTROLLERS: dict[tuple[bool, ...], ThreadpoolController] = {}


def _one_blas_thread() -> Any:
    """Context limiting every loaded BLAS/OpenMP pool to one thread.

    Building a controller inspects the loaded libraries (about a
    millisecond), so one is kept per set of imported runtimes.
    """
    key = tuple(name in sys.modules for name in _THREADED_RUNTIMES)
    controller = _CONTROLLERS.get(key)
    if controller is None:
        controller = _CONTROLLERS[key] = ThreadpoolController()
    return controller.limit(limits=1)


def _sorted_eigh(gram: Any) -> tuple[np.ndarray, Any]:
    """Eigenpairs of a symmetric matrix, largest first.

    Solved by the input's own backend (LAPACK through NumPy, PyTorch's
    CPU/CUDA solvers, JAX's), in the Gram matrix's precision: the rounding
    of a float32 product is already of the order of float32's eigensolver
    error. Staying on the backend keeps the work on the device and, on the
    CPU, in the thread pool the caller's framework already uses. The solve
    runs on one CPU thread: for matrices of a few hundred rows threads gain
    little, and on a machine whose cores are busy a multi-threaded ``syevd``
    was measured 100-800x slower (2.7 s instead of 3 ms for 256 x 256).

    Returns
    -------
    energies : numpy.ndarray
        Eigenvalues, clipped at 0, largest first, as float64.
    vectors : tensor
        Matching orthonormal eigenvectors as columns, on the backend; each
        column's sign is fixed so that the sum of the cubes of its entries
        (dominated by its largest entries) is positive, for reproducibility.
    """
    with _one_blas_thread():
        values, vectors = tl.eigh((gram + tl.transpose(gram)) * 0.5)
    values, vectors = tl.flip(values, axis=0), tl.flip(vectors, axis=1)
    signs = tl.sign(tl.sum(vectors * vectors * vectors, axis=0))
    signs = tl.where(signs == 0, tl.ones(tl.shape(signs), **tl.context(signs)), signs)
    energies = np.clip(np.asarray(tl.to_numpy(values), dtype=np.float64), 0.0, None)
    return energies, vectors * signs


def _orthonormal_columns(w: Any) -> Any:
    """Orthonormal basis of ``w``'s columns, each column keeping its direction."""
    q, r = tl.qr(w)
    signs = tl.sign(tl.diag(r))
    signs = tl.where(signs == 0, tl.ones(tl.shape(signs), **tl.context(signs)), signs)
    return q * signs


def _choose_rank(energies: np.ndarray, eps: float | None, rank: int | None) -> int:
    return rank if rank is not None else rank_for_energy(energies, eps)


def leading_subspace(x: Any, mode: int, *, eps: float | None = None, rank: int | None = None) -> tuple[Any, np.ndarray]:
    """Leading left singular vectors of the mode-``mode`` unfolding of ``x``.

    Parameters
    ----------
    x : tensor, shape (M_0, ..., M_{d-1})
    mode : int
    eps : float, optional
        Keep the fewest vectors whose energy reaches this fraction.
    rank : int, optional
        Keep exactly this many vectors (overrides ``eps``).

    Returns
    -------
    factor : tensor, shape (M_mode, K)
        Orthonormal columns, same backend, dtype and device as ``x``.
    energies : numpy.ndarray
        The unfolding's squared singular values, largest first (float64).
    """
    shape = tl.shape(x)
    rows = shape[mode]
    cols = math.prod(shape) // rows
    if rows <= cols or (rank is not None and rank > cols):
        energies, vectors = _sorted_eigh(mode_gram(x, mode))
        k = _choose_rank(energies, eps, rank)
        factor = tl.copy(vectors[:, :k])  # a copy: a view would keep the whole basis alive
        return factor, energies
    matrix = unfold(x, mode)
    energies, vectors = _sorted_eigh(tl.dot(tl.transpose(matrix), matrix))
    k = _choose_rank(energies, eps, rank)
    right = vectors[:, :k]
    return _orthonormal_columns(tl.dot(matrix, right)), energies


def truncated_svd(matrix: Any, *, eps: float | None = None, rank: int | None = None) -> tuple[Any, Any, Any, np.ndarray]:
    """Truncated SVD ``matrix ≈ U @ diag(s) @ V.T`` from the smaller Gram matrix.

    Parameters
    ----------
    matrix : tensor, shape (M, N)
    eps, rank : see :func:`leading_subspace`.

    Returns
    -------
    U : tensor, shape (M, K)
    s : tensor, shape (K,)
        Singular values, largest first.
    V : tensor, shape (N, K)
    energies : numpy.ndarray, shape (min(M, N),)
        All squared singular values, largest first.
    """
    m, n = tl.shape(matrix)
    transposed = m > n
    if transposed:
        matrix = tl.transpose(matrix)
    energies, vectors = _sorted_eigh(tl.dot(matrix, tl.transpose(matrix)))
    k = _choose_rank(energies, eps, rank)
    left = tl.copy(vectors[:, :k])
    scaled_right = tl.dot(tl.transpose(matrix), left)  # (N, K): V @ diag(s)
    s = tl.sqrt(tl.sum(scaled_right * scaled_right, axis=0))
    s_host = tl.to_numpy(s)
    # Below sqrt(machine eps) * s_max the Gram matrix resolves no direction, so
    # dividing by s would give non-orthonormal noise (or 0/0 for a zero matrix):
    # such right vectors are taken as any orthonormal completion instead.
    resolvable = float(s_host.max()) * math.sqrt(float(np.finfo(s_host.dtype).eps))
    if float(s_host.min()) > resolvable:
        right = scaled_right / s
    else:
        right = _orthonormal_columns(scaled_right)
    if transposed:
        left, right = right, left
    return left, s, right, energies
