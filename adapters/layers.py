"""Convolution and linear layers that keep only a decomposition of their input for backward.

A :class:`CompressedConv2d` or :class:`CompressedLinear` computes its output as
usual, but instead of the input activation it stores a truncated
decomposition of it. Its backward computes the input gradient exactly (it
needs only the weight) and the weight gradient straight from the stored
factors (:mod:`tensorcomp.adapters.grad_weight`), so the activation is never
rebuilt. :func:`convert` swaps the layers of an existing model in place, and
runs each training forward of the model under the same policy as
:func:`~tensorcomp.adapters.compress_activations`, so both styles hold the
same bytes (:mod:`tensorcomp.adapters.policy`).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ._compress import Compressor
from .hooks import DEFAULT_MIN_NUMEL, check_input_policies, is_transformers_conv1d
from .memory import ActivationMemory
from .policy import Session, active_session, other_saved_tensor_hooks_active

__all__ = ["CompressedConv2d", "CompressedLinear", "convert", "memory_stats"]


class _SessionHooks:
    """Root forward hooks of a :func:`convert`-ed model: each training forward with gradients runs in one session.

    A callable object rather than closures so that ``copy.deepcopy`` of a
    model points the copy's hooks at the copy's :class:`ActivationMemory`.
    """

    def __init__(self, memory: ActivationMemory, compressor: Compressor, options: dict[str, Any]) -> None:
        self.memory = memory
        self.compressor = compressor
        self.options = options
        self.session: Session | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _SessionHooks:
        import copy

        return _SessionHooks(copy.deepcopy(self.memory, memo), copy.deepcopy(self.compressor, memo), dict(self.options))

    def before(self, module: nn.Module, args: Any) -> None:
        if self.session is None and module.training and torch.is_grad_enabled():
            session = Session(
                self.compressor, self.memory, model=module, selects=_is_compressed_layer, root_hooks_outside=True, **self.options
            )
            session.start()  # a start that raises has stopped itself: nothing for after() to stop
            self.session = session

    def after(self, module: nn.Module, args: Any, output: Any) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.stop()


def _is_compressed_layer(name: str, module: nn.Module) -> bool:
    return isinstance(module, _CompressedLayer)


def _session_hooks_of(module: nn.Module) -> _SessionHooks | None:
    for hook in module._forward_pre_hooks.values():
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, _SessionHooks):
            return owner
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
        """A layer built directly (not by :func:`convert`): its own memory record, one step per forward."""
        self._init_compression(compressor, ActivationMemory(), self._get_name())  # type: ignore[attr-defined]

    def _compresses(self, x: torch.Tensor) -> bool:
        return self.training and torch.is_grad_enabled() and self.weight.requires_grad  # type: ignore[attr-defined]

    def _forward_compressed(self, x: torch.Tensor) -> torch.Tensor:
        plain = super().forward  # type: ignore[misc]
        if not self._compresses(x):
            return plain(x)
        if active_session() is not None or other_saved_tensor_hooks_active():
            # The running session's mode decides what this layer's conv/linear call keeps; inside
            # another saved-tensor hook (a checkpoint recomputing in backward) the layer is vanilla.
            return plain(x)
        session = Session(
            self.compressor, self.activation_memory, model=None, selects=None,
            min_numel=1, norm_inputs="exact", masks=True, name=self.compression_key,
        )
        session.start()
        try:
            return plain(x)
        finally:
            session.stop()

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
        return self._forward_compressed(x)


# -- linear --------------------------------------------------------------------
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
        return self._forward_compressed(x)


# -- transformers' Conv1D --------------------------------------------------------
_CONV1D_DOC = """``transformers``' Conv1D (GPT-2's linear layer: ``addmm`` with a transposed weight) that stores a
decomposition of its input for backward, as :class:`CompressedLinear` does (tokens x features for ``"svd"``).

Made by :func:`convert` from a model's Conv1D layers (the class is built
when first needed, so the adapters never import ``transformers`` themselves);
``tensorcomp.adapters.layers.CompressedConv1D`` names it for pickling.
"""
_CONV1D_CLASSES: dict[type, type] = {}


def _compressed_conv1d_class(base: type) -> type:
    """The compressed twin class of ``transformers``' Conv1D class ``base`` (one per class)."""
    cls = _CONV1D_CLASSES.get(base)
    if cls is None:

        def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
            return self._forward_compressed(x)

        def extra_repr(self: Any) -> str:
            return f"nf={self.nf}, nx={self.nx}, method={self.compressor.method!r}, eps={self.compressor.eps}"

        namespace = {"forward": forward, "extra_repr": extra_repr, "__repr__": nn.Module.__repr__, "__doc__": _CONV1D_DOC,
                     "__module__": __name__, "__qualname__": "CompressedConv1D"}
        cls = type("CompressedConv1D", (_CompressedLayer, base), namespace)
        _CONV1D_CLASSES[base] = cls
    return cls


def __getattr__(name: str) -> Any:
    # PEP 562: unpickling a converted GPT-2 looks the class up by name.
    if name == "CompressedConv1D":
        from transformers.pytorch_utils import Conv1D

        return _compressed_conv1d_class(Conv1D)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- model conversion ----------------------------------------------------------
