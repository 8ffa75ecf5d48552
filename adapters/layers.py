"""Convolution and linear layers that keep only a decomposition of their input for backward.

A :class:`CompressedConv2d` or :class:`CompressedLinear` computes its output as
usual, but instead of the input activation it stores a truncated
decomposition of it. Its backward computes the input gradient exactly (it
needs only the weight) and the weight gradient straight from the stored
factors (:mod:`tensorcomp.adapters.grad_weight`), so the activation is never
rebuilt. :func:`convert` swaps the layers of an existing model in place.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ._compress import Compressor, Packed
from .grad_weight import (
    ConvGeometry,
    conv2d_padding,
    conv2d_weight_dense,
    conv2d_weight_from_factors,
    linear_weight_from_factors,
)
from .memory import ActivationMemory

__all__ = ["CompressedConv2d", "CompressedLinear", "convert", "memory_stats"]


class _StartStep:
    """Forward pre-hook opening a memory step for each training forward with gradients.

    A callable object rather than a closure so that ``copy.deepcopy`` of a
    model points the copy's hook at the copy's :class:`ActivationMemory`.
    """

    def __init__(self, memory: ActivationMemory) -> None:
        self.memory = memory

    def __call__(self, module: nn.Module, args: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self.memory.start_step()


def _step_hook_of(module: nn.Module) -> _StartStep | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _StartStep):
            return hook
    return None


class _CompressedLayer:
    """What both compressed layers share: the compressor, the memory record, the switch."""

    compressor: Compressor
    activation_memory: ActivationMemory
    compression_key: str

    def _init_compression(self, compressor: Compressor, memory: ActivationMemory, key: str) -> None:
        self.compressor = compressor
        self.activation_memory = memory
        self.compression_key = key

    def _init_standalone(self, compressor: Compressor) -> None:
        """A layer built directly (not by :func:`convert`): its own memory record, opened every forward."""
        memory = ActivationMemory()
        self._init_compression(compressor, memory, self._get_name())  # type: ignore[attr-defined]
        self.register_forward_pre_hook(_StartStep(memory))  # type: ignore[attr-defined]

    def _compresses(self, x: torch.Tensor) -> bool:
        return self.training and torch.is_grad_enabled() and self.weight.requires_grad  # type: ignore[attr-defined]

    def _store(self, x: torch.Tensor, *, matrix_view: bool = False) -> Packed:
        packed = self.compressor(x, key=self.compression_key, matrix_view=matrix_view)
        memory = self.activation_memory
        memory.record(self.compression_key, original_bytes=packed.original_nbytes, stored_bytes=packed.nbytes, rank=packed.rank)
        if packed.result is None:
            memory.skipped += 1
        return packed

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return f"{base}, method={self.compressor.method!r}, eps={self.compressor.eps}"

    @classmethod
    def _from_layer(cls, layer: nn.Module, compressor: Compressor, memory: ActivationMemory, key: str) -> Any:
        """A compressed twin of ``layer``: the same Parameter objects, buffers, hooks and flags."""
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        # Fresh containers, same contents: the swapped-out layer and the new
        # one must not alias each other's registries, but must share Parameters.
        new._parameters = dict(layer._parameters)
        new._buffers = dict(layer._buffers)
        new._modules = dict(layer._modules)
        new._init_compression(compressor, memory, key)
        return new


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The lower-precision dtype ``conv2d``/``linear`` would run in under the active autocast, if any."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _cast(tensors: Iterable[torch.Tensor | None], dtype: torch.dtype) -> list[torch.Tensor | None]:
    return [t if t is None or not t.is_floating_point() else t.to(dtype) for t in tensors]


# -- convolution ---------------------------------------------------------------
class _Conv2dFunction(torch.autograd.Function):
    """``conv2d`` whose backward reads the weight gradient from a stored decomposition of ``x``."""

    @staticmethod
    def forward(x, weight, bias, layer, geometry):  # type: ignore[override]
        stride, pads, dilation, groups = geometry
        top, bottom, left, right = pads
        if top == bottom and left == right:
            return F.conv2d(x, weight, bias, stride, (top, left), dilation, groups)
        # Asymmetric ("same" with an even kernel): the padded copy lives only here.
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        x, weight, bias, layer, geometry = inputs
        ctx.geometry = geometry
        ctx.input_shape = tuple(x.shape)
        ctx.packed = layer._store(x) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        packed, ctx.packed = ctx.packed, None  # free the factors as soon as they are used
        stride, pads, dilation, groups = ctx.geometry
        grad_input = grad_weight = grad_bias = None
        with torch.autocast(grad_output.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_input = _conv2d_input_grad(ctx.input_shape, weight, grad_output, stride, pads, dilation, groups)
            if ctx.needs_input_grad[1]:
                if packed.result is None:
                    grad_weight = conv2d_weight_dense(
                        packed.tensor.to(grad_output.dtype),
                        grad_output,
                        ConvGeometry(tuple(weight.shape), stride, pads, dilation, groups),
                    )
                else:
                    grad_weight = conv2d_weight_from_factors(
                        packed.result, weight.shape, grad_output, stride, pads, dilation, groups
                    )
                grad_weight = grad_weight.to(weight.dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None


def _conv2d_input_grad(
    input_shape: tuple[int, ...],
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    top, bottom, left, right = pads
    if top == bottom and left == right:
        return torch.nn.grad.conv2d_input(input_shape, weight, grad_output, stride, (top, left), dilation, groups)
    batch, channels, height, width = input_shape
    padded = (batch, channels, height + top + bottom, width + left + right)
    grad = torch.nn.grad.conv2d_input(padded, weight, grad_output, stride, 0, dilation, groups)
    return grad[:, :, top : top + height, left : left + width]


class CompressedConv2d(_CompressedLayer, nn.Conv2d):
    """:class:`torch.nn.Conv2d` that stores a decomposition of its input for backward.

    Same constructor, parameters and ``state_dict`` keys as :class:`torch.nn.Conv2d`.
    In training mode with gradients enabled (and a weight that requires
    grad), the forward stores only the decomposition of the input chosen by
    ``method``/``eps``; the backward returns the exact input gradient, the bias
    gradient, and the weight gradient computed from the factors with
    :func:`~tensorcomp.adapters.conv2d_weight_from_factors`. Otherwise
    (evaluation, ``torch.no_grad``, frozen weight) it is a plain ``Conv2d``.

    Every ``Conv2d`` configuration is supported: stride, dilation, padding
    (int, tuple, ``"valid"``, ``"same"`` with even kernels), any ``groups``,
    with or without bias. A ``padding_mode`` other than ``"zeros"`` pads the
    input before the compressed convolution, so its gradient flows through the
    padding as usual. Under :func:`torch.autocast` the input and weight are
    cast to the autocast dtype, as autocast does for ``conv2d``.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        As :class:`torch.nn.Conv2d`.
    method : str, default "hosvd"
        Decomposition, one of :func:`tensorcomp.available_methods`.
    eps : float, default 0.9
        Fraction of the energy to keep, in (0, 1].
    **method_kwargs
        Passed to :class:`~tensorcomp.adapters._compress.Compressor` (e.g.
        ``refresh_every`` for ``"subspace"``) and the method.

    Attributes
    ----------
    compressor : Compressor
        Shared by every layer of a :func:`convert`-ed model.
    activation_memory : ActivationMemory
        The record of stored bytes; see :func:`memory_stats`.
    compression_key : str
        Layer name used in the record and for warm starts.

    Examples
    --------
    >>> import torch
    >>> from tensorcomp.adapters import CompressedConv2d
    >>> conv = CompressedConv2d(3, 8, 3, padding=1, method="hosvd", eps=0.9)
    >>> conv(torch.randn(4, 3, 16, 16)).sum().backward()
    >>> conv.weight.grad.shape
    torch.Size([8, 3, 3, 3])
    >>> conv.activation_memory.num_steps
    1
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        method: str = "hosvd",
        eps: float = 0.9,
        **method_kwargs: Any,
    ) -> None:
        compressor = Compressor(method, eps, **method_kwargs)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_standalone(compressor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._compresses(x):
            return super().forward(x)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            pads = (0, 0, 0, 0)
        else:
            pads = conv2d_padding(self.padding, self.kernel_size, self.dilation)
        weight, bias = self.weight, self.bias
        dtype = _autocast_dtype(x.device.type)
        if dtype is not None:
            x, weight, bias = _cast((x, weight, bias), dtype)
        geometry = (tuple(self.stride), pads, tuple(self.dilation), self.groups)
        with torch.autocast(x.device.type, enabled=False):
            out = _Conv2dFunction.apply(x, weight, bias, self, geometry)
        return out.squeeze(0) if unbatched else out


# -- linear --------------------------------------------------------------------
class _LinearFunction(torch.autograd.Function):
    """``linear`` whose backward reads the weight gradient from a stored decomposition of ``x``."""

    @staticmethod
    def forward(x, weight, bias, layer, matrix_view):  # type: ignore[override]
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        x, weight, bias, layer, matrix_view = inputs
        ctx.packed = layer._store(x, matrix_view=matrix_view) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        packed, ctx.packed = ctx.packed, None
        grad_input = grad_weight = grad_bias = None
        with torch.autocast(grad_output.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_input = grad_output @ weight
            if ctx.needs_input_grad[1]:
                if packed.result is None:
                    x = packed.tensor.to(grad_output.dtype)
                    grad_weight = grad_output.reshape(-1, weight.shape[0]).t() @ x.reshape(-1, weight.shape[1])
                else:
                    grad_weight = linear_weight_from_factors(packed.result, weight.shape, grad_output)
                grad_weight = grad_weight.to(weight.dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = grad_output.reshape(-1, weight.shape[0]).sum(0)
        return grad_input, grad_weight, grad_bias, None, None


class CompressedLinear(_CompressedLayer, nn.Linear):
    """:class:`torch.nn.Linear` that stores a decomposition of its input for backward.

    Same constructor, parameters and ``state_dict`` keys as :class:`torch.nn.Linear`.
    In training mode with gradients enabled (and a weight that requires
    grad), an input of shape ``(..., D)`` with at least two dimensions is
    stored as a decomposition: ``method="svd"`` factors it as a
    tokens x features matrix ``(N, D)``; every other method decomposes it in
    its own shape (e.g. ``B x T x D``). The backward returns the exact input
    and bias gradients and the weight gradient from the factors
    (:func:`~tensorcomp.adapters.linear_weight_from_factors`).

    Parameters
    ----------
    in_features, out_features, bias, device, dtype
        As :class:`torch.nn.Linear`.
    method, eps, **method_kwargs
        As :class:`CompressedConv2d`.

    Examples
    --------
    >>> import torch
    >>> from tensorcomp.adapters import CompressedLinear
    >>> fc = CompressedLinear(16, 4, method="svd", eps=0.9)
    >>> fc(torch.randn(2, 10, 16)).sum().backward()
    >>> fc.weight.grad.shape
    torch.Size([4, 16])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        method: str = "hosvd",
        eps: float = 0.9,
        **method_kwargs: Any,
    ) -> None:
        compressor = Compressor(method, eps, **method_kwargs)
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_standalone(compressor)

    def _compresses(self, x: torch.Tensor) -> bool:
        return x.dim() >= 2 and super()._compresses(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._compresses(x):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        dtype = _autocast_dtype(x.device.type)
        if dtype is not None:
            x, weight, bias = _cast((x, weight, bias), dtype)
        matrix_view = self.compressor.method == "svd"
        with torch.autocast(x.device.type, enabled=False):
            return _LinearFunction.apply(x, weight, bias, self, matrix_view)


# -- model conversion ----------------------------------------------------------
_COMPRESSED = {nn.Conv2d: CompressedConv2d, nn.Linear: CompressedLinear}


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    # Exact types only: subclasses may override forward (or, like the output
    # projection of nn.MultiheadAttention, never call it), so swapping them
    # could silently change the model or do nothing.
    return {name: m for name, m in model.named_modules() if name and type(m) in _COMPRESSED}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def convert(
    model: nn.Module,
    method: str = "hosvd",
    eps: float = 0.9,
    last: int | None = None,
    layers: Iterable[str] | None = None,
    **method_kwargs: Any,
) -> nn.Module:
    """Swap a model's ``nn.Conv2d``/``nn.Linear`` layers for compressed ones, in place.

    Each selected layer becomes a :class:`CompressedConv2d` or
    :class:`CompressedLinear` holding the same Parameter objects (optimizers
    built before the call keep working), buffers, hooks and ``state_dict``
    keys. All swapped layers share one :class:`Compressor` (warm starts are
    kept per layer name) and one :class:`ActivationMemory`, read with
    :func:`memory_stats`; each training-mode forward of ``model`` with
    gradients enabled starts a new step of that record.

    Only layers of exactly type ``nn.Conv2d`` or ``nn.Linear`` are
    candidates (subclasses may have their own forward). Layer order is the
    modules' registration order (``model.named_modules()``), which is the
    forward order of sequential models such as torchvision's CNNs; pass
    ``layers=`` to choose by name when it is not.

    Parameters
    ----------
    model : nn.Module
        The model to convert (not itself a single layer).
    method : str, default "hosvd"
        Decomposition, one of :func:`tensorcomp.available_methods`.
    eps : float, default 0.9
        Fraction of the energy to keep, in (0, 1].
    last : int, optional
        Convert the last ``last`` candidate layers (the paper's "last k
        layers" setting; the first layers' gradients are then exact).
    layers : sequence of str, optional
        Names (as in ``model.named_modules()``) of the layers to convert.
    **method_kwargs
        Passed to the compressor and the method, e.g. ``refresh_every`` for
        ``"subspace"`` or ``rank`` for ``"cp"``.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    ValueError
        Unknown ``method`` (listing the available ones), ``eps`` outside (0, 1],
        ``last`` outside ``[1, number of candidate layers]``, unknown or
        non-candidate names in ``layers``, both ``last`` and ``layers`` given,
        or a model without candidate layers. Nothing is swapped then.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tensorcomp.adapters import convert, memory_stats
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 12 * 12, 10))
    >>> _ = convert(model, "hosvd", eps=0.8, last=2)
    >>> [type(m).__name__ for m in model]
    ['Conv2d', 'ReLU', 'CompressedConv2d', 'Flatten', 'CompressedLinear']
    >>> model(torch.randn(4, 3, 16, 16)).sum().backward()
    >>> sorted(memory_stats(model).per_layer)
    ['2', '4']
    """
    compressor = Compressor(method, eps, **method_kwargs)
    if isinstance(model, _CompressedLayer) or type(model) in _COMPRESSED:
        raise ValueError(
            f"model must contain the layers to convert, not be one; wrap it, e.g. nn.Sequential(model); got {type(model).__name__}"
        )
    candidates = _candidates(model)
    if not candidates:
        raise ValueError(f"model has no nn.Conv2d or nn.Linear layer left to convert; got a {type(model).__name__}")
    if last is not None and layers is not None:
        raise ValueError(f"pass at most one of last and layers; got last={last!r} and layers={layers!r}")
    if last is not None:
        if isinstance(last, bool) or not isinstance(last, numbers.Integral) or not 1 <= last <= len(candidates):
            raise ValueError(f"last must be an integer between 1 and {len(candidates)} (the number of layers); got last={last!r}")
        selected = list(candidates)[len(candidates) - int(last) :]
    elif layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        selected = list(dict.fromkeys(layers))
        unknown = [name for name in selected if name not in candidates]
        if unknown:
            raise ValueError(f"layers holds names that are not nn.Conv2d/nn.Linear layers of model: {unknown}; candidates: {list(candidates)}")
        if not selected:
            raise ValueError("layers must name at least one layer; got an empty list")
    else:
        selected = list(candidates)

    hook = _step_hook_of(model)
    if hook is None:
        hook = _StartStep(ActivationMemory())
        model.register_forward_pre_hook(hook)
    for name in selected:
        layer = candidates[name]
        _set_submodule(model, name, _COMPRESSED[type(layer)]._from_layer(layer, compressor, hook.memory, name))
    return model


def memory_stats(model: nn.Module) -> ActivationMemory:
    """The record of activation bytes stored by the compressed layers of ``model``.

    Parameters
    ----------
    model : nn.Module
        A model passed to :func:`convert`, a part of one, or a compressed layer.

    Returns
    -------
    ActivationMemory
        Shared by the model's compressed layers: one step per training-mode
        forward, one entry per compressed layer with its original and stored
        bytes and rank.

    Raises
    ------
    ValueError
        If ``model`` holds no compressed layer, or layers converted separately
        (each keeps its own record).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tensorcomp.adapters import convert, memory_stats
    >>> model = convert(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), "svd", eps=0.9)
    >>> for _ in range(3):
    ...     model(torch.randn(16, 8)).sum().backward()
    >>> stats = memory_stats(model)
    >>> stats.num_steps, stats.peak_bytes <= stats.original_bytes
    (3, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    memories = {id(m.activation_memory): m.activation_memory for m in model.modules() if isinstance(m, _CompressedLayer)}
    if not memories:
        raise ValueError(f"model has no compressed layer; call convert(model, ...) first (got a {type(model).__name__})")
    if len(memories) > 1:
        raise ValueError(
            f"the compressed layers of this {type(model).__name__} keep {len(memories)} separate records "
            "(they were converted or built separately); read each layer's activation_memory"
        )
    return next(iter(memories.values()))
