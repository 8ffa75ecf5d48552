"""Compress what autograd keeps for backward, for any model, with one context manager."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._compress import Compressor
from .memory import ActivationMemory
from .policy import INPUT_POLICIES, Session, active_session, unpack_saved

__all__ = ["compress_activations"]

DEFAULT_MIN_NUMEL = 1024
"""Layer inputs with fewer elements are kept as is: decomposing them saves
little memory and costs a kernel launch or more each."""

_DEFAULT_MODULES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.Linear, nn.MultiheadAttention)


def is_transformers_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is ``transformers``' Conv1D (GPT-2's linear layer, ``addmm`` with a transposed weight)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


def _check_modules(modules: Any, model: nn.Module | None) -> Callable[[str, nn.Module], bool] | None:
    if modules is None:
        if model is None:
            return None
        return lambda name, module: isinstance(module, _DEFAULT_MODULES) or is_transformers_conv1d(module)
    if model is None:
        raise ValueError("modules= selects modules of a model; pass model= too, or leave modules=None")
    if isinstance(modules, type):
        modules = (modules,)
    if isinstance(modules, (tuple, list)):
        if not modules or not all(isinstance(m, type) and issubclass(m, nn.Module) for m in modules):
            raise TypeError(f"modules must be nn.Module subclasses or a predicate (name, module) -> bool; got modules={modules!r}")
        classes = tuple(modules)
        return lambda name, module: isinstance(module, classes)
    if callable(modules):
        return modules
    raise TypeError(f"modules must be nn.Module subclasses or a predicate (name, module) -> bool; got modules={modules!r}")


def check_input_policies(**policies: Any) -> dict[str, str]:
    """``norm_inputs``, ``activation_inputs``, ``attention_inputs``: each one of :data:`~tensorcomp.adapters.policy.INPUT_POLICIES`."""
    for name, value in policies.items():
        if not isinstance(value, str) or value not in INPUT_POLICIES:
            raise ValueError(f"{name} must be one of {INPUT_POLICIES}; got {name}={value!r}")
    return dict(policies)


class compress_activations(torch.autograd.graph.saved_tensors_hooks):
    """Context manager shrinking what autograd keeps for backward inside it.

    Within the context, every op on this thread keeps for backward the most
    compact form its gradient allows, decided by one table
    (:mod:`tensorcomp.adapters.policy`, reproduced in :doc:`/guide/memory`):

    - the data input of each selected conv or linear layer is decomposed
      with ``method`` at energy ``eps``; its weight gradient is computed from
      the decomposition, its input gradient needs only the weight and stays
      exact. A layer whose weight is frozen keeps nothing of its input, nor
      does a layer reading an activation's output (GELU, SiLU, GPT-2's
      tanh-GELU, Llama's ``SiLU(gate) * up``) whose inputs those ops keep
      raw anyway: its input is recomputed from them in backward, exactly;
    - ReLU, ReLU6/Hardtanh/clamp, LeakyReLU, threshold and dropout keep a
      1-bit mask, max pooling its indices in the narrowest integer type:
      their gradients are the vanilla ones, bit for bit (``masks=False``
      keeps what vanilla autograd keeps);
    - a BatchNorm in evaluation mode keeps the decomposition of its input
      only for its own weight gradient, and nothing when that weight is
      frozen: its input gradient is exact;
    - normalisations in training mode keep their input exactly, unless
      ``norm_inputs="compress"`` (then the gradients below them change too);
      a LayerNorm whose output another op keeps raw keeps nothing of its
      own and reads its input back from that output (exact up to rounding),
      so a layer reading that output keeps it raw rather than decompose it;
      RMSNorm (``F.rms_norm`` and the elementwise RMSNorm modules of
      ``transformers``) keeps its input only and is recomputed in backward;
    - the elementwise activation chains of ``transformers`` (GPT-2's
      tanh-GELU) and attention (``scaled_dot_product_attention``) keep only
      their inputs and are recomputed in backward, exactly; GELU, SiLU and
      Mish keep their input, as vanilla does. ``activation_inputs`` and
      ``attention_inputs="compress"`` decompose those inputs too (then the
      gradients below them change);
    - every other op keeps what vanilla autograd keeps.

    Everything kept is counted, each storage once (``stats.held_bytes``); a
    storage that some op keeps raw anyway is never decomposed as well. Only
    the data input of an op is ever decomposed, recognised by the op's own
    arguments, never by size: weights, their casts and the intermediates of
    composite modules are left alone. Without ``torch.is_grad_enabled()``
    (:func:`torch.no_grad`, :func:`torch.inference_mode`) nothing is kept and
    nothing changes.

    The object can be entered again and again (one training step per
    entry); it keeps each layer's previous result for warm-started methods
    such as ``"subspace"``, which is lost if a new object is made each step.

    Parameters
    ----------
    model : nn.Module, optional
        The model whose layers' inputs to decompose. ``None`` decomposes the
        input of every conv and linear call in the context.
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
        Which modules of ``model`` have their conv and linear inputs
        decomposed: module classes, or a predicate ``(name, module) -> bool``
        over ``model.named_modules()``. A composite module (a
        ``TransformerEncoderLayer``) selects the conv and linear calls inside
        it. By default every ``nn.Conv1d/2d/3d`` and ``nn.Linear``, the
        input and output projections of ``nn.MultiheadAttention`` and
        ``transformers``' Conv1D. Requires ``model``.
    min_numel : int, default 1024
        Layer inputs with fewer elements are kept as is.
    stats : ActivationMemory, optional
        Record into this object (to accumulate steps over several contexts);
        a new one by default.
    norm_inputs : {"exact", "compress"}, default "exact"
        What training-mode BatchNorm, LayerNorm, GroupNorm and RMSNorm
        (``F.rms_norm`` and ``transformers``' RMSNorm modules) keep: their
        input exactly, or the method's decomposition of it (rebuilt in
        backward, an RMSNorm's with each row's true root mean square: the
        gradients of the norm's parameters and of everything below it
        change). Evaluation-mode BatchNorm is not affected.
    activation_inputs : {"exact", "compress"}, default "exact"
        What GELU, SiLU, Mish and the activation chains of
        ``transformers.activations`` keep: their input exactly, or the
        method's decomposition of it; backward recomputes the activation
        from the rebuilt input, so the gradients of everything below the
        activation change.
    attention_inputs : {"exact", "compress"}, default "exact"
        What ``scaled_dot_product_attention`` keeps of its query, key and
        value: the tensors (exact), or the method's decompositions of them
        (the attention is recomputed from the rebuilt ones; the gradients of
        everything below it change). A mask is always kept exactly.
    masks : bool, default True
        Keep 1-bit masks and narrow indices for the elementwise and pooling
        ops of the table (exact); ``False`` keeps what vanilla autograd keeps.
    **method_kwargs
        Passed to the method (e.g. ``rank=``, ``n_iter=``; a per-mode
        ``rank`` is capped at each mode's size, so ``rank=2`` works on a
        layer that sees 1 x 1 maps, and a rank that cannot apply raises a
        ``ValueError`` naming the layer), and
        ``refresh_every=`` for warm-started methods (choose the ranks afresh
        from ``eps`` every this many steps per layer; by default the first
        step's ranks are kept).

    Attributes
    ----------
    stats : ActivationMemory
        One step per entry of the context. ``stats.held_bytes`` and
        ``stats.held_breakdown``: everything the step holds for backward;
        ``stats.per_layer`` and ``stats.peak_bytes``: the decomposed layers'
        own inputs (module names of ``model``; ``"conv2d_<i>"``,
        ``"linear_<i>"`` in call order with ``model=None``);
        ``stats.skipped`` counts layer inputs kept as is because they held
        NaN or Inf. On CUDA, ``stats.cuda_max_allocated`` and
        ``stats.cuda_step_peak_bytes`` give the allocator's peak over each
        step (the peak statistics are reset on entry).

    Raises
    ------
    ValueError
        Unknown ``method`` (the message lists the available ones), ``eps``
        outside (0, 1], a negative ``min_numel``, ``modules`` without
        ``model``, or an unknown ``norm_inputs``, ``activation_inputs`` or
        ``attention_inputs``.
    TypeError
        ``model`` is not an ``nn.Module``, ``eps`` not a number, ``modules``
        neither module classes nor a callable, ``stats`` not an
        :class:`ActivationMemory`.
    RuntimeError
        If the same object is entered while already active; in backward,
        if a tensor kept exactly was modified in place after it was kept (as
        vanilla autograd raises).

    Warns
    -----
    RuntimeWarning
        Once per object, when a layer input holds NaN or Inf (it is kept as
        is; backward runs as without compression); once per object, when it
        is entered inside another active context or a converted model's
        forward (only the innermost one applies there).

    Notes
    -----
    Not supported, each with one clear ``RuntimeError``: double backward
    (``create_graph=True``: a compressed weight gradient cannot be
    differentiated again; run that step without the context),
    :func:`torch.compile` (PyTorch's saved-tensor hooks save no memory under
    compilation, pytorch#148222) and :func:`torch.func.grad` (refused by
    PyTorch itself).
    Inside another saved-tensor hook entered within the context (a
    non-reentrant :func:`torch.utils.checkpoint.checkpoint` region,
    ``save_on_cpu``) the ops run as vanilla autograd and that hook decides
    what is kept.

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
    >>> ctx.stats.held_bytes < ctx.stats.held_original_bytes
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
        norm_inputs: str = "exact",
        masks: bool = True,
        activation_inputs: str = "exact",
        attention_inputs: str = "exact",
        **method_kwargs: Any,
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None; got {type(model).__name__}")
        if isinstance(min_numel, bool) or not isinstance(min_numel, numbers.Integral) or min_numel < 0:
            raise ValueError(f"min_numel must be a non-negative integer; got min_numel={min_numel!r}")
        if stats is not None and not isinstance(stats, ActivationMemory):
            raise TypeError(f"stats must be an ActivationMemory or None; got {type(stats).__name__}")
        if not isinstance(masks, bool):
            raise TypeError(f"masks must be True or False; got masks={masks!r}")
        self.model = model
        self.method = method
        self.min_numel = int(min_numel)
        self.input_policies = check_input_policies(
            norm_inputs=norm_inputs, activation_inputs=activation_inputs, attention_inputs=attention_inputs
        )
        self._selector = _check_modules(modules, model)
        self.compressor = Compressor(method, eps, **method_kwargs)
        self.eps = self.compressor.eps
        self.stats = stats if stats is not None else ActivationMemory()
        self.masks = masks
        self._session: Session | None = None
        self._warned_nested = False

        def pack(tensor: torch.Tensor) -> Any:
            session = self._session
            return tensor if session is None else session.pack(tensor)

        super().__init__(pack, unpack_saved)

    def __enter__(self) -> compress_activations:
        if self._session is not None:
            raise RuntimeError("this compress_activations context is already active; it cannot be nested in itself")
        if active_session() is not None and not self._warned_nested:
            self._warned_nested = True
            warnings.warn(
                "compress_activations entered inside another active compress_activations (or a converted model's "
                "forward): only the innermost one decides what is kept inside it; the outer one sees nothing there",
                RuntimeWarning,
                stacklevel=2,
            )
        session = Session(
            self.compressor,
            self.stats,
            model=self.model,
            selects=self._selector,
            min_numel=self.min_numel,
            masks=self.masks,
            saved_tensor_hooks=False,
            **self.input_policies,
        )
        session.pack_fn = self.pack_hook
        session.start()
        self._session = session
        try:
            super().__enter__()
        except BaseException:
            self._session = None
            session.stop()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        session, self._session = self._session, None
        try:
            super().__exit__(*exc_info)
        finally:
            if session is not None:
                session.stop()

    def __repr__(self) -> str:
        target = "every conv and linear call" if self.model is None else type(self.model).__name__
        return (
            f"compress_activations({target}, method={self.method!r}, eps={self.eps}, min_numel={self.min_numel}, "
            + "".join(f"{k}={v!r}, " for k, v in self.input_policies.items())
            + f"masks={self.masks})"
        )