_COMPRESSED = {nn.Conv2d: CompressedConv2d, nn.Linear: CompressedLinear}


def _compressed_type(module: nn.Module) -> type | None:
    """The compressed class that can stand in for ``module``, or ``None``.

    Exact types only: subclasses may override forward (or, like the output
    projection of nn.MultiheadAttention, never call it), so swapping them
    could silently change the model or do nothing.
    """
    cls = _COMPRESSED.get(type(module))
    if cls is None and is_transformers_conv1d(module):
        cls = _compressed_conv1d_class(type(module))
    return cls


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and _compressed_type(m) is not None}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def convert(
    model: nn.Module,
    method: str = "hosvd",
    eps: float = 0.9,
    *,
    last: int | None = None,
    layers: Iterable[str] | None = None,
    min_numel: int = DEFAULT_MIN_NUMEL,
    norm_inputs: str = "exact",
    masks: bool = True,
    activation_inputs: str = "exact",
    attention_inputs: str = "exact",
    **method_kwargs: Any,
) -> nn.Module:
    """Swap a model's ``nn.Conv2d``/``nn.Linear`` (and ``transformers`` Conv1D) layers for compressed ones, in place.

    Each selected layer becomes a :class:`CompressedConv2d`,
    :class:`CompressedLinear` or ``CompressedConv1D`` (GPT-2's layers)
    holding the same Parameter objects (optimizers
    built before the call keep working), buffers, hooks and ``state_dict``
    keys. All swapped layers share one compressor (warm starts are kept per
    layer name and input shape) and one :class:`ActivationMemory`, read with
    :func:`memory_stats`; each training-mode forward of ``model`` with
    gradients enabled is one step of that record, run under the policy of
    :mod:`tensorcomp.adapters.policy` (what every op keeps for backward).

    Only layers of exactly type ``nn.Conv2d``, ``nn.Linear`` or
    ``transformers``' Conv1D are candidates (subclasses may have their own
    forward). Layer order is the
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
    min_numel, norm_inputs, masks, activation_inputs, attention_inputs
        As for :func:`~tensorcomp.adapters.compress_activations`: each
        training-mode forward of ``model`` with gradients enabled runs under
        the same policy, so ReLU-like ops keep bit masks, evaluation-mode
        BatchNorms keep a decomposition (or nothing), and the held bytes are
        those the hook style reaches on the same layers.
    **method_kwargs
        Passed to the compressor and the method, e.g. ``refresh_every`` for
        ``"subspace"`` or ``rank`` for ``"cp"``; a per-mode ``rank`` is
        capped at each mode's size, and a rank that cannot apply raises a
        ``ValueError`` naming the layer.

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
        a negative ``min_numel``, an unknown ``norm_inputs``,
        ``activation_inputs`` or ``attention_inputs``, or a model
        without candidate layers. Nothing is swapped then.
    TypeError
        ``masks`` is not a bool.

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
    if isinstance(min_numel, bool) or not isinstance(min_numel, numbers.Integral) or min_numel < 0:
        raise ValueError(f"min_numel must be a non-negative integer; got min_numel={min_numel!r}")
    if not isinstance(masks, bool):
        raise TypeError(f"masks must be True or False; got masks={masks!r}")
    options = {
        "min_numel": int(min_numel), "masks": masks,
        **check_input_policies(norm_inputs=norm_inputs, activation_inputs=activation_inputs, attention_inputs=attention_inputs),
    }
    if isinstance(model, _CompressedLayer) or _compressed_type(model) is not None:
        raise ValueError(
            f"model must contain the layers to convert, not be one; wrap it, e.g. nn.Sequential(model); got {type(model).__name__}"
        )
    candidates = _candidates(model)
    if not candidates:
        raise ValueError(f"model has no nn.Conv2d, nn.Linear or transformers Conv1D layer left to convert; got a {type(model).__name__}")
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
            raise ValueError(f"layers holds names that are not nn.Conv2d/nn.Linear/Conv1D layers of model: {unknown}; candidates: {list(candidates)}")
        if not selected:
            raise ValueError("layers must name at least one layer; got an empty list")
    else:
        selected = list(candidates)

    hooks = _session_hooks_of(model)
    if hooks is None:
        hooks = _SessionHooks(ActivationMemory(), compressor, options)
        model.register_forward_pre_hook(hooks.before)
        model.register_forward_hook(hooks.after, always_call=True)
    else:
        hooks.options = options
    for name in selected:
        layer = candidates[name]
        _set_submodule(model, name, _compressed_type(layer)._from_layer(layer, compressor, hooks.memory, name))
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
    >>> model = convert(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)), "svd", eps=0.9)
    >>> for _ in range(3):
    ...     model(torch.randn(32, 64)).sum().backward()
    >>> stats = memory_stats(model)
    >>> stats.num_steps, stats.peak_bytes <= stats.original_bytes, stats.held_bytes < stats.held_original_bytes
    (3, True, True)
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
