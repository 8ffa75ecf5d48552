"""Result types: TensorLy's factorized tensors that also know their storage and accuracy."""

from __future__ import annotations

import math
from typing import Any

import tensorly as tl
from tensorly.cp_tensor import CPTensor
from tensorly.tt_tensor import TTTensor
from tensorly.tucker_tensor import TuckerTensor

from ._backend import backend_for

__all__ = ["SVDResult", "TuckerResult", "CPResult", "TTResult"]


def _nbytes(array: Any) -> int:
    return int(array.nbytes)


class _Summary:
    """Storage and accuracy bookkeeping shared by every result type.

    ``explained_variance`` is the achieved ``1 - ||x - x_hat||^2 / ||x||^2``
    (1.0 for an all-zero input); ``nbytes`` counts the bytes of every stored
    array. ``to_tensor`` runs on the backend of the stored arrays, whatever the
    caller's global TensorLy backend is.
    """

    explained_variance: float

    def _stored_arrays(self) -> list[Any]:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this result stores."""
        return sum(_nbytes(a) for a in self._stored_arrays())

    def to_tensor(self) -> Any:
        """Reconstruct the full tensor, on the stored arrays' backend and device."""
        with backend_for(self._stored_arrays()[0]):
            return self._reconstruct()

    def _summary(self) -> str:
        return f"rank={self.rank}, explained_variance={self.explained_variance:.4f}, nbytes={self.nbytes}"


class SVDResult(_Summary, CPTensor):
    """Truncated SVD of a tensor viewed as a matrix ``(shape[0], prod(shape[1:]))``.

    A :class:`tensorly.cp_tensor.CPTensor` of order 2: ``weights`` are the
    singular values ``s`` (shape ``(K,)``), ``factors`` are ``[U, V]`` with
    ``U`` of shape ``(shape[0], K)`` and ``V`` of shape ``(prod(shape[1:]), K)``,
    so ``weights, (U, V) = result`` unpacks it. :meth:`to_tensor` restores the
    original shape.

    Attributes
    ----------
    original_shape, shape : tuple of int
        Shape of the decomposed tensor (what :meth:`to_tensor` returns).
    matrix_shape : tuple of int
        ``(shape[0], prod(shape[1:]))``, the matrix the SVD factors.
    explained_variance : float
        Achieved fraction of the energy kept.
    """

    def __init__(self, weights: Any, factors: list[Any], *, original_shape: tuple[int, ...], explained_variance: float):
        CPTensor.__init__(self, (weights, factors))
        self.original_shape = tuple(original_shape)
        self.matrix_shape = tuple(self.shape)
        # The tensor it stands for, as repr and to_tensor() say; the matrix view is matrix_shape.
        self.shape = self.original_shape
        self.explained_variance = float(explained_variance)

    def _stored_arrays(self) -> list[Any]:
        return [self.weights, *self.factors]

    def _reconstruct(self) -> Any:
        u, v = self.factors
        return tl.reshape(tl.dot(u * self.weights, tl.transpose(v)), self.original_shape)

    def __repr__(self) -> str:
        return f"SVDResult(shape={self.original_shape}, {self._summary()})"


class TuckerResult(_Summary, TuckerTensor):
    """Tucker decomposition ``core ×_1 U_1 ... ×_d U_d`` (from :func:`hosvd`, :func:`tucker`, ...).

    Unpacks as ``core, factors = result``; ``core`` has shape ``rank`` and
    ``factors[n]`` shape ``(shape[n], rank[n])`` with orthonormal columns.
    """

    def __init__(self, core: Any, factors: list[Any], *, explained_variance: float):
        TuckerTensor.__init__(self, (core, factors))
        self.explained_variance = float(explained_variance)

    def _stored_arrays(self) -> list[Any]:
        return [self.core, *self.factors]

    def _reconstruct(self) -> Any:
        from ._algebra import multi_mode_product

        return multi_mode_product(self.core, self.factors)

    def __repr__(self) -> str:
        return f"TuckerResult(shape={self.shape}, {self._summary()})"


class CPResult(_Summary, CPTensor):
    """CP decomposition ``sum_r w_r a_r ∘ b_r ∘ ...``; unpacks as ``weights, factors = result``."""

    def __init__(self, weights: Any, factors: list[Any], *, explained_variance: float):
        CPTensor.__init__(self, (weights, factors))
        self.explained_variance = float(explained_variance)

    def _stored_arrays(self) -> list[Any]:
        return [self.weights, *self.factors]

    def _reconstruct(self) -> Any:
        return tl.cp_to_tensor((self.weights, self.factors))

    def __repr__(self) -> str:
        return f"CPResult(shape={self.shape}, {self._summary()})"


class TTResult(_Summary, TTTensor):
    """Tensor train: ``factors[k]`` has shape ``(rank[k], shape[k], rank[k+1])``, ``rank[0] = rank[-1] = 1``."""

    def __init__(self, factors: list[Any], *, explained_variance: float):
        TTTensor.__init__(self, factors)
        self.explained_variance = float(explained_variance)

    def _stored_arrays(self) -> list[Any]:
        return list(self.factors)

    def _reconstruct(self) -> Any:
        return tl.tt_to_tensor(self.factors)

    def __repr__(self) -> str:
        return f"TTResult(shape={self.shape}, {self._summary()})"


def explained(kept_squared_norm: float, total_squared_norm: float) -> float:
    """``kept / total`` for orthogonal projections; 1.0 for an all-zero input."""
    if total_squared_norm <= 0.0 or not math.isfinite(total_squared_norm):
        return 1.0
    return min(1.0, max(0.0, kept_squared_norm / total_squared_norm))
