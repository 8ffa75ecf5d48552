"""Compress the activations autograd saves for backward, for any model, with saved-tensor hooks."""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._compress import Compressor, Packed
from .memory import ActivationMemory

__all__ = ["compress_activations"]

DEFAULT_MIN_NUMEL = 1024
"""Saved tensors with fewer elements are kept as is: decomposing them saves
little memory and costs a kernel launch or more each."""

_DEFAULT_MODULES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Conv1d, nn.Linear)

# Single-input ops through which a parameter reaches an op that saves it (the
# transposed weight of a linear layer, autocast's cast copy, reshapes).
_PARAMETER_VIEW_NODES = frozenset(
    {
        "TBackward0",
        "TransposeBackward0",
        "PermuteBackward0",
        "ViewBackward0",
        "ReshapeAliasBackward0",
        "UnsafeViewBackward0",
        "ExpandBackward0",
        "UnsqueezeBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "ToCopyBackward0",
        "CloneBackward0",
    }
)


def _dense_strides(t: torch.Tensor) -> tuple[int, ...] | None:
    """``t``'s strides if its elements tile a block of memory exactly (any dimension order), else None."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return None
        expected *= size
    return t.stride()


class _Saved:
    """What the pack hook returns for a compressed tensor: the shared packed data and this view's layout.

    Some backward kernels read saved tensors through raw pointers assuming
    the layout they were saved with (the CPU layer-norm backward assumes
    contiguous statistics), so the rebuilt tensor gets the saved tensor's
    strides when they tile memory exactly, and is contiguous otherwise.
    """

    __slots__ = ("packed", "shape", "stride")

    def __init__(self, packed: Packed, t: torch.Tensor) -> None:
        self.packed = packed
        self.shape = t.shape
        self.stride = None if t.is_contiguous() else _dense_strides(t)

    def unpack(self) -> torch.Tensor:
        rebuilt = self.packed.unpack().reshape(self.shape)
        if self.stride is None:
            return rebuilt.contiguous()
        if rebuilt.stride() == self.stride:
            return rebuilt
        return torch.empty_strided(self.shape, self.stride, dtype=rebuilt.dtype, device=rebuilt.device).copy_(rebuilt)


class _Frame:
    """A target module whose forward is running: what its saved input looks like."""

    __slots__ = ("name", "module", "numel", "storage", "weight_shapes", "linear")

    def __init__(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.name = name
        self.module = module
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        self.numel = None if first is None else first.numel()
        self.storage = None if first is None else _storage_ptr(first)
        self.weight_shapes = {tuple(p.shape) for p in module.parameters(recurse=False)}
        self.linear = isinstance(module, nn.Linear)


def _storage_ptr(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:  # tensors without storage (e.g. some wrapper subclasses)
        return None


def _parameter_derived(t: torch.Tensor) -> bool:
    """True for parameters, leaves that require grad, and views or casts of them."""
    if isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad):
        return True
    base = t._base
    if base is not None and (isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad)):
        return True
    node = t.grad_fn
    while node is not None and type(node).__name__ in _PARAMETER_VIEW_NODES:
        parents = [fn for fn, _ in node.next_functions if fn is not None]
        if len(parents) != 1:
            return False
        node = parents[0]
        if type(node).__name__ == "AccumulateGrad":
            return True
    return False


def _check_modules(modules: Any, model: nn.Module | None) -> tuple[type[nn.Module], ...] | Callable[[str, nn.Module], bool] | None:
    if modules is None:
        return _DEFAULT_MODULES if model is not None else None
    if model is None:
        raise ValueError("modules= selects modules of a model; pass model= too, or leave modules=None")
    if isinstance(modules, type):
        modules = (modules,)
    if isinstance(modules, (tuple, list)):
        if not modules or not all(isinstance(m, type) and issubclass(m, nn.Module) for m in modules):
            raise TypeError(f"modules must be nn.Module subclasses or a predicate (name, module) -> bool; got modules={modules!r}")
        return tuple(modules)
    if callable(modules):
        return modules
    raise TypeError(f"modules must be nn.Module subclasses or a predicate (name, module) -> bool; got modules={modules!r}")


class compress_activations(torch.autograd.graph.saved_tensors_hooks):
    """Context manager compressing the activations saved for backward inside it.

    Within the context, every tensor autograd saves for the backward pass
    goes through a pack hook: the inputs of the selected layers of ``model``
    are decomposed with ``method`` at energy ``eps`` and only the
    decomposition is kept; backward rebuilds them when it needs them. Other
    saved tensors are kept as is. Only the weight gradients of the selected
    layers change: their input gradients depend on the weights alone, so the
    gradient reaching every other parameter, and the network's input, is the
    exact one.

    What is compressed:

    - with ``model``: the input saved by each selected module (by default
      every ``nn.Conv2d``, ``nn.Conv1d`` and ``nn.Linear``), i.e. a tensor
      saved while the module's forward runs that is its input, a view of it
      (the ``(B*T, D)`` matrix a linear layer saves for a ``(B, T, D)``
      input) or a copy of it (autocast's cast), recognised by its number of
      elements; never the module's parameters or buffers;
    - with ``model=None``: every floating-point saved tensor except leaves
      that require grad (parameters, inputs one asks gradients for) and
      their views and casts. This includes the tensors nonlinearities save
      for their own derivative (a ReLU's output, whose sign decides where
      the gradient flows: even an exact reconstruction's round-off can flip
      it at zero), so gradients change beyond the weight gradients. Buffers
      cannot be told apart from activations there; ``min_numel`` leaves the
      usual small ones alone. With autocast, the cast copies of frozen
      weights are compressed too; pass the model to avoid it.

    In both modes integer and boolean tensors, tensors of order < 2 and
    tensors with fewer than ``min_numel`` elements are kept as is. One
    tensor saved several times (an input feeding several layers) is
    compressed once. Nothing happens while gradients are disabled
    (:func:`torch.no_grad`, :func:`torch.inference_mode`): autograd saves
    nothing then.

    The object can be entered again and again (one training step per
    entry); it keeps each layer's previous result for warm-started methods
    such as ``"subspace"``, which is lost if a new object is made each step.

    Parameters
    ----------
    model : nn.Module, optional
        The model whose layers' inputs to compress. ``None`` compresses every
        eligible saved tensor.
    method : str, default "hosvd"
        A name from :func:`tensorcomp.available_methods`: a decomposition
        (``"hosvd"``, ``"svd"``, ``"tucker"``, ``"cp"``, ``"tt"``,
        ``"subspace"``, or one registered by the user) or a baseline
        (``"vanilla"``, ``"gradfilter_r2"``, ``"quant8"``, ``"save_on_cpu"``,
        ...). ``"svd"`` decomposes a linear layer's input as a
        tokens x features matrix, every other input as ``(B, rest)``; the
        other methods use the tensor's own shape.
    eps : float, default 0.9
        Fraction of the energy to keep, in (0, 1].
    modules : type or tuple of types or callable, optional
        Which modules of ``model`` to compress: module classes, or a
        predicate ``(name, module) -> bool`` over ``model.named_modules()``.
        Requires ``model``.
    min_numel : int, default 1024
        Saved tensors with fewer elements are kept as is.
    stats : ActivationMemory, optional
        Record into this object (to accumulate steps over several contexts);
        a new one by default.
    **method_kwargs
        Passed to the method (e.g. ``rank=``, ``n_iter=``), and
        ``refresh_every=`` for warm-started methods (choose the ranks afresh
        from ``eps`` every this many steps per layer; by default the first
        step's ranks are kept).

    Attributes
    ----------
    stats : ActivationMemory
        One step per entry of the context, per layer (module names of
        ``model``; ``"saved_<i>"``, in saving order, with ``model=None``);
        ``stats.skipped`` counts tensors kept as is because they held NaN or
        Inf. On CUDA the peak allocation of each step,
        :func:`torch.cuda.max_memory_allocated` from entry to exit, is
        appended to ``stats.cuda_max_allocated`` (the peak statistics are
        reset on entry).

    Raises
    ------
    ValueError
        Unknown ``method`` (the message lists the available ones), ``eps``
        outside (0, 1], a negative ``min_numel``, or ``modules`` without
        ``model``.
    TypeError
        ``model`` is not an ``nn.Module``, ``eps`` not a number, ``modules``
        neither module classes nor a callable, ``stats`` not an
        :class:`ActivationMemory`.
    RuntimeError
        If the same object is entered while already active.

    Warns
    -----
    RuntimeWarning
        Once per object, when a saved activation holds NaN or Inf (it is kept
        as is; backward runs as without compression).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tensorcomp.adapters import compress_activations
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    >>> x = torch.randn(4, 3, 16, 16)
    >>> with compress_activations(model, "hosvd", eps=0.8) as ctx:
    ...     loss = model(x).square().mean()
    >>> loss.backward()
    >>> sorted(ctx.stats.per_layer)
    ['0', '2']
    >>> ctx.stats.compression_ratio > 1
    True
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        method: str = "hosvd",
        eps: float = 0.9,
        *,
        modules: type[nn.Module] | tuple[type[nn.Module], ...] | Callable[[str, nn.Module], bool] | None = None,
        min_numel: int = DEFAULT_MIN_NUMEL,
        stats: ActivationMemory | None = None,
        **method_kwargs: Any,
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None; got {type(model).__name__}")
        if isinstance(min_numel, bool) or not isinstance(min_numel, numbers.Integral) or min_numel < 0:
            raise ValueError(f"min_numel must be a non-negative integer; got min_numel={min_numel!r}")
        if stats is not None and not isinstance(stats, ActivationMemory):
            raise TypeError(f"stats must be an ActivationMemory or None; got {type(stats).__name__}")
        self.model = model
        self.method = method
        self.min_numel = int(min_numel)
        self._selector = _check_modules(modules, model)
        self.compressor = Compressor(method, eps, **method_kwargs)
        self.eps = self.compressor.eps
        self.stats = stats if stats is not None else ActivationMemory()
        self._active = False
        self._handles: list[Any] = []
        self._frames: list[_Frame] = []
        self._parameter_storages: set[int] = set()
        # (storage, offset, numel, dtype, device, layout) -> (weakref to the saved tensor's owner, weakref to its Packed)
        self._packed: dict[tuple[Any, ...], tuple[weakref.ref, weakref.ref]] = {}
        self._counts: dict[str, int] = {}

        def pack(tensor: torch.Tensor) -> Any:
            return self._pack(tensor)

        def unpack(stored: Any) -> torch.Tensor:
            if isinstance(stored, torch.Tensor):
                return stored
            return stored.unpack()

        super().__init__(pack, unpack)

    # -- selection ----------------------------------------------------------
    def _selected_modules(self) -> list[tuple[str, nn.Module]]:
        assert self.model is not None
        selector = self._selector
        if isinstance(selector, tuple):
            return [(n, m) for n, m in self.model.named_modules() if isinstance(m, selector)]
        return [(n, m) for n, m in self.model.named_modules() if selector(n, m)]

    def _owner(self, t: torch.Tensor) -> _Frame | None:
        """The running target module whose input ``t`` is, innermost first."""
        ptr = _storage_ptr(t)
        if ptr is not None and ptr in self._parameter_storages:
            return None
        for frame in reversed(self._frames):
            if frame.numel != t.numel():
                continue
            if ptr is not None and ptr == frame.storage:
                return frame
            # A copy of the input (autocast's cast): anything shaped like a weight is that weight's copy.
            if tuple(t.shape) not in frame.weight_shapes:
                return frame
        return None

    # -- the pack hook ------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> Any:
        kept = t.detach()
        if (
            not t.is_floating_point()
            or t.layout != torch.strided
            or t.dim() < 2
            or t.numel() < max(self.min_numel, 1)
        ):
            return kept
        if self.model is not None:
            frame = self._owner(t)
            if frame is None:
                return kept
            name, matrix_view = frame.name, frame.linear and self.method == "svd"
        else:
            if _parameter_derived(t):
                return kept
            name, matrix_view = f"saved_{sum(self._counts.values())}", False

        # Contiguous views of the same memory are reshapes of one another;
        # any other layout (a transpose) is a different tensor of the same memory.
        layout = "contiguous" if t.is_contiguous() else (tuple(t.shape), t.stride())
        key = (_storage_ptr(t), t.storage_offset(), t.numel(), t.dtype, t.device, layout)
        cached = self._packed.get(key)
        if cached is not None:
            source, packed = cached[0](), cached[1]()
            # Alive source: the memory was not freed and reused by another tensor since.
            if source is not None and packed is not None:
                return _Saved(packed, t)

        index = self._counts.get(name, 0)
        self._counts[name] = index + 1
        before = self.compressor.nonfinite
        packed = self.compressor(kept, key=(name, index), matrix_view=matrix_view)
        if self.compressor.nonfinite != before:
            self.stats.skipped += 1
        self.stats.record(name, original_bytes=packed.original_nbytes, stored_bytes=packed.nbytes, rank=packed.rank)
        owner = t._base if t._base is not None else t
        self._packed[key] = (weakref.ref(owner), weakref.ref(packed))
        return _Saved(packed, t)

    # -- module hooks -------------------------------------------------------
    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._frames.append(_Frame(name, module, args))

        return hook

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        for i in range(len(self._frames) - 1, -1, -1):
            if self._frames[i].module is module:
                del self._frames[i]
                return

    # -- context protocol ---------------------------------------------------
    def __enter__(self) -> compress_activations:
        if self._active:
            raise RuntimeError("this compress_activations context is already active; it cannot be nested in itself")
        self._active = True
        self._counts = {}
        if self.model is not None:
            self._parameter_storages = {
                ptr
                for t in (*self.model.parameters(), *self.model.buffers())
                if (ptr := _storage_ptr(t))
            }
            for name, module in self._selected_modules():
                self._handles.append(module.register_forward_pre_hook(self._push(name)))
                self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        self.stats.start_step()
        super().__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._frames.clear()
            self._packed.clear()
            self._parameter_storages = set()
            self._active = False
            peak = None
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                peak = torch.cuda.max_memory_allocated()
            self.stats.end_step(peak)

    def __repr__(self) -> str:
        target = "all saved tensors" if self.model is None else type(self.model).__name__
        return f"compress_activations({target}, method={self.method!r}, eps={self.eps}, min_numel={self.min_numel})"
