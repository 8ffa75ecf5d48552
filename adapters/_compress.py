"""Turning a torch activation into a stored decomposition and back, for every adapter.

This is the one place where the adapters call the core: the saved-tensor hooks
and the compressed layers both hold a :class:`Compressor` and store the
:class:`Packed` objects it returns.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Hashable
from typing import Any

import torch

from tensorcomp._validate import check_eps
from tensorcomp.registry import MethodInfo, method_info


class Packed:
    """An activation as stored for backward: a decomposition, or the tensor itself.

    Attributes
    ----------
    result : object or None
        The method's result; ``None`` when the tensor is kept as is.
    tensor : torch.Tensor or None
        The kept tensor when ``result`` is ``None``.
    shape, dtype : the original activation's shape and dtype.
    nbytes : int
        Bytes stored.
    original_nbytes : int
        Bytes of the original activation.
    rank : rank of the decomposition, or ``None``.
    """

    __slots__ = ("result", "tensor", "shape", "dtype", "nbytes", "original_nbytes", "rank", "version", "layout", "hold", "recorded", "__weakref__")

    def __init__(self, source: torch.Tensor, result: Any = None) -> None:
        self.shape = source.shape
        self.dtype = source.dtype
        self.original_nbytes = source.numel() * source.element_size()
        self.result = result
        self.tensor = source if result is None else None
        self.version = source._version
        self.layout = (tuple(source.shape), source.stride(), source.storage_offset())
        self.nbytes = self.original_nbytes if result is None else int(result.nbytes)
        self.rank = None if result is None else getattr(result, "rank", None)
        self.hold: Any = None
        self.recorded = False

    def adopt(self, raw: torch.Tensor) -> None:
        """Read the activation from ``raw``, a tensor of the same storage at the same version, and drop the result.

        Used when another op keeps the same storage raw anyway (Rule 3 of
        NOTE [ Held memory ]): the decomposition is then redundant.
        """
        shape, stride, offset = self.layout
        self.tensor = raw.as_strided(shape, stride, offset)
        self.version = raw._version
        self.result = None
        self.nbytes = self.original_nbytes
        self.rank = None

    def unpack(self) -> torch.Tensor:
        """The activation (exact, or rebuilt from the decomposition), in its original shape and dtype.

        Raises
        ------
        RuntimeError
            If the kept tensor was modified in place since it was stored, as
            autograd raises for its own saved tensors.
        """
        if self.result is None:
            if self.tensor._version != self.version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by an inplace operation: "
                    f"a saved activation of shape {tuple(self.shape)} is at version {self.tensor._version}; "
                    f"expected version {self.version} instead"
                )
            return self.tensor
        return self.result.to_tensor().reshape(self.shape).to(self.dtype)


class _WarmStart:
    """What a warm start needs of a Tucker result: the factors and their ranks, not the core."""

    __slots__ = ("factors", "rank")

    def __init__(self, factors: list[Any]) -> None:
        self.factors = list(factors)
        self.rank = tuple(int(f.shape[1]) for f in self.factors)

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.factors)


def _warm_state(result: Any) -> Any:
    # Keeping the whole result would hold its core (often the largest part) between steps for nothing.
    factors = getattr(result, "factors", None)
    core = getattr(result, "core", None)
    if core is not None and factors is not None and all(isinstance(f, torch.Tensor) and f.dim() == 2 for f in factors):
        return _WarmStart(factors)
    return result


def _nbytes(state: Any) -> int:
    return int(getattr(state, "nbytes", 0) or 0)


def _is_per_mode(rank: Any, order: int) -> bool:
    return isinstance(rank, (tuple, list)) and len(rank) == order and all(
        isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in rank
    )


class Compressor:
    """Compress activations with a registered method, keeping per-layer warm-start state.

    Parameters
    ----------
    method : str
        A name from :func:`tensorcomp.available_methods`.
    eps : float
        Fraction of energy to keep, in (0, 1].
    refresh_every : int, optional
        For warm-startable methods (registered with ``warm_start=True``;
        they accept ``init=``): choose the ranks afresh from ``eps`` every
        this many calls per layer; ``None`` keeps the first ranks for good.
    **method_kwargs
        Passed to the method on every call.

    Attributes
    ----------
    info : MethodInfo
        The method's catalogue record, read once here: ``warm_start``
        decides whether ``init=`` is passed, ``stores_input`` whether the
        activation is kept as is without calling the method, and the
        adapters read ``linear_view`` for linear layers.

    Raises
    ------
    ValueError
        Unknown method (the message lists the available ones), or ``eps``
        outside (0, 1], or a bad ``refresh_every``.
    """

    def __init__(self, method: str, eps: float = 0.9, *, refresh_every: int | None = None, **method_kwargs: Any) -> None:
        self.method = method
        self.info: MethodInfo = method_info(method)
        self.fn = self.info.fn
        self.eps = check_eps(eps)
        self.warm_start = self.info.warm_start
        if refresh_every is not None and (isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1):
            raise ValueError(f"refresh_every must be a positive integer or None; got refresh_every={refresh_every!r}")
        self.refresh_every = refresh_every
        self.method_kwargs = method_kwargs
        self._previous: dict[Hashable, tuple[Any, int]] = {}
        self._warned_nonfinite = False
        self.nonfinite = 0

    def reset(self) -> None:
        """Forget the warm-start state of every layer."""
        self._previous.clear()

    def __call__(self, x: torch.Tensor, key: Hashable = None, *, matrix_view: bool = False) -> Packed:
        """Compress ``x``; ``key`` names the layer for warm starts.

        ``matrix_view=True`` presents a ``(..., D)`` tensor as ``(-1, D)``
        (tokens x features for linear layers); the stored result is reshaped
        back on unpack.
        """
        if self.info.stores_input:
            # Kept as is: the held-memory ledger then sees it as the raw tensor it is.
            return Packed(x.detach())
        with torch.no_grad():
            data = x.detach()
            if matrix_view and data.dim() > 2:
                data = data.reshape(-1, data.shape[-1])
            kwargs = dict(self.method_kwargs)
            kwargs["eps"] = self.eps
            calls = 0
            # Warm state is kept per layer *and* shape: a short last batch or a
            # differently shaped input starts cold and never caps a later full batch.
            key = (key, tuple(data.shape))
            if self.warm_start and key in self._previous:
                previous, calls = self._previous[key]
                if self.refresh_every is None or calls % self.refresh_every != 0:
                    kwargs["init"] = previous
            if _is_per_mode(kwargs.get("rank"), data.dim()):
                # A layer whose modes are smaller than the rank asked for (resnet's 1x1 maps) keeps them whole.
                kwargs["rank"] = tuple(min(int(r), n) for r, n in zip(kwargs["rank"], data.shape))
            try:
                result = self._call(data, kwargs, key[0])
            except ValueError:
                if torch.isfinite(data).all():
                    raise
                self.nonfinite += 1
                if not self._warned_nonfinite:
                    warnings.warn(
                        f"an activation of shape {tuple(x.shape)} holds NaN or Inf; it is stored uncompressed "
                        "(further occurrences are counted in the memory stats, not warned)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    self._warned_nonfinite = True
                return Packed(x.detach())
            if self.warm_start:
                self._previous[key] = (_warm_state(result), calls + 1)
            return Packed(x, result)

    @property
    def warm_state_nbytes(self) -> int:
        """Bytes kept between steps as warm-start state (the factors of each layer's last result)."""
        return sum(_nbytes(state) for state, _ in self._previous.values())

    def _call(self, data: torch.Tensor, kwargs: dict[str, Any], layer: Hashable) -> Any:
        try:
            return self.fn(data, **kwargs)
        except ValueError as error:
            rank = kwargs.get("rank")
            if isinstance(rank, numbers.Integral) and not isinstance(rank, bool) and "rank" in str(error):
                # An integer rank that some mode cannot take: the per-mode methods take it capped per mode.
                capped = dict(kwargs, rank=tuple(min(int(rank), n) for n in data.shape))
                try:
                    return self.fn(data, **capped)
                except (ValueError, TypeError):
                    pass
            if "rank" in str(error) and rank is not None and torch.isfinite(data).all():
                name = layer[0] if isinstance(layer, tuple) and layer else layer
                raise ValueError(
                    f"{self.method} with rank={rank!r} cannot decompose the input of layer {name!r} "
                    f"(shape {tuple(data.shape)}): {error}"
                ) from error
            raise
