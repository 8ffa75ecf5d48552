"""Truncated SVD of a tensor viewed as a matrix (the paper's ``B x CHW`` view)."""

from __future__ import annotations

import math
from typing import Any

import tensorly as tl

from ._algebra import squared_norm, truncated_svd
from ._backend import backend_for
from ._results import SVDResult, explained
from ._validate import check_eps, check_int_rank, check_tensor, to_safe_range

__all__ = ["svd"]


def svd(x: Any, eps: float = 0.9, *, rank: int | None = None) -> SVDResult:
    """Truncated SVD keeping a fraction ``eps`` of the energy.

    A tensor of order > 2 is first reshaped to ``(x.shape[0], -1)`` (a batch
    of activations ``B x C x H x W`` becomes ``B x CHW``); a vector becomes a
    single column. Keeps the fewest ``K`` singular triplets with
    ``sum_{i<=K} s_i^2 / sum_i s_i^2 >= eps``.

    Parameters
    ----------
    x : tensor, shape (M, ...)
        Any TensorLy backend's array (numpy, torch CPU/CUDA, jax, ...); the
        backend is picked from its type. Integer and boolean inputs are cast
        to the backend's default float, 16-bit floats to float32.
    eps : float, default 0.9
        Fraction of the energy to keep, in (0, 1]. ``eps=1.0`` keeps every
        component (exact reconstruction).
    rank : int, optional
        Keep exactly this many components, in ``[1, min(M, N)]``; overrides ``eps``.

    Returns
    -------
    SVDResult
        ``weights`` = singular values, shape (K,); ``factors`` = ``[U (M, K),
        V (N, K)]`` with ``N = prod(x.shape[1:])``, on ``x``'s backend and device.

    Raises
    ------
    ValueError
        If ``eps`` is outside (0, 1], ``rank`` outside its range, ``x`` is a
        scalar, has an empty dimension, or holds NaN or Inf.
    TypeError
        If ``x`` is not a dense real array of a TensorLy backend (a list, a
        scipy sparse matrix, a ``numpy.matrix`` or masked array, a torch meta
        or sparse tensor, an object, string or complex dtype), ``eps`` is not
        a real number or ``rank`` not an integer (``rank=2.5``).

    Examples
    --------
    >>> import numpy as np
    >>> import tensorcomp
    >>> x = np.outer(np.arange(1.0, 5.0), np.ones(6)).reshape(4, 2, 3)
    >>> res = tensorcomp.svd(x, eps=0.99)
    >>> res.rank, res.to_tensor().shape
    (1, (4, 2, 3))
    >>> bool(np.allclose(res.to_tensor(), x))
    True
    """
    eps = check_eps(eps)
    with backend_for(x):
        x, peak = check_tensor(x, min_order=1, method="svd")
        x, scale = to_safe_range(x, peak)
        shape = tuple(tl.shape(x))
        matrix = tl.reshape(x, (shape[0], -1))
        if rank is not None:
            rank = check_int_rank(rank, min(shape[0], math.prod(shape[1:])))
        u, s, v, _ = truncated_svd(matrix, eps=eps, rank=rank)
        total = squared_norm(matrix) if peak > 0 else 0.0
        kept = explained(squared_norm(s), total)
        return SVDResult(s * scale if scale != 1.0 else s, [u, v], original_shape=shape, explained_variance=kept)


