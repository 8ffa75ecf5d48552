"""What each op keeps for backward, decided in one place.

Inside an active :func:`~tensorcomp.adapters.compress_activations` (or the
forward of a :func:`~tensorcomp.adapters.convert`-ed model) a
:class:`torch.overrides.TorchFunctionMode` sees every torch call with its
arguments, so it knows which op is saving which argument: only the *data
input* of a conv or linear call is ever decomposed, never a weight, a cast
copy of one, or an intermediate of a composite module. Each op of the table
below runs as an autograd function that keeps the form named here:

================================  ===========================================  ==============
op                                kept for backward                            gradients
================================  ===========================================  ==============
conv1d/2d/3d, linear (selected)   the method's decomposition of the input;    input exact,
                                  nothing when the weight is frozen            weight approx.
conv, linear (frozen weight)      nothing (the input gradient needs the        exact
                                  weight only)
conv, linear reading the output   nothing: the input is recomputed in          exact
of an activation, a gated         backward from what those ops keep anyway
product or a dropout whose        (before any decomposition: no bytes, no
inputs other ops keep raw         error)
relu, relu_, F.relu, Tensor.relu  1-bit sign of the output                     exact
hardtanh, relu6, clamp, clip      1-bit "inside the range" of the input        exact
leaky_relu                        1-bit sign of the input                      exact
threshold                         1-bit "above the threshold" of the input     exact
dropout (training)                1-bit keep mask                              exact
max_pool2d                        argmax indices in the narrowest integer      exact
                                  type holding ``H * W``
batch_norm, evaluation mode       the method's decomposition of the input      input exact,
                                  when the weight is trained, else nothing     weight approx.
batch_norm, layer_norm,           the input, raw (default); with               exact (default)
group_norm, training mode         ``norm_inputs="compress"`` the method's
                                  decomposition, rebuilt in backward           approx. below
layer_norm (default)              its output instead of its input where        exact up to
                                  another op keeps the output raw anyway       rounding
                                  (nothing of its own then); a layer reading
                                  that output keeps it raw, not decomposed
rms_norm, RMSNorm modules of      their input only; recomputed in backward     exact
``transformers`` (Llama's)        (``norm_inputs="compress"``: decomposed)
addmm(bias, x, W) (``transformers``  as linear, with the weight ``W.t()``          as linear
Conv1D)
elementwise activation modules    their input only; the chain is recomputed    exact
(``transformers.activations``:    from it in backward
tanh-GELU of GPT-2, quick GELU)
gelu, silu, mish                  their input, as vanilla                      exact
mul of an activation's output     the other factor and the activation's        exact
(Llama's ``SiLU(gate) * up``)     input; the output is recomputed from it
                                  (compressed with ``activation_inputs``)
scaled_dot_product_attention      query, key, value (and mask); recomputed,    exact
                                  dropout replayed from the generator state
matmul of a dropout's output      the other factor, and the dropout's input    exact
over a tensor kept raw (eager     and bits, kept anyway; the dropped
attention's ``dropout(P) @ v``)   probabilities are recomputed from them
multi_head_attention_forward      its parts through the rules above: the two   as those rules
(``nn.MultiheadAttention``,       projections as linear layers, the attention
self-attention, no masks)         as scaled_dot_product_attention
anything else                     what vanilla autograd keeps, counted         exact
================================  ===========================================  ==============

``norm_inputs="compress"`` keeps the method's decomposition of the
training-mode norms' inputs (rebuilt, or recomputed from, in backward),
``activation_inputs="compress"`` keeps the method's decomposition of the
input of the activation rows instead (recomputed from the rebuilt input),
``attention_inputs="compress"`` those of the query, key and value; the
gradients of everything below such an op then become approximate.

Every tensor kept, raw or compact, is counted once per storage in the step's
ledger (:mod:`tensorcomp.adapters._held`, NOTE [ Held memory ]).
"""

from __future__ import annotations

import math
import functools
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from ._compress import Compressor, Packed
from .baselines import StoredTensor
from ._held import HeldLedger, storage_nbytes, storage_ptr
from .grad_weight import ConvGeometry, conv2d_padding, conv2d_weight_dense, conv2d_weight_from_factors, linear_weight_from_factors
from .masks import BitMask, narrow_index_dtype
from .memory import ActivationMemory

__all__ = ["INPUT_POLICIES", "Session", "active_session", "other_saved_tensor_hooks_active", "unpack_saved"]

INPUT_POLICIES = ("exact", "compress")
"""The values of ``norm_inputs``, ``activation_inputs`` and ``attention_inputs``: keep what the gradient needs
exactly, or the method's decomposition of it (the gradients below the op become approximate)."""

_local = threading.local()


def active_session() -> Session | None:
    """The innermost running session on this thread, if any."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


_DOUBLE_BACKWARD = (
    "compressed activations give first-order gradients only: backward ran with create_graph=True (double backward, "
    "a gradient penalty, a higher-order derivative), which would silently differentiate a compressed gradient as a "
    "constant. Run that step outside compress_activations(...) or on a model that was not converted; activation "
    "checkpointing (torch.utils.checkpoint) supports double backward"
)
_COMPILE = (
    "compressed activations run on eager tensors only: torch.compile traces saved-tensor hooks without saving "
    "memory (pytorch#148222) and cannot trace the compression policy. Compile the model without "
    "compress_activations(...)/convert(...), or run the compressed model eagerly"
)


def _first_order(backward: Callable[..., Any]) -> Callable[..., Any]:
    """``once_differentiable``, with one clear error when backward runs with ``create_graph=True``."""
    once = once_differentiable(backward)

    @functools.wraps(backward)
    def run(ctx: Any, *grads: Any) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        return once(ctx, *grads)

    return run


def _no_torch_function() -> Any:
    # Inside the policy's own functions the mode must not see the ops again.
    return torch._C.DisableTorchFunction()


def _save_layer(ctx: Any, x: torch.Tensor, weight: torch.Tensor, packed: Packed | None, store: Callable[..., Any]) -> None:
    """What every layer function keeps: the weight and the stored input (nothing for a frozen weight, then
    ``x`` is counted among the originals), and the input's shape and dtype for its gradient."""
    token = _keep(packed)
    if packed is None:
        store.original(x, token)  # type: ignore[attr-defined]
    ctx.input_shape = tuple(x.shape)
    ctx.input_dtype = x.dtype
    ctx.save_for_backward(weight, token)


def _keep(obj: Any) -> torch.Tensor:
    """An empty tensor carrying ``obj``, for ``ctx.save_for_backward``.

    Saved this way, a compact form has the lifetime autograd gives its own
    saved tensors: freed once backward has used it (unless
    ``retain_graph=True``), kept for a second backward otherwise, and a clear
    autograd error on a backward through freed buffers. An attribute of
    ``ctx`` would instead live as long as the graph.
    """
    token = torch.empty(0)
    token.kept = obj
    return token


def _kept(token: torch.Tensor) -> Any:
    """What :func:`_keep` put in ``token``; a clear error where a tracer replaced the token by a plain tensor."""
    try:
        return token.kept
    except AttributeError:
        # torch.compile's graph saves its own tensors in place of the policy's tokens.
        raise RuntimeError(_COMPILE) from None


# -- layers: conv and linear ---------------------------------------------------------------------


class _Conv2dFunction(torch.autograd.Function):
    """``conv2d`` keeping the decomposition of its input; weight gradient from the factors."""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry, compute_dtype, store):  # type: ignore[override]
        stride, pads, dilation, groups = geometry
        with _no_torch_function():
            xc, wc, bc = _cast(x, weight, bias, compute_dtype)
            top, bottom, left, right = pads
            if top == bottom and left == right:
                out = F.conv2d(xc, wc, bc, stride, (top, left), dilation, groups)
            else:
                out = F.conv2d(F.pad(xc, (left, right, top, bottom)), wc, bc, stride, 0, dilation, groups)
            packed = store(xc) if ctx.needs_input_grad[1] else None
        ctx.geometry = geometry
        _save_layer(ctx, x, weight, packed, store)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad_output):  # type: ignore[override]
        weight, kept = ctx.saved_tensors
        packed = _kept(kept)
        stride, pads, dilation, groups = ctx.geometry
        grad_input = grad_weight = grad_bias = None
        with torch.autocast(grad_output.device.type, enabled=False), _no_torch_function():
            w = weight.to(grad_output.dtype)
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
                # The kernel autograd itself runs, so that these gradients are vanilla's bit for bit.
                grad_input, grad_bias = _conv2d_input_and_bias_grad(
                    ctx.input_shape, w, grad_output, stride, pads, dilation, groups, ctx.needs_input_grad[0], ctx.needs_input_grad[2]
                )
                if grad_input is not None:
                    grad_input = grad_input.to(ctx.input_dtype)
                if grad_bias is not None:
                    grad_bias = grad_bias.to(weight.dtype)
            if ctx.needs_input_grad[1]:
                geometry = ConvGeometry(tuple(weight.shape), stride, pads, dilation, groups)
                if packed.result is None:
                    grad_weight = conv2d_weight_dense(packed.unpack().to(grad_output.dtype), grad_output, geometry)
                else:
                    grad_weight = conv2d_weight_from_factors(packed.result, weight.shape, grad_output, stride, pads, dilation, groups)
                grad_weight = grad_weight.to(weight.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None


def _conv2d_input_and_bias_grad(input_shape, weight, grad_output, stride, pads, dilation, groups, need_input, need_bias):
    top, bottom, left, right = pads
    batch, channels, height, width = input_shape
    padded = (batch, channels, height + top + bottom, width + left + right)
    symmetric = top == bottom and left == right
    like = grad_output.new_empty(input_shape if symmetric else padded)
    grad_input, _, grad_bias = torch.ops.aten.convolution_backward(
        grad_output, like, weight, [weight.shape[0]], list(stride), [top, left] if symmetric else [0, 0],
        list(dilation), False, [0, 0], groups, [need_input, False, need_bias],
    )
    if grad_input is not None and not symmetric:
        grad_input = grad_input[:, :, top : top + height, left : left + width]
    return grad_input, grad_bias


class _ConvNdFunction(torch.autograd.Function):
    """conv1d/conv3d keeping the decomposition of their input; the weight gradient rebuilds it."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv, params, compute_dtype, store):  # type: ignore[override]
        stride, padding, dilation, groups = params
        with _no_torch_function():
            xc, wc, bc = _cast(x, weight, bias, compute_dtype)
            out = conv(xc, wc, bc, stride, padding, dilation, groups)
            packed = store(xc) if ctx.needs_input_grad[1] else None
        ctx.params = params
        _save_layer(ctx, x, weight, packed, store)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad_output):  # type: ignore[override]
        weight, kept = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.params
        n = weight.dim() - 2
        rep = lambda v: [int(a) for a in (v if isinstance(v, (tuple, list)) else (v,) * n)]  # noqa: E731
        with torch.autocast(grad_output.device.type, enabled=False), _no_torch_function():
            w = weight.to(grad_output.dtype)
            if ctx.needs_input_grad[1]:
                x = _kept(kept).unpack().to(grad_output.dtype)
            else:
                x = grad_output.new_empty(ctx.input_shape)
            mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
            gi, gw, gb = torch.ops.aten.convolution_backward(
                grad_output, x, w, [weight.shape[0]], rep(stride), rep(padding), rep(dilation), False, [0] * n, groups, mask
            )
        gi = gi.to(ctx.input_dtype) if gi is not None else None
        gw = gw.to(weight.dtype) if gw is not None else None
        gb = gb.to(weight.dtype) if gb is not None else None
        return gi, gw, gb, None, None, None, None


class _LinearFunction(torch.autograd.Function):
    """``linear`` keeping the decomposition of its input; weight gradient from the factors."""

    @staticmethod
    def forward(ctx, x, weight, bias, compute_dtype, store):  # type: ignore[override]
        with _no_torch_function():
            xc, wc, bc = _cast(x, weight, bias, compute_dtype)
            out = F.linear(xc, wc, bc)
            packed = store(xc) if ctx.needs_input_grad[1] else None
        _save_layer(ctx, x, weight, packed, store)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad_output):  # type: ignore[override]
        weight, kept = ctx.saved_tensors
        packed = _kept(kept)
        grad_input = grad_weight = grad_bias = None
        with torch.autocast(grad_output.device.type, enabled=False), _no_torch_function():
            w = weight.to(grad_output.dtype)
            if ctx.needs_input_grad[0]:
                grad_input = (grad_output @ w).to(ctx.input_dtype)
            if ctx.needs_input_grad[1]:
                if packed.result is None:
                    x = packed.unpack().to(grad_output.dtype)
                    grad_weight = grad_output.reshape(-1, weight.shape[0]).t() @ x.reshape(-1, weight.shape[1])
                else:
                    grad_weight = linear_weight_from_factors(packed.result, weight.shape, grad_output)
                grad_weight = grad_weight.to(weight.dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = grad_output.reshape(-1, weight.shape[0]).sum(0).to(weight.dtype)
        return grad_input, grad_weight, grad_bias, None, None


def _cast(x, weight, bias, dtype):
    if dtype is None:
        return x, weight, bias
    return tuple(t if t is None or not t.is_floating_point() else t.to(dtype) for t in (x, weight, bias))


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


# -- exact masks ---------------------------------------------------------------------------------


class _MaskFunction(torch.autograd.Function):
    """An elementwise op whose backward is ``where(mask, grad, slope * grad)`` with a 1-bit mask.

    ``compute(x)`` returns ``(output, mask)``; with ``inplace`` the output is
    written into ``x``. ``slope`` is 0 for ReLU, clamp and threshold, the
    negative slope for LeakyReLU.
    """

    @staticmethod
    def forward(ctx, x, compute, inplace, slope, box):  # type: ignore[override]
        with _no_torch_function():
            out, mask = compute(x)
            bits = BitMask(mask)
            if inplace:
                x.copy_(out)
                ctx.mark_dirty(x)
                out = x
        box.append(bits)  # counted by the caller, once autograd has set the output's version
        ctx.save_for_backward(_keep(bits))
        ctx.slope = slope
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # type: ignore[override]
        with _no_torch_function():
            mask = _kept(ctx.saved_tensors[0]).unpack()
            other = grad * ctx.slope if ctx.slope else torch.zeros((), dtype=grad.dtype, device=grad.device)
            return torch.where(mask, grad, other), None, None, None, None


def _relu_compute(x):
    out = torch.relu(x)
    return out, ~(out <= 0)  # threshold_backward: zero where the output is <= 0 (NaN passes)


def _leaky_compute(slope):
    def compute(x):
        return F.leaky_relu(x, slope), x > 0

    return compute


def _hardtanh_compute(lo, hi):
    def compute(x):
        return F.hardtanh(x, lo, hi), ~((x <= lo) | (x >= hi))

    return compute


def _clamp_boundary_passes() -> tuple[bool, bool]:
    """Whether vanilla clamp's gradient passes at ``x == min`` and at ``x == max``.

    PyTorch releases differ on the subgradient at the bounds; asking the
    installed one keeps the mask identical to its own backward.
    """
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    with _no_torch_function():
        (grad,) = torch.autograd.grad(torch.clamp(x, 0.0, 1.0).sum(), x)
    return bool(grad[0] != 0), bool(grad[1] != 0)


_CLAMP_PASSES: tuple[bool, bool] | None = None


def _clamp_compute(lo, hi):
    global _CLAMP_PASSES
    if _CLAMP_PASSES is None:
        _CLAMP_PASSES = _clamp_boundary_passes()
    at_min, at_max = _CLAMP_PASSES

    def compute(x):
        out = torch.clamp(x, lo, hi)
        mask = None
        if lo is not None:
            mask = x >= lo if at_min else x > lo
        if hi is not None:
            upper = x <= hi if at_max else x < hi
            mask = upper if mask is None else mask & upper
        return out, mask

    return compute


def _threshold_compute(threshold, value):
    def compute(x):
        return F.threshold(x, threshold, value), ~(x <= threshold)

    return compute


class _DropoutFunction(torch.autograd.Function):
    """Dropout keeping its keep-mask as bits; backward is ``native_dropout_backward``."""

    @staticmethod
    def forward(ctx, x, p, inplace, box):  # type: ignore[override]
        with _no_torch_function():
            out, mask = torch.native_dropout(x, p, True)
            if inplace:
                x.copy_(out)
                ctx.mark_dirty(x)
                out = x
        bits = BitMask(mask)
        box.append(bits)
        ctx.save_for_backward(_keep(bits))
        ctx.scale = 1.0 / (1.0 - p)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # type: ignore[override]
        with _no_torch_function():
            return torch.ops.aten.native_dropout_backward(grad, _kept(ctx.saved_tensors[0]).unpack(), ctx.scale), None, None, None


class _MaxPool2dFunction(torch.autograd.Function):
    """Max pooling keeping only the argmax indices, in the narrowest integer type."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, session):  # type: ignore[override]
        with _no_torch_function():
            out, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)
            indices = indices.to(narrow_index_dtype(x.shape[-1] * x.shape[-2]))
        # Counted against what vanilla keeps: the pool's input, and int64 indices beside it.
        session.hold_compact(indices, indices.numel() * indices.element_size(), "masks", x)
        session.hold_original(indices, x, "masks", indices.numel() * 8)
        ctx.save_for_backward(_keep(indices))
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        ctx.input_layout = (x.shape, x.stride(), x.dtype, x.device)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # type: ignore[override]
        shape, stride, dtype, device = ctx.input_layout
        with _no_torch_function():
            # The kernel reads only the input's sizes and layout, not its values.
            like = torch.empty_strided(shape, stride, dtype=grad.dtype, device=device)
            grad_input = torch.ops.aten.max_pool2d_with_indices_backward(grad, like, *ctx.args, _kept(ctx.saved_tensors[0]).long())
        return grad_input, None, None, None, None, None, None


# -- normalisation -------------------------------------------------------------------------------


class _NormInput:
    """What an evaluation-mode BatchNorm keeps for its weight gradient, decided by the session.

    Either a stored form of its input ``x`` (``from_output=False``), or, when
    a ReLU-like op (zero gradient wherever it changes its input) consumes the
    norm's output ``y``, the stored form of that op's output ``r``: wherever
    the gradient reaching the norm is not zero, ``r == y``, so
    ``xhat = (r - bias) / weight`` there, and the weight gradient
    ``sum(grad * xhat)`` is the same. The layer after the ReLU keeps ``r``
    anyway, so the norm keeps nothing of its own (see NOTE [ Held memory ],
    Rule 3, for how one stored form serves several ops).
    """

    __slots__ = ("packed", "from_output", "raw", "hold", "__weakref__")

    def __init__(self) -> None:
        self.packed: Packed | None = None
        self.from_output = False
        self.raw: torch.Tensor | None = None
        self.hold: Any = None


class _BatchNormEvalFunction(torch.autograd.Function):
    """Batch norm with running statistics; keeps a stored form only for its weight gradient (:class:`_NormInput`)."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, eps, kept):  # type: ignore[override]
        with _no_torch_function():
            out = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        ctx.eps = eps
        ctx.save_for_backward(running_mean, running_var, weight, bias, _keep(kept))
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # type: ignore[override]
        running_mean, running_var, weight, bias, kept = ctx.saved_tensors
        kept = _kept(kept)
        shape = [1, -1] + [1] * (grad.dim() - 2)
        dims = [d for d in range(grad.dim()) if d != 1]
        grad_input = grad_weight = grad_bias = None
        with _no_torch_function():
            invstd = torch.rsqrt(running_var.to(grad.dtype) + ctx.eps)
            if ctx.needs_input_grad[0]:
                scale = invstd if weight is None else invstd * weight.to(grad.dtype)
                grad_input = grad * scale.reshape(shape)
            if ctx.needs_input_grad[3]:
                stored = kept.packed.unpack().to(grad.dtype)
                if kept.from_output:
                    beta = bias.to(grad.dtype).reshape(shape) if bias is not None else 0.0
                    xhat = (stored - beta) / weight.to(grad.dtype).reshape(shape)
                else:
                    xhat = (stored - running_mean.to(grad.dtype).reshape(shape)) * invstd.reshape(shape)
                grad_weight = (grad * xhat).sum(dims).to(weight.dtype)
            if ctx.needs_input_grad[4]:
                grad_bias = grad.sum(dims).to(weight.dtype if weight is not None else grad.dtype)
        return grad_input, None, None, grad_weight, grad_bias, None, None


#: Largest ``|bias / weight|`` for which a LayerNorm reads its normalised input back from its output:
#: ``xhat = (y - bias) / weight`` carries a rounding error of about ``(|xhat| + |bias / weight|)`` ulps.
_MAX_BIAS_OVER_WEIGHT = 8.0


class _LayerNormKept:
    """What a LayerNorm keeps besides its statistics, decided when the forward ends (see :meth:`Session.stop`).

    Vanilla autograd keeps the norm's input ``x``. When another op keeps the
    norm's output ``y`` raw anyway (the next layer's input at ``eps`` 1, or an
    input too small to decompose), the norm reads ``y``
    instead and keeps nothing of its own: ``xhat = (y - bias) / weight`` and
    ``x = xhat / rstd + mean``, exact up to rounding (apex's
    memory-efficient LayerNorm does the same). Only where every weight is
    non-zero, ``|bias / weight| <= 8`` and ``y`` is float32 or float64;
    otherwise ``x`` is kept, as vanilla keeps it.
    """

    __slots__ = ("x", "x_version", "y", "y_version", "out", "readable", "hold", "__weakref__")

    def __init__(self, x: torch.Tensor) -> None:
        self.x: torch.Tensor | None = x
        self.x_version = x._version
        self.y: torch.Tensor | None = None
        self.y_version = 0
        self.out: weakref.ref | None = None
        self.readable: torch.Tensor | None = None
        self.hold: Any = None

    def note_weights(self, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        """Whether ``xhat`` can be read back from the output within a few ulps (see the class notes), as a
        0-dim tensor: computed while the parameters are in memory (FSDP frees them after the forward), read
        (a device sync on a GPU) only where the output could serve."""
        if weight is None:
            return
        with torch.no_grad():
            ok = (weight != 0).all()
            if bias is not None:
                ok = ok & ((bias / weight).abs().max() <= _MAX_BIAS_OVER_WEIGHT)
        self.readable = ok

    def output_readable(self) -> bool:
        return self.readable is None or bool(self.readable)


def _check_version(t: torch.Tensor, version: int, what: str) -> None:
    if t._version != version:
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"{what} of shape {tuple(t.shape)} is at version {t._version}; expected version {version} instead"
        )


class _Recomputed:
    """A tensor recomputed in backward, ``fn(*inputs)``, from tensors other ops keep anyway (a :class:`Packed`
    result of no bytes of its own); an in-place change of an input since raises, as autograd would."""

    nbytes = 0
    rank = None

    def __init__(self, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> None:
        self.fn = fn
        self.inputs = tuple(t.detach() for t in inputs)  # aliases: the same data and version counter, no graph
        self.versions = tuple(t._version for t in inputs)

    def to_tensor(self) -> torch.Tensor:
        for t, version in zip(self.inputs, self.versions):
            _check_version(t, version, "an input of a recomputed layer input")
        with torch.no_grad(), _no_torch_function():
            return self.fn(*self.inputs)


class _LayerNormFunction(torch.autograd.Function):
    """Layer norm keeping its statistics and, decided at the end of the forward, its input or its output (:class:`_LayerNormKept`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, shape, eps, session):  # type: ignore[override]
        with _no_torch_function():
            out, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        kept = _LayerNormKept(x)
        ctx.shape = shape
        ctx.save_for_backward(weight, bias, mean, rstd, _keep(kept))
        session.defer_layer_norm(out, kept, weight, bias)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # type: ignore[override]
        weight, bias, mean, rstd, token = ctx.saved_tensors
        kept = _kept(token)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]
        with _no_torch_function():
            if kept.y is not None:
                _check_version(kept.y, kept.y_version, "a LayerNorm's output, kept for its backward,")
                y = kept.y
                xhat = y if bias is None else y - bias
                xhat = xhat if weight is None else xhat / weight
                x = xhat / rstd + mean
            else:
                _check_version(kept.x, kept.x_version, "a LayerNorm's saved input")
                x = kept.x
            gi, gw, gb = torch.ops.aten.native_layer_norm_backward(grad.contiguous(), x, ctx.shape, mean, rstd, weight, bias, mask)
        return gi, gw, gb, None, None, None


class _NormRebuildFunction(torch.autograd.Function):
    """A training-mode normalisation keeping its input's decomposition and statistics; backward rebuilds the input."""

    @staticmethod
    def forward(ctx, x, weight, bias, forward_fn, backward_fn, store):  # type: ignore[override]
        with _no_torch_function():
            out, *stats = forward_fn(x, weight, bias)
            packed = store(x)
        ctx.backward_fn = backward_fn
        ctx.save_for_backward(weight, bias, _keep(packed), *stats)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # type: ignore[override]
        weight, bias, kept, *stats = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]
        with _no_torch_function():
            x = _kept(kept).unpack().to(grad.dtype)
            gi, gw, gb = ctx.backward_fn(grad.contiguous(), x, weight, bias, stats, mask)
        return gi, gw, gb, None, None, None


# -- elementwise chains, recomputed -------------------------------------------------------------


class _RecomputeFunction(torch.autograd.Function):
    """``fn(*inputs)`` keeping only its inputs; backward runs ``fn`` again on them and differentiates that.

    Exact: backward differentiates the very same ops on the very same inputs,
    with the random-number generator of ``inputs[0]``'s device restored to
    its state at the forward when ``rng`` is true (dropout draws the same
    mask). GPT-2's tanh-GELU (five elementwise ops) keeps four tensors of
    its input's size in vanilla autograd, attention with dropout its
    probabilities, their dropout mask and the dropped probabilities; here
    each keeps its inputs only.

    ``stores`` (``None``, or one storer or ``None`` per input) keeps an
    input in the method's stored form instead (``activation_inputs`` /
    ``attention_inputs="compress"``): backward then recomputes from the
    rebuilt input, and the gradients of ``fn``'s inputs, and of everything
    below, are approximate. ``category`` is where the ledger counts what
    vanilla would have kept besides the inputs.
    """

    @staticmethod
    def forward(ctx, fn, session, rng, stores, category, *inputs):  # type: ignore[override]
        device = inputs[0].device
        ctx.rng = _rng_state(device) if rng else None
        with _no_torch_function(), torch.enable_grad():
            # Run fn once with autograd on, as vanilla would, counting what it keeps; then let its graph go.
            detached = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
            own = {storage_ptr(x) for x in inputs}
            counted: dict[int, int] = {}
            alive: list[torch.Tensor] = []

            def count(t: torch.Tensor) -> None:
                ptr = storage_ptr(t)
                if ptr is not None and ptr not in own:
                    counted[ptr] = t.untyped_storage().nbytes()
                    alive.append(t)  # until fn returns, so that no freed pointer is reused by its output
                # The graph keeps nothing: it never runs backward. (Keeping t past this call would tie a tensor
                # saved by its own node into a reference cycle through its grad_fn that outlives the step.)

            with torch.autograd.graph.saved_tensors_hooks(count, lambda _: None):
                out = fn(*detached)
            out = out.detach()
            keeps_output = counted.pop(storage_ptr(out), None) is not None
            alive.clear()
        ctx.fn = fn
        ctx.stored = None
        token = _keep(None)
        if stores is None:
            ctx.save_for_backward(token, *inputs)
        else:
            with _no_torch_function():
                packed = tuple(None if store is None else store(x) for store, x in zip(stores, inputs))
            token.kept = packed
            # Inputs without a storer are saved as autograd saves them (counted by the pack hook).
            ctx.stored = tuple(p is not None for p in packed)
            ctx.save_for_backward(token, *(x for x, p in zip(inputs, packed) if p is None))
        # What vanilla keeps besides the inputs (those are counted by the pack hook), released with the token. The
        # output, if fn keeps it (SDPA does), counts as its storage: once, with whichever later op keeps it too.
        session.hold_virtual(token, category, original=sum(counted.values()))
        if keeps_output:
            session.hold_original(token, out, category)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # type: ignore[override]
        token, *saved = ctx.saved_tensors
        if ctx.stored is None:
            inputs = saved
        else:
            packed, raw = _kept(token), iter(saved)
            with _no_torch_function():
                inputs = [p.unpack().to(p.dtype) if p is not None else next(raw) for p in packed]
        device = inputs[0].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=ctx.rng is not None):
            if ctx.rng is not None:
                _set_rng_state(device, ctx.rng)
            with torch.enable_grad(), _no_torch_function():
                detached = [x.detach().requires_grad_(need) for x, need in zip(inputs, ctx.needs_input_grad[5:])]
                out = ctx.fn(*detached)
                wanted = [x for x in detached if x.requires_grad]
                grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True)) if wanted else iter(())
        return (None, None, None, None, None, *(next(grads) if x.requires_grad else None for x in detached))


class _RecomputedFactorFunction(torch.autograd.Function):
    """``act(gate) * other`` or ``act(gate) @ other`` where ``act(gate)`` was noted by the op that made it with
    ``gate`` kept anyway: the product keeps ``other`` and a reference to ``gate``, and recomputes ``act(gate)`` in
    backward. Exact, bit for bit: the recomputation runs the same ops on the same input.

    - Llama's ``SiLU(gate) * up``: vanilla keeps ``gate`` (the activation's),
      and ``act(gate)`` and ``other`` (the product's): three tensors of the
      product's size; this keeps two.
    - Eager attention's ``dropout(softmax(s)) @ v``: vanilla keeps the
      softmax's output, and the dropped probabilities and ``v``: two tensors
      of the attention's ``T x T`` size where this keeps one (``act`` redraws
      nothing: it applies the dropout's kept bits).

    With ``store`` (``activation_inputs="compress"``, where the activation
    keeps the method's form of ``gate``), the product keeps the stored forms
    of ``other`` and of ``gate`` (the activation's own, shared), and
    recomputes from the rebuilt ones: the gradients below become
    approximate, as below the activation.
    """

    @staticmethod
    def forward(ctx, activated, other, gate, act, matmul, category, session, store):  # type: ignore[override]
        with _no_torch_function():
            out = torch.matmul(activated, other) if matmul else activated * other
        ctx.act = act
        ctx.matmul = matmul
        if store is None:
            token = _keep(None)
            ctx.save_for_backward(other, gate, token)
        else:
            with _no_torch_function():
                token = _keep((store(other), store(gate)))
            ctx.save_for_backward(token)
        # Vanilla would keep act(gate) too: it counts among the originals while the product's state lives.
        session.hold_original(token, activated, category)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # type: ignore[override]
        saved = ctx.saved_tensors
        if len(saved) == 3:
            other, gate, _ = saved
        else:
            with _no_torch_function():
                other, gate = (p.unpack().to(p.dtype) for p in _kept(saved[0]))
        grad_activated = grad_other = None
        with _no_torch_function():
            if ctx.needs_input_grad[0]:
                grad_activated = torch.matmul(grad, other.mT) if ctx.matmul else grad * other
            if ctx.needs_input_grad[1]:
                activated = ctx.act(gate)
                grad_other = torch.matmul(activated.mT, grad) if ctx.matmul else grad * activated
        return grad_activated, grad_other, None, None, None, None, None, None


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def recompute(
    session: Session, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], op: str, *,
    compress: bool, rng: bool = False, exact_inputs: int = 0, rms_dims: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """``fn(*inputs)`` as :class:`_RecomputeFunction`, keeping its inputs raw or, with ``compress``, decomposed.

    ``op`` (``"activation"``, ``"attention"`` or ``"norm"``) names the ledger's
    category (``activation_inputs``/``attention_inputs``/``norm_inputs``) and, with the running
    module's name, the stored forms; the last ``exact_inputs`` inputs (an
    attention mask, a norm's weight) are always kept as they are. With
    ``rms_dims`` (an RMS norm over those dimensions), a decomposed first input
    is rebuilt with its true root mean square over them (:class:`_RowScaled`).
    """
    category = f"{op}_inputs"
    stores = None
    if compress:
        _, name, compressor = session._layer(op)
        store = session.storer(name, compressor, category, record=False)
        n = len(inputs) - exact_inputs
        stores = tuple(store if i < n else None for i in range(len(inputs)))
        if rms_dims is not None:
            stores = (_row_scaled(session, store, category, rms_dims), *stores[1:])
    elif any(sparse := _sparse_views(session, inputs)):
        copy = session.copy_storer(category)
        stores = tuple(copy if s else None for s in sparse)
    return session.call(_RecomputeFunction.apply, (fn, session, rng, stores, category, *inputs), {}, category)


class _RowScaled:
    """A stored norm input, rebuilt with the root mean square of each row (over ``dims``) set back to the true
    input's, kept as one number a row (in float32, or float64 for a float64 input).

    An RMS norm divides by its input's root mean square. Recomputed from a
    truncated rebuild, whose rows can lose most of their energy, it would
    divide by the rebuild's own, far smaller one and blow its gradient up
    (10^4-fold at ``eps`` 0.5 on a random-init Llama); with the true scale the
    error is only the rebuild's direction, as with the statistics a
    LayerNorm keeps. A row rebuilt as exactly zero stays zero.
    """

    __slots__ = ("packed", "dtype", "dims", "mean_square", "nbytes", "__weakref__")

    def __init__(self, packed: Packed, x: torch.Tensor, dims: tuple[int, ...]) -> None:
        self.packed = packed
        self.dtype = packed.dtype
        self.dims = dims
        accumulate = torch.promote_types(x.dtype, torch.float32)
        self.mean_square = x.detach().to(accumulate).square().mean(dims, keepdim=True)
        self.nbytes = self.mean_square.numel() * self.mean_square.element_size()

    def unpack(self) -> torch.Tensor:
        x = self.packed.unpack().to(self.mean_square.dtype)
        mean_square = x.square().mean(self.dims, keepdim=True)
        tiny = torch.finfo(mean_square.dtype).tiny
        scale = torch.where(mean_square > 0, (self.mean_square / mean_square.clamp_min(tiny)).sqrt(), 0.0)
        return (x * scale).to(self.dtype)


def _row_scaled(session: Session, store: Callable[[torch.Tensor], Packed], category: str, dims: tuple[int, ...]) -> Callable[[torch.Tensor], _RowScaled]:
    def row_scaled(x: torch.Tensor) -> _RowScaled:
        kept = _RowScaled(store(x), x, dims)
        session.hold_virtual(kept, category, held=kept.nbytes)  # the stored form counts itself; this, the scales
        return kept

    return row_scaled


def _whole_view_base(t: torch.Tensor) -> torch.Tensor:
    """The tensor ``t`` views, if ``t`` holds all of it in its order (a ``view``/``reshape``, as GPT-2's Conv1D
    reads ``x.view(-1, D)``); else ``t``."""
    base = t._base
    if (
        base is not None and t.numel() == base.numel() and t.storage_offset() == base.storage_offset()
        and t.is_contiguous() and base.is_contiguous()
    ):
        return base
    return t


def _sparse_views(session: Session, inputs: tuple[torch.Tensor, ...]) -> list[bool]:
    """Which ``inputs`` to keep as contiguous copies: views that use less than 2/3 of a storage no op keeps raw.

    GPT-2's query is a view into the fused ``c_attn`` output, three times
    its size; keeping the view would keep that whole storage alive (with
    ``use_cache``, the key and value are copies in the cache). Inputs of one
    call that share a storage are weighed together: three views that fill
    it are kept as they are.
    """
    ledger = session.ledger
    if ledger is None:
        return [False] * len(inputs)
    used: dict[int | None, int] = {}
    for x in inputs:
        ptr = storage_ptr(x)
        used[ptr] = used.get(ptr, 0) + x.numel() * x.element_size()
    return [
        x._base is not None and x.is_floating_point()
        and 3 * used[storage_ptr(x)] < 2 * storage_nbytes(x)
        and HeldLedger.raw_tensor(ledger.source(x)) is None
        for x in inputs
    ]


def recomputed(module: nn.Module) -> bool:
    """Whether ``module``'s forward runs as :class:`_RecomputeFunction`: a parameter-free, buffer-free,
    childless activation module of ``transformers.activations`` (an elementwise chain of one tensor)."""
    cls = type(module)
    return (
        cls.__module__ == "transformers.activations"
        and not any(True for _ in module.parameters(recurse=True))
        and not any(True for _ in module.buffers(recurse=True))
        and not any(True for _ in module.children())
    )


def recomputed_norm(module: nn.Module) -> tuple[str, ...]:
    """The parameter names of ``module`` if its forward runs as :class:`_RecomputeFunction` (else ``()``).

    That is an RMSNorm written as elementwise ops, as ``transformers``
    writes it (``LlamaRMSNorm``, ``MistralRMSNorm``, ``Qwen2RMSNorm``,
    ``GemmaRMSNorm``...: a class of a ``transformers`` module whose name ends
    with ``RMSNorm``, with parameters of its own, no buffers and no
    children). Vanilla autograd keeps its input (a float32 copy of it when
    the input is half precision), its reciprocal root mean square and the
    normalised input; recomputed, it keeps the input only.
    """
    cls = type(module)
    if not (cls.__module__.startswith("transformers.") and cls.__name__.endswith("RMSNorm")):
        return ()
    if any(True for _ in module.buffers(recurse=True)) or any(True for _ in module.children()):
        return ()
    return tuple(name for name, _ in module.named_parameters(recurse=False))


def _with_parameters(module: nn.Module, forward: Callable[..., Any], names: tuple[str, ...]) -> Callable[..., torch.Tensor]:
    """``fn(x, *params)``: ``forward(x)`` with ``module``'s parameters ``names`` read as ``params`` (the
    recomputation in backward differentiates with respect to them, not to the module's own)."""

    def fn(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        table = module._parameters
        old = [table[name] for name in names]
        for name, p in zip(names, params):
            table[name] = p
        try:
            return forward(x)
        finally:
            for name, p in zip(names, old):
                table[name] = p

    return fn


# -- the session and its mode --------------------------------------------------------------------


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


class _Frame:
    __slots__ = ("name", "module", "selected", "compressor")

    def __init__(self, name: str, module: nn.Module, selected: bool, compressor: Compressor | None) -> None:
        self.name = name
        self.module = module
        self.selected = selected
        self.compressor = compressor


def _top_saved_tensor_hooks() -> tuple[Any, Any] | None:
    """The innermost default saved-tensor hooks ``(pack, unpack)``, or None (also where torch cannot tell)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None:
        return None
    try:
        return top(False)
    except (RuntimeError, TypeError):
        return None


def other_saved_tensor_hooks_active() -> bool:
    """Whether some saved-tensor hook is active (with no session of ours running): a checkpoint recomputing, say."""
    return _top_saved_tensor_hooks() is not None


def unpack_saved(stored: Any) -> torch.Tensor:
    """The unpack hook matching :meth:`Session.pack`."""
    return stored if isinstance(stored, torch.Tensor) else stored.tensor


class _Mode(TorchFunctionMode):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if torch.compiler.is_compiling():
            raise RuntimeError(_COMPILE)
        session = self.session
        if session._pending and func not in _METADATA and getattr(func, "__name__", "") != "__get__":
            session.consumed(func, args, kwargs)
        handler = _HANDLERS.get(func)
        if handler is None or not torch.is_grad_enabled():
            return session.call(func, args, kwargs, "other")
        if not session.innermost_hooks_are_ours():
            session.warn_foreign_hooks()
            return session.call(func, args, kwargs, "other")
        return handler(session, func, args, kwargs)


class Session:
    """One policy for a run of forwards: which layers are decomposed, how, and the step's ledger.

    Not public: :func:`~tensorcomp.adapters.compress_activations` and
    :func:`~tensorcomp.adapters.convert` build one each. Between
    :meth:`start` and :meth:`stop` the session's mode sees every torch call
    on this thread, its pack hook every saved tensor, and its module hooks
    which module of ``model`` is running.
    """

    def __init__(
        self,
        compressor: Compressor,
        memory: ActivationMemory,
        *,
        model: nn.Module | None,
        selects: Callable[[str, nn.Module], bool] | None,
        min_numel: int,
        norm_inputs: str,
        masks: bool,
        activation_inputs: str = "exact",
        attention_inputs: str = "exact",
        name: str | None = None,
        root_hooks_outside: bool = False,
        saved_tensor_hooks: bool = True,
    ) -> None:
        self.compressor = compressor
        self.name = name
        # Started and stopped by the model's own forward hooks: hooks on the
        # root would be added and removed while torch runs the root's hooks.
        self.root_hooks_outside = root_hooks_outside
        # compress_activations is itself the saved-tensor hooks; other users get the session's own.
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, unpack_saved) if saved_tensor_hooks else None
        # The pack hook that is this session's (compress_activations sets its own): see innermost_hooks_are_ours.
        self.pack_fn: Any = self._saved_hooks.pack_hook if self._saved_hooks is not None else None
        self.memory = memory
        self.model = model
        self.selects = selects
        self.min_numel = min_numel
        self.norm_inputs = norm_inputs
        self.activation_inputs = activation_inputs
        self.attention_inputs = attention_inputs
        self.masks = masks
        self.ledger: HeldLedger | None = None
        self._frames: list[_Frame] = []
        self._handles: list[Any] = []
        self._patched: list[nn.Module] = []
        self._warned_foreign = False
        self._excluded: set[int] = set()
        self._counts: dict[str, int] = {}
        self._op_counts: dict[str, int] = {}
        self._pending: dict[int, tuple] = {}
        self._layer_norms: list[tuple] = []
        self._norm_outputs: dict[int, _LayerNormKept] = {}
        self._activated: dict[int, tuple] = {}
        self._category = "other"
        self._mode: _Mode | None = None
        self._cuda_start: int | None = None

    # -- lifetime ------------------------------------------------------------
    def start(self) -> None:
        if torch.compiler.is_compiling():
            raise RuntimeError(_COMPILE)
        self.ledger = HeldLedger()
        self._counts = {}
        self._op_counts = {}
        self._frames = []
        self._layer_norms = []
        self._norm_outputs = {}
        self._activated = {}
        if self.model is not None:
            self._excluded = {p for t in (*self.model.parameters(), *self.model.buffers()) if (p := storage_ptr(t))}
            for name, module in self.model.named_modules():
                if not name and self.root_hooks_outside:
                    continue
                selected = self.selects is not None and self.selects(name, module)
                own = getattr(module, "compressor", None)
                # A compressed layer's own compressor (or a stand-in with the same call).
                compressor = own if callable(own) and hasattr(own, "method") else None
                self._handles.append(module.register_forward_pre_hook(self._push(name, selected, compressor)))
                self._handles.append(module.register_forward_hook(self._pop, always_call=True))
                if "forward" not in module.__dict__ and (recomputed(module) or recomputed_norm(module)):
                    module.forward = self._recomputing(module, module.forward)
                    self._patched.append(module)
        self._cuda_start = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
            self._cuda_start = torch.cuda.memory_allocated()
        self.memory.start_step()
        _local.stack = getattr(_local, "stack", [])
        _local.stack.append(self)
        self._mode = _Mode(self)
        self._mode.__enter__()
        if self._saved_hooks is not None:
            try:
                self._saved_hooks.__enter__()
            except BaseException:
                # torch.func refuses saved-tensor hooks: leave no mode behind for the rest of the process.
                self._saved_hooks = None
                self.stop(record=False)
                raise

    def stop(self, *, record: bool = True) -> None:
        try:
            # Norm outputs nobody consumed inside the forward: keep their inputs' stored forms now.
            with _no_torch_function():
                self._resolve_all()
                self._resolve_layer_norms()
            if self._saved_hooks is not None:
                self._saved_hooks.__exit__(None, None, None)
        finally:
            # The mode leaves whatever happened above: a mode left on the stack would see every later call.
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
            self._mode = None
            stack = getattr(_local, "stack", [])
            if self in stack:
                stack.remove(self)
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for module in self._patched:
                module.__dict__.pop("forward", None)
            self._patched.clear()
            self._frames.clear()
            self._activated = {}
            self._excluded = set()
            cuda_peak = None
            peak_all = None
            if self._cuda_start is not None:
                peak_all = torch.cuda.max_memory_allocated()
                cuda_peak = peak_all - self._cuda_start
            assert self.ledger is not None
            self.memory.warm_state_bytes = int(getattr(self.compressor, "warm_state_nbytes", 0) or 0)
            if record:
                self.memory.end_step(peak_all, held=self.ledger.summary(cuda_peak))
            elif self.memory.steps and not self.memory.steps[-1]:
                self.memory.steps.pop()  # the step that never ran
            self.ledger = None

    def innermost_hooks_are_ours(self) -> bool:
        """False inside another saved-tensor hook entered within the session (a checkpointed region, ``save_on_cpu``).

        There the ops run as vanilla autograd: that hook decides what is kept
        (a checkpoint keeps nothing and recomputes the region in backward,
        without the session, so the recomputation must see the same ops).
        """
        top = _top_saved_tensor_hooks()
        return top is None or self.pack_fn is None or top[0] is self.pack_fn

    def _recomputing(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``module``'s forward for the step: a recomputed chain or norm (see :func:`recomputed`,
        :func:`recomputed_norm`) where it applies."""
        names = recomputed_norm(module)  # decided once per step, not per call
        norm = _with_parameters(module, forward, names) if names else None

        @functools.wraps(forward)
        def run(*args: Any, **kwargs: Any) -> Any:
            x = args[0] if len(args) == 1 and not kwargs else None
            if (
                not isinstance(x, torch.Tensor)
                or not x.requires_grad
                or not x.is_floating_point()
                or not torch.is_grad_enabled()
                or not self.innermost_hooks_are_ours()
            ):
                return forward(*args, **kwargs)
            if self._pending:
                self.consumed(forward, (x,), {})
            if norm is not None:
                params = tuple(getattr(module, name) for name in names)
                compress = self.norm_inputs == "compress"
                return recompute(self, norm, (x, *params), "norm", compress=compress, exact_inputs=len(params), rms_dims=(-1,))
            compress = self.activation_inputs == "compress"
            out = recompute(self, forward, (x,), "activation", compress=compress)
            self.note_activation(out, (x,), forward)  # x kept (or its stored form): a later op may recompute the output
            return out

        return run

    def warn_foreign_hooks(self) -> None:
        """Warn (once per step) that another saved-tensor hook entered inside the session decides what is kept.

        Activation checkpointing is the expected case and stays silent (its
        region keeps nothing and is recomputed); anything else, such as
        ``torch.autograd.graph.save_on_cpu`` entered inside
        ``compress_activations``, means nothing inside it is compressed.
        """
        if self._warned_foreign:
            return
        top = _top_saved_tensor_hooks()
        pack = top[0] if top is not None else None
        module = getattr(pack, "__module__", None) or ""
        if module == "torch.utils.checkpoint" or module.startswith("tensorcomp."):
            return  # a checkpoint; or another session of ours, which warns itself where it nests
        self._warned_foreign = True
        name = getattr(pack, "__qualname__", type(pack).__name__)
        warnings.warn(
            f"another saved-tensor hook ({getattr(pack, '__module__', '?')}.{name}) is active inside compress_activations: "
            "it decides what is kept for the ops run inside it, and nothing there is compressed; "
            "enter compress_activations inside it instead",
            RuntimeWarning,
            stacklevel=3,
        )

    # -- module frames ---------------------------------------------------------
    def _push(self, name: str, selected: bool, compressor: Compressor | None) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._frames.append(_Frame(name, module, selected, compressor))

        return hook

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        for i in range(len(self._frames) - 1, -1, -1):
            if self._frames[i].module is module:
                del self._frames[i]
                return

    def _layer(self, op: str) -> tuple[bool, str, Compressor]:
        """Whether the running op belongs to a selected layer, its name, and the compressor to use.

        With a model, the name is the innermost running module's, and the op
        is selected when that module or one around it is. Without one, every
        op is selected and named ``<op>_<i>`` in call order.
        """
        if self.name is not None:
            return True, self.name, self.compressor
        if self.model is None:
            index = self._op_counts.get(op, 0)
            self._op_counts[op] = index + 1
            return True, f"{op}_{index}", self.compressor
        name = self._frames[-1].name if self._frames else op
        for frame in reversed(self._frames):
            if frame.selected:
                return True, name, frame.compressor or self.compressor
        return False, name, self.compressor

    # -- evaluation-mode norm inputs, decided when their output is consumed (see _NormInput) --
    def defer_norm_input(self, out: torch.Tensor, x: torch.Tensor, kept: _NormInput, name: str, compressor: Compressor) -> None:
        """Keep ``x`` until the next op on ``out`` shows whether that op's stored output can serve instead.

        In the usual conv-BN-ReLU order that is the very next op, while ``x``
        is still in memory in vanilla autograd too; the window is not counted
        as held (what is finally kept is). Norm outputs nobody reads in the
        forward are resolved when the session stops.
        """
        kept.raw = x  # the tensor itself, not a detached alias: the ledger knows a storage by its owner (Rule 1)
        self._pending[id(out)] = (weakref.ref(out), kept, name, compressor)

    def take_pending(self, t: torch.Tensor) -> tuple | None:
        entry = self._pending.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        del self._pending[id(t)]
        return entry

    def resolve_from_output(self, entry: tuple, r: torch.Tensor) -> None:
        """The norm's output went through a ReLU-like op into ``r``: keep ``r``'s stored form, shared with the next layer."""
        _, kept, name, compressor = entry
        kept.raw = kept.hold = None  # the input is not needed: released before anything new is stored
        # Vanilla keeps the norm's input (counted already), not r: r's storage counts only if a later layer keeps it.
        kept.packed = self._store(r, name, compressor, "norm_inputs", False, False, vanilla_keeps=False)
        kept.from_output = True

    def _resolve_from_input(self, entry: tuple) -> None:
        _, kept, name, compressor = entry
        if kept.raw is not None:
            kept.packed = self._store(kept.raw, name, compressor, "norm_inputs", False, False)
        kept.raw = kept.hold = None

    def consumed(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        """Another op reads a pending norm output: the norm keeps (a stored form of) its own input."""
        if _HANDLERS.get(func) in _zero_slope_handlers():
            return  # the mask op's handler links it
        for t in (*args, *kwargs.values()):
            if isinstance(t, torch.Tensor):
                entry = self.take_pending(t)
                if entry is not None:
                    self._resolve_from_input(entry)
            elif isinstance(t, (list, tuple)):
                for u in t:
                    if isinstance(u, torch.Tensor) and (entry := self.take_pending(u)) is not None:
                        self._resolve_from_input(entry)

    # -- layer norms: input or output, decided when the forward ends (see _LayerNormKept) --
    def defer_layer_norm(self, out: torch.Tensor, kept: _LayerNormKept, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        """Keep the norm's input until the forward ends, then the input or, if another op keeps it raw, the output.

        Vanilla keeps the input for the whole step, so holding it meanwhile
        adds nothing; what is finally kept is counted when it is decided.
        """
        kept.out = weakref.ref(out) if out.dtype in (torch.float32, torch.float64) else None
        kept.y_version = out._version
        kept.note_weights(weight, bias)
        self._layer_norms.append(kept)
        if kept.out is not None:
            self._norm_outputs[id(out)] = kept

    def read_by_layer_norm(self, t: torch.Tensor) -> bool:
        """Whether ``t`` (or the tensor a view ``t`` holds whole) is the unchanged output of a LayerNorm of this
        step that keeps its input: kept raw, the norm can read its input back from it and keep nothing.

        A layer decomposing that output would hold the decomposition *and*
        make the norm keep its input, one tensor of the same size: more than
        the output alone, and approximate. (Whether the norm's weights let it
        read the output is known at the end of the forward; it is assumed
        here, as it holds for every weight that is not zero.)
        """
        out = _whole_view_base(t)
        kept = self._norm_outputs.get(id(out))
        return (
            kept is not None and kept.x is not None and kept.out is not None and kept.out() is out
            and out._version == kept.y_version
        )

    def _resolve_layer_norms(self) -> None:
        self._norm_outputs = {}
        pending, self._layer_norms = self._layer_norms, []
        ledger = self.ledger
        for kept in pending:
            if kept.x is None or ledger is None:
                continue
            out = kept.out() if kept.out is not None else None
            kept.out = None
            if (
                out is not None and out._version == kept.y_version
                and HeldLedger.raw_tensor(ledger.source(out)) is not None
                and kept.output_readable()
            ):
                # Another op keeps the output raw: read it (no new bytes), and count the input vanilla would keep.
                kept.y, kept.hold = out, ledger.hold_raw(out, "norm_inputs")
                self.hold_original(kept, kept.x, "norm_inputs")
                kept.x = None
            elif not self._not_counted(kept.x):
                kept.hold = ledger.hold_raw(kept.x, "norm_inputs")

    # -- activation outputs a product may recompute (see _RecomputedFactorFunction) --
    def note_activation(self, out: torch.Tensor, inputs: tuple[torch.Tensor, ...], fn: Callable[..., torch.Tensor]) -> None:
        """``out = fn(*inputs)`` (an activation, a dropout, a gated product), with ``inputs`` kept by the op that
        made ``out`` (or their stored forms): a later op reading ``out`` may recompute it instead of keeping it."""
        self._activated[id(out)] = (weakref.ref(out), out._version, inputs, fn)

    def activation_of(self, t: torch.Tensor, *, reshaped: bool = False) -> tuple | None:
        """``(inputs, fn)`` if ``t`` is an unchanged output noted in this step; with ``reshaped``, also if ``t``
        is a view holding all of such an output in its order (GPT-2's Conv1D reads ``x.view(-1, D)``)."""
        out = _whole_view_base(t) if reshaped and id(t) not in self._activated else t
        entry = self._activated.get(id(out))
        if entry is None or entry[0]() is not out or out._version != entry[1]:
            return None
        return entry[2], entry[3]

    def _resolve_all(self) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._resolve_from_input(entry)

    # -- counting every saved tensor -------------------------------------------------
    def call(self, func: Callable[..., Any], args: tuple, kwargs: dict, category: str) -> Any:
        """Run ``func`` as vanilla autograd would, its saved tensors counted under ``category``."""
        previous, self._category = self._category, category
        try:
            return func(*args, **kwargs)
        finally:
            self._category = previous

    def pack(self, t: torch.Tensor) -> Any:
        """The pack hook: count ``t`` (Rule 5 of NOTE [ Held memory ] says what is not counted)."""
        if self.ledger is None or self._not_counted(t):
            return t
        return self.ledger.hold_raw(t, self._category)

    def _not_counted(self, t: torch.Tensor) -> bool:
        if isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad):
            return True
        base = t._base
        if base is not None and (isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad)):
            return True
        ptr = storage_ptr(t)
        return ptr is not None and ptr in self._excluded

    def hold_compact(self, holder: Any, nbytes: int, category: str, source: torch.Tensor, *, vanilla_keeps: bool = True) -> None:
        if self.ledger is not None:
            self.ledger.hold_compact(holder, nbytes, category, source, vanilla_keeps=vanilla_keeps)

    def hold_virtual(self, holder: Any, category: str, *, held: int = 0, original: int = 0) -> None:
        if self.ledger is not None:
            self.ledger.hold_virtual(holder, category, held=held, original=original)

    def hold_original(self, holder: Any, t: torch.Tensor, category: str, nbytes: int | None = None) -> None:
        if self.ledger is not None and not self._not_counted(t):
            self.ledger.hold_original(holder, t, category, nbytes)

    # -- the one place that decides what a layer input keeps --------------------------
    def storer(self, name: str, compressor: Compressor, category: str, *, matrix_view: bool = False, record: bool = True) -> Callable[[torch.Tensor], Packed]:
        """A function storing one input of the layer ``name``: decomposed, reused, or raw."""

        def store(x: torch.Tensor) -> Packed:
            return self._store(x, name, compressor, category, matrix_view, record)

        def original(x: torch.Tensor, holder: Any) -> None:
            # Nothing of x is kept (a frozen weight needs none): count what vanilla would keep.
            self.hold_original(holder, x, category)

        store.original = original  # type: ignore[attr-defined]
        return store

    def _store(
        self, x: torch.Tensor, name: str, compressor: Compressor, category: str, matrix_view: bool, record: bool, vanilla_keeps: bool = True
    ) -> Packed:
        ledger = self.ledger
        # The source is looked up on the tensor itself: a detached alias is a new Python object (Rule 1).
        src = ledger.source(x) if ledger is not None else None
        original, x = x, x.detach()
        eligible = x.is_floating_point() and x.layout == torch.strided and x.dim() >= 2 and x.numel() >= max(self.min_numel, 1)
        raw = HeldLedger.raw_tensor(src) if src is not None else None
        key = (id(compressor), matrix_view, x.storage_offset(), tuple(x.shape), x.stride(), x.dtype)
        if src is not None and eligible:
            # One tensor read by several layers is stored, and recorded, once.
            cached = src.cache.get(key)
            packed = cached() if cached is not None else None
            if packed is not None:
                if vanilla_keeps and ledger is not None:
                    # This saver stands for a tensor vanilla keeps: the storage counts among the originals.
                    self.hold_original(packed, original, category)
                if record and not packed.recorded:
                    # Stored first for another op (an eval-mode norm before a ReLU): the layer's own record.
                    packed.recorded = True
                    self.memory.record(name, original_bytes=packed.original_nbytes, stored_bytes=packed.nbytes, rank=packed.rank)
                return packed
        if raw is None and category == "layer_inputs" and (found := self.activation_of(original, reshaped=True)):
            # Recomputed from what other ops keep anyway, if they keep all it needs: no bytes, exact, and cheaper
            # than a decomposition (which it makes redundant, as a raw keeper does).
            recomputed = self._recomputed_input(original, found, name, category, record and eligible)
            if recomputed is not None:
                if src is not None and eligible:
                    src.cache[key] = weakref.ref(recomputed)
                return recomputed
        if not eligible or raw is not None or (category == "layer_inputs" and self.read_by_layer_norm(original)):
            # Exact: held raw, by this saver or another one (Rule 3), or read by a LayerNorm that then keeps nothing.
            packed = Packed(x)
        else:
            index = self._counts.get(name, 0)
            self._counts[name] = index + 1
            packed = compressor(x, key=(name, index), matrix_view=matrix_view)
            if packed.result is None:
                self.memory.skipped += 1
            elif packed.nbytes >= packed.original_nbytes:
                # A decomposition as large as the tensor saves nothing: keep the tensor, exactly.
                packed = Packed(x)
        if record and eligible:
            # The layer's own record (the paper's accounting): what it stores, decomposed or raw.
            packed.recorded = True
            self.memory.record(name, original_bytes=packed.original_nbytes, stored_bytes=packed.nbytes, rank=packed.rank)
        if ledger is not None and src is not None:
            if packed.result is None:
                packed.hold = ledger.hold_raw(original, category)
                if eligible:
                    src.cache[key] = weakref.ref(packed)
            else:
                self._hold_packed(packed, original, category, vanilla_keeps)
                src.cache[key] = weakref.ref(packed)
        return packed

    def _recomputed_input(self, x: torch.Tensor, found: tuple, name: str, category: str, record: bool) -> Packed | None:
        """A layer input recomputed in backward from tensors other ops keep raw anyway (an activation's input,
        a gated product's factors): nothing of its own is kept, and the layer's gradient is exact. It takes
        the place of a decomposition, as a raw keeper does (Rule 3): no bytes, no error, and cheaper.

        GPT-2's ``c_proj`` reads the GELU chain's output, which the chain
        recomputes from its kept input; Llama's ``down_proj`` reads
        ``SiLU(gate) * up``, whose factors the product keeps. ``None`` where
        some of those tensors is not kept raw (a stored form instead).
        """
        ledger = self.ledger
        inputs, fn = found
        if ledger is None or not all(HeldLedger.raw_tensor(ledger.source(t)) is not None for t in inputs):
            return None
        packed = Packed(x, _Recomputed(fn, inputs))
        # They stay alive with it: counted as kept raw (each storage once, with the op that keeps it already).
        packed.hold = [ledger.hold_raw(t, category) for t in inputs]
        self._hold_packed(packed, x, category)  # no bytes of its own; x counts among what vanilla keeps
        if record:
            packed.recorded = True
            self.memory.record(name, original_bytes=packed.original_nbytes, stored_bytes=0, rank=None)
        return packed

    def _hold_packed(self, packed: Packed, original: torch.Tensor, category: str, vanilla_keeps: bool = True) -> None:
        """Count ``packed`` (a compact form of ``original``) until it is freed, or until another op keeps
        ``original``'s storage raw: then ``packed`` reads that tensor and drops its own (Rule 3)."""
        ledger = self.ledger
        assert ledger is not None
        src = ledger.source(original)

        def adopt(raw_tensor: torch.Tensor, ref: weakref.ref = weakref.ref(packed)) -> None:
            alive = ref()
            if alive is not None:
                alive.adopt(raw_tensor)
                ledger.release_compact(src, alive)

        ledger.hold_compact(packed, packed.nbytes, category, original, adopt=adopt, vanilla_keeps=vanilla_keeps)

    def copy_storer(self, category: str) -> Callable[[torch.Tensor], Packed]:
        """A function keeping a contiguous copy of a view (see :func:`_sparse_views`), counted as its compact form."""

        def store(x: torch.Tensor) -> Packed:
            copy = x.detach().clone(memory_format=torch.contiguous_format)
            packed = Packed(x, StoredTensor(copy, copy.device))
            if self.ledger is not None:
                self._hold_packed(packed, x, category)
            return packed

        return store


# -- handlers: from a torch call to the function that keeps the right form -----------------------


def _needs_grad(*tensors: Any) -> bool:
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


_CONV_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _conv(session: Session, func, args, kwargs):
    a = _bind(args, kwargs, _CONV_NAMES, _CONV_DEFAULTS)
    x, weight, bias = a["input"], a["weight"], a["bias"]
    if not _needs_grad(x, weight, bias) or not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return session.call(func, args, kwargs, "layer_inputs")
    selected, name, compressor = session._layer(func.__name__)
    if weight.requires_grad and not selected:
        return session.call(func, args, kwargs, "layer_inputs")
    store = session.storer(name, compressor, "layer_inputs")
    dtype = _autocast_dtype(x.device.type)
    if func is torch.conv2d and x.dim() in (3, 4) and weight.dim() == 4:
        unbatched = x.dim() == 3
        xb = x.unsqueeze(0) if unbatched else x
        try:
            pads = conv2d_padding(a["padding"], weight.shape[2:], _pair(a["dilation"]))
        except (TypeError, ValueError):
            return session.call(func, args, kwargs, "layer_inputs")
        geometry = (_pair(a["stride"]), pads, _pair(a["dilation"]), int(a["groups"]))
        with torch.autocast(x.device.type, enabled=False):
            out = _Conv2dFunction.apply(xb, weight, bias, geometry, dtype, store)
        return out.squeeze(0) if unbatched else out
    if isinstance(a["padding"], str):
        return session.call(func, args, kwargs, "layer_inputs")
    params = (a["stride"], a["padding"], a["dilation"], int(a["groups"]))
    if x.dim() != weight.dim():
        return session.call(func, args, kwargs, "layer_inputs")
    with torch.autocast(x.device.type, enabled=False):
        return _ConvNdFunction.apply(x, weight, bias, func, params, dtype, store)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1])) if len(v) in (1, 2) else tuple(int(a) for a in v)  # type: ignore[return-value]
    return (int(v), int(v))


def _linear(session: Session, func, args, kwargs):
    a = _bind(args, kwargs, ("input", "weight", "bias"), {"bias": None})
    x, weight, bias = a["input"], a["weight"], a["bias"]
    if not _needs_grad(x, weight, bias) or not x.is_floating_point() or x.dim() < 1:
        return session.call(func, args, kwargs, "layer_inputs")
    selected, name, compressor = session._layer("linear")
    if weight.requires_grad and not selected:
        return session.call(func, args, kwargs, "layer_inputs")
    matrix_view = compressor.info.linear_view == "tokens"
    store = session.storer(name, compressor, "layer_inputs", matrix_view=matrix_view)
    dtype = _autocast_dtype(x.device.type)
    with torch.autocast(x.device.type, enabled=False):
        return _LinearFunction.apply(x, weight, bias, dtype, store)


def _addmm(session: Session, func, args, kwargs):
    """``addmm(bias, x, W)``, the layer of ``transformers``' Conv1D (GPT-2), as ``linear(x, W.t(), bias)``."""
    a = _bind(args, kwargs, ("input", "mat1", "mat2"), {})
    bias, x, w = a["input"], a["mat1"], a["mat2"]
    plain = (
        set(kwargs) <= {"input", "mat1", "mat2"}
        and len(args) <= 3
        and all(isinstance(t, torch.Tensor) for t in (bias, x, w))
        and x.dim() == 2
        and w.dim() == 2
        and bias.dim() == 1
        and bias.shape[0] == w.shape[1]
    )
    if not plain or not isinstance(w, nn.Parameter):
        return session.call(func, args, kwargs, "other")
    return _linear(session, F.linear, (x, w.t(), bias), {})


_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _sdpa(session: Session, func, args, kwargs):
    """Attention keeping only its query, key, value (and mask): backward recomputes it, dropout included."""
    a = _bind(args, kwargs, _SDPA_NAMES, {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False})
    q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
    if (
        not _needs_grad(q, k, v)
        or not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (q, k, v))
        or (isinstance(mask, torch.Tensor) and mask.requires_grad)
        or set(kwargs) - set(_SDPA_NAMES)
    ):
        return session.call(func, args, kwargs, "other")
    options = {"dropout_p": a["dropout_p"], "is_causal": a["is_causal"], "scale": a["scale"]}
    if a["enable_gqa"]:
        options["enable_gqa"] = True
    compress = session.attention_inputs == "compress"
    rng = a["dropout_p"] > 0
    if isinstance(mask, torch.Tensor):
        return recompute(
            session, lambda q_, k_, v_, m_: func(q_, k_, v_, attn_mask=m_, **options), (q, k, v, mask), "attention",
            compress=compress, rng=rng, exact_inputs=1,
        )
    return recompute(session, lambda q_, k_, v_: func(q_, k_, v_, attn_mask=mask, **options), (q, k, v), "attention",
                     compress=compress, rng=rng)


_MHA_NAMES = (
    "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k", "bias_v",
    "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training", "key_padding_mask", "need_weights",
    "attn_mask", "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "static_k", "static_v",
    "average_attn_weights", "is_causal",
)
_MHA_DEFAULTS = {
    "training": True, "key_padding_mask": None, "need_weights": True, "attn_mask": None, "use_separate_proj_weight": False,
    "q_proj_weight": None, "k_proj_weight": None, "v_proj_weight": None, "static_k": None, "static_v": None,
    "average_attn_weights": True, "is_causal": False,
}


def _multi_head_attention(session: Session, func, args, kwargs):
    """``nn.MultiheadAttention``'s self-attention (torchvision's ViT, ``nn.TransformerEncoderLayer``) as its parts.

    The composite runs as a whole inside the mode, which would hide its
    projections and attention from the policy: for self-attention without
    masks or attention weights it is run here op for op as
    ``F.multi_head_attention_forward`` runs it, its two projections through
    the linear rule and its ``scaled_dot_product_attention`` through the
    attention rule (exact by default). Any other configuration runs as
    vanilla autograd, counted.
    """
    a = _bind(args, kwargs, _MHA_NAMES, _MHA_DEFAULTS)
    x, w_in, b_in, w_out, b_out = a["query"], a["in_proj_weight"], a["in_proj_bias"], a["out_proj_weight"], a["out_proj_bias"]
    plain = (
        isinstance(x, torch.Tensor) and x.dim() == 3 and x.is_floating_point()
        and a["key"] is x and a["value"] is x
        and isinstance(w_in, torch.Tensor) and isinstance(w_out, torch.Tensor)
        and a["bias_k"] is None and a["bias_v"] is None and not a["add_zero_attn"]
        and a["key_padding_mask"] is None and a["attn_mask"] is None and not a["need_weights"]
        and not a["use_separate_proj_weight"] and a["static_k"] is None and a["static_v"] is None and not a["is_causal"]
        and isinstance(a["num_heads"], int) and x.shape[-1] == a["embed_dim_to_check"] and x.shape[-1] % a["num_heads"] == 0
        and not set(kwargs) - set(_MHA_NAMES)
    )
    if not plain or not _needs_grad(x, w_in, b_in, w_out, b_out):
        return session.call(func, args, kwargs, "other")
    tgt_len, bsz, embed_dim = x.shape
    heads = a["num_heads"]
    head_dim = embed_dim // heads
    proj = _linear(session, F.linear, (x, w_in, b_in), {})
    proj = proj.unflatten(-1, (3, embed_dim)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
    q, k, v = (t.view(tgt_len, bsz * heads, head_dim).transpose(0, 1).view(bsz, heads, tgt_len, head_dim) for t in proj)
    dropout_p = float(a["dropout_p"]) if a["training"] else 0.0
    out = _sdpa(session, F.scaled_dot_product_attention, (q, k, v, None, dropout_p, False), {})
    out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
    out = _linear(session, F.linear, (out, w_out, b_out), {})
    return out.view(tgt_len, bsz, out.size(1)), None


def _activation(session: Session, func, args, kwargs):
    """GELU, SiLU, Mish: vanilla keeps their input, and so does the exact policy (noting the output for a product
    that may recompute it); ``activation_inputs="compress"`` keeps the method's decomposition of the input and
    recomputes the activation from the rebuilt input in backward."""
    x = args[0] if args else kwargs.get("input")
    inplace = bool(kwargs.get("inplace")) or (len(args) > 1 and args[1] is True)
    if not isinstance(x, torch.Tensor) or not x.requires_grad or not x.is_floating_point() or inplace:
        return session.call(func, args, kwargs, "activation_inputs")
    rest, options = args[1:], {k: v for k, v in kwargs.items() if k != "input"}

    def act(x_: torch.Tensor) -> torch.Tensor:
        return func(x_, *rest, **options)

    if session.activation_inputs == "compress":
        out = recompute(session, act, (x,), "activation", compress=True)
    else:
        out = session.call(func, args, kwargs, "activation_inputs")
    session.note_activation(out, (x,), act)
    return out


def _product(session: Session, func, args, kwargs):
    """``a * b`` where one factor is an activation's output (:class:`_RecomputedFactorFunction`); else vanilla."""
    if kwargs or len(args) != 2 or not all(isinstance(t, torch.Tensor) for t in args):
        return session.call(func, args, kwargs, "other")
    a, b = args
    for activated, other in ((a, b), (b, a)):
        found = session.activation_of(activated)
        if (
            found is not None and len(found[0]) == 1 and other is not activated and activated.shape == other.shape
            and activated.dtype == other.dtype and other.is_floating_point()
        ):
            (gate,), act = found
            store = None
            if session.activation_inputs == "compress":
                # The activation stored gate in the method's form: the same storer finds that form again.
                _, name, compressor = session._layer("activation")
                store = session.storer(name, compressor, "activation_inputs", record=False)
            # a * b and b * a are the same numbers (IEEE products commute), whichever factor is the activation.
            out = session.call(
                _RecomputedFactorFunction.apply, (activated, other, gate, act, False, "activation_inputs", session, store), {}, "activation_inputs"
            )
            if store is None:
                # Both factors' sources are kept raw: the next layer may recompute the product from them.
                session.note_activation(out, (other, gate), _gated(act))
            return out
    return session.call(func, args, kwargs, "other")


def _gated(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The product of :class:`_RecomputedFactorFunction` from its kept tensors, with the ops of its forward."""

    def product(other: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return act(gate) * other

    return product


def _mask_op(
    compute_of: Callable[[dict], Callable | None], names, defaults, *, inplace_funcs=(), slope_of=None, reads_input=True, clones=True
):
    """The handler of a mask op; ``clones``: vanilla's in-place variant keeps a copy of the input (hardtanh_, clamp_, threshold_)."""

    def handler(session: Session, func, args, kwargs):
        a = _bind(args, kwargs, names, defaults)
        x = a["input"]
        if not session.masks or not isinstance(x, torch.Tensor) or not x.requires_grad or not x.is_floating_point():
            return session.call(func, args, kwargs, "masks")
        compute = compute_of(a)
        if compute is None:
            return session.call(func, args, kwargs, "masks")
        inplace = func in inplace_funcs or bool(a.get("inplace", False))
        slope = slope_of(a) if slope_of is not None else 0.0
        pending = session.take_pending(x) if slope == 0.0 else None
        box: list[BitMask] = []
        out = _MaskFunction.apply(x, compute, inplace, slope, box)
        # Counted against what vanilla's backward would keep: the output (ReLU) or the input (the others).
        bits = box[0]
        if inplace and reads_input and clones:
            # Vanilla's in-place variant keeps a copy of the input, not the output: the mask replaces that copy.
            session.hold_virtual(bits, "masks", held=bits.nbytes, original=out.numel() * out.element_size())
        else:
            # Counted against what vanilla's backward keeps: the output (ReLU, in-place LeakyReLU) or the input.
            session.hold_compact(bits, bits.nbytes, "masks", out if inplace or not reads_input else x)
        if pending is not None:
            session.resolve_from_output(pending, out)
        return out

    return handler


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _clamp_of(a):
    lo, hi = a.get("min"), a.get("max")
    if not (_number(lo) and _number(hi)) or (lo is None and hi is None):
        return None
    return _clamp_compute(lo, hi)


def _hardtanh_of(a):
    lo, hi = a["min_val"], a["max_val"]
    if not (_number(lo) and _number(hi)) or lo > hi:
        return None
    return _hardtanh_compute(lo, hi)


def _dropout(session: Session, func, args, kwargs):
    a = _bind(args, kwargs, ("input", "p", "training", "inplace"), {"p": 0.5, "training": True, "inplace": False})
    x, p = a["input"], a["p"]
    if (
        not session.masks
        or not a["training"]
        or not isinstance(x, torch.Tensor)
        or not x.requires_grad
        or not x.is_floating_point()
        or not isinstance(p, (int, float))
        or not 0.0 < p < 1.0
    ):
        return session.call(func, args, kwargs, "masks")
    box: list[BitMask] = []
    inplace = bool(a["inplace"])
    ledger = session.ledger
    # The input kept raw by the op before (a softmax keeps its output): a product may recompute this output from it.
    readable = not inplace and ledger is not None and HeldLedger.raw_tensor(ledger.source(x)) is not None
    out = _DropoutFunction.apply(x, float(p), inplace, box)
    bits = box[0]
    # Vanilla keeps its mask, not the output (counted below): the output's storage counts only where an op keeps it.
    session.hold_compact(bits, bits.nbytes, "masks", out, vanilla_keeps=False)
    # Vanilla keeps a mask of its own: bool on accelerators, the scaled float noise on the CPU.
    session.hold_original(bits, out, "masks", bits.shape.numel() * (x.element_size() if x.device.type == "cpu" else 1))
    if readable:
        session.note_activation(out, (x,), _dropped(bits, 1.0 / (1.0 - float(p))))
    return out


def _dropped(bits: BitMask, scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Dropout's output from its input and keep mask, with the ops ``native_dropout`` uses (bit for bit)."""

    def act(x: torch.Tensor) -> torch.Tensor:
        return x.mul(bits.unpack().to(device=x.device, dtype=x.dtype)).mul_(scale)

    return act


def _matmul(session: Session, func, args, kwargs):
    """``a @ b`` where ``a`` is a dropout's output over a tensor kept raw (:class:`_RecomputedFactorFunction`); else vanilla."""
    if kwargs or len(args) != 2 or not all(isinstance(t, torch.Tensor) for t in args):
        return session.call(func, args, kwargs, "other")
    a, b = args
    found = session.activation_of(a)
    if (
        found is not None and len(found[0]) == 1 and b is not a and a.dim() == b.dim() >= 3 and a.shape[:-2] == b.shape[:-2]
        and a.dtype == b.dtype and b.is_floating_point()
    ):
        (gate,), act = found
        return session.call(
            _RecomputedFactorFunction.apply, (a, b, gate, act, True, "attention_inputs", session, None), {}, "attention_inputs"
        )
    return session.call(func, args, kwargs, "other")


_POOL_NAMES = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}


def _max_pool2d(session: Session, func, args, kwargs):
    a = _bind(args, kwargs, _POOL_NAMES, _POOL_DEFAULTS)
    x = a["input"]
    if not session.masks or a["return_indices"] or not isinstance(x, torch.Tensor) or not x.requires_grad or x.dim() not in (3, 4):
        return session.call(func, args, kwargs, "masks")
    stride = a["stride"] if a["stride"] is not None else []
    return _MaxPool2dFunction.apply(x, a["kernel_size"], stride, a["padding"], a["dilation"], bool(a["ceil_mode"]), session)


_BN_NAMES = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BN_DEFAULTS = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}


def _batch_norm(session: Session, func, args, kwargs):
    a = _bind(args, kwargs, _BN_NAMES, _BN_DEFAULTS)
    x, weight, bias = a["input"], a["weight"], a["bias"]
    if not _needs_grad(x, weight, bias) or not x.is_floating_point():
        return session.call(func, args, kwargs, "norm_inputs")
    rm, rv = a["running_mean"], a["running_var"]
    _, name, compressor = session._layer("batch_norm")
    if not a["training"] and rm is not None and rv is not None:
        kept = _NormInput()
        trained = weight is not None and weight.requires_grad
        deferred = trained and session.masks and x.dim() >= 2 and bool((weight != 0).all())
        if trained and not deferred:
            kept.packed = session.storer(name, compressor, "norm_inputs", record=False)(x)
        out = _BatchNormEvalFunction.apply(x, rm, rv, weight, bias, float(a["eps"]), kept)
        if kept.packed is None:
            session.hold_original(kept, x, "norm_inputs")  # vanilla keeps the input
        if deferred:
            session.defer_norm_input(out, x, kept, name, compressor)
        return out
    if session.norm_inputs != "compress" or x.dim() < 2:
        return session.call(func, args, kwargs, "norm_inputs")
    momentum, eps = a["momentum"], float(a["eps"])
    if momentum is None:  # cumulative average: leave it to F.batch_norm's own bookkeeping
        return session.call(func, args, kwargs, "norm_inputs")
    if x.dim() == 2 and x.shape[0] == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")

    def forward_fn(x, w, b):
        return torch.native_batch_norm(x, w, b, rm, rv, True, momentum, eps)

    def backward_fn(grad, x, w, b, stats, mask):
        save_mean, save_invstd = stats
        return torch.ops.aten.native_batch_norm_backward(grad, x, w, rm, rv, save_mean, save_invstd, True, eps, mask)

    store = session.storer(name, compressor, "norm_inputs", record=False)
    return _NormRebuildFunction.apply(x, weight, bias, forward_fn, backward_fn, store)


def _layer_norm(session: Session, func, args, kwargs):
    a = _bind(args, kwargs, ("input", "normalized_shape", "weight", "bias", "eps"), {"weight": None, "bias": None, "eps": 1e-5})
    x = a["input"]
    if not _needs_grad(x, a["weight"], a["bias"]) or not x.is_floating_point() or torch.is_autocast_enabled(x.device.type):
        return session.call(func, args, kwargs, "norm_inputs")
    shape, eps = list(a["normalized_shape"]) if not isinstance(a["normalized_shape"], int) else [a["normalized_shape"]], float(a["eps"])
    if session.norm_inputs != "compress":
        return session.call(_LayerNormFunction.apply, (x, a["weight"], a["bias"], shape, eps, session), {}, "norm_inputs")
    _, name, compressor = session._layer("layer_norm")

    def forward_fn(x, w, b):
        return torch.native_layer_norm(x, shape, w, b, eps)

    def backward_fn(grad, x, w, b, stats, mask):
        mean, rstd = stats
        return torch.ops.aten.native_layer_norm_backward(grad, x, shape, mean, rstd, w, b, mask)

    store = session.storer(name, compressor, "norm_inputs", record=False)
    return _NormRebuildFunction.apply(x, a["weight"], a["bias"], forward_fn, backward_fn, store)


def _rms_norm(session: Session, func, args, kwargs):
    a = _bind(args, kwargs, ("input", "normalized_shape", "weight", "eps"), {"weight": None, "eps": None})
    x, weight = a["input"], a["weight"]
    if not _needs_grad(x, weight) or not x.is_floating_point():
        return session.call(func, args, kwargs, "norm_inputs")
    shape, eps = a["normalized_shape"], a["eps"]

    def fn(x_: torch.Tensor, *w: torch.Tensor) -> torch.Tensor:
        return func(x_, shape, *w, eps=eps)

    # Recomputed from its input (vanilla keeps the normalised input too, or the reciprocal rms on fused kernels).
    inputs = (x,) if weight is None else (x, weight)
    dims = tuple(range(-(1 if isinstance(shape, int) else len(shape)), 0))
    return recompute(
        session, fn, inputs, "norm", compress=session.norm_inputs == "compress", exact_inputs=len(inputs) - 1, rms_dims=dims
    )


def _group_norm(session: Session, func, args, kwargs):
    a = _bind(args, kwargs, ("input", "num_groups", "weight", "bias", "eps"), {"weight": None, "bias": None, "eps": 1e-5})
    x = a["input"]
    if session.norm_inputs != "compress" or not _needs_grad(x, a["weight"], a["bias"]) or not x.is_floating_point() or x.dim() < 2:
        return session.call(func, args, kwargs, "norm_inputs")
    groups, eps = int(a["num_groups"]), float(a["eps"])
    n, c = x.shape[0], x.shape[1]
    hw = x[0, 0].numel() if x.dim() > 2 else 1
    _, name, compressor = session._layer("group_norm")

    def forward_fn(x, w, b):
        return torch.native_group_norm(x.contiguous(), w, b, n, c, hw, groups, eps)

    def backward_fn(grad, x, w, b, stats, mask):
        mean, rstd = stats
        return torch.ops.aten.native_group_norm_backward(grad, x.contiguous(), mean, rstd, w, n, c, hw, groups, mask)

    store = session.storer(name, compressor, "norm_inputs", record=False)
    return _NormRebuildFunction.apply(x, a["weight"], a["bias"], forward_fn, backward_fn, store)


# Reading a tensor's metadata does not consume it.
_METADATA = frozenset(
    {torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.__len__, torch.Tensor.is_contiguous, torch.Tensor.stride}
)

_RELU = _mask_op(
    lambda a: _relu_compute, ("input", "inplace"), {"inplace": False}, inplace_funcs=(torch.relu_, torch.Tensor.relu_), reads_input=False
)
_CLAMP = _mask_op(_clamp_of, ("input", "min", "max"), {"min": None, "max": None}, inplace_funcs=(torch.clamp_, torch.Tensor.clamp_, torch.clip_, torch.Tensor.clip_))
_HARDTANH = _mask_op(_hardtanh_of, ("input", "min_val", "max_val", "inplace"), {"min_val": -1.0, "max_val": 1.0, "inplace": False}, inplace_funcs=(F.hardtanh_,))
_RELU6 = _mask_op(lambda a: _hardtanh_compute(0.0, 6.0), ("input", "inplace"), {"inplace": False})
_LEAKY = _mask_op(
    lambda a: _leaky_compute(float(a["negative_slope"])) if _number(a["negative_slope"]) and a["negative_slope"] >= 0 else None,
    ("input", "negative_slope", "inplace"),
    {"negative_slope": 0.01, "inplace": False},
    inplace_funcs=(F.leaky_relu_,),
    slope_of=lambda a: float(a["negative_slope"]),
    clones=False,  # leaky_relu_ keeps its result
)
_THRESHOLD = _mask_op(
    lambda a: _threshold_compute(a["threshold"], a["value"]) if _number(a["threshold"]) and _number(a["value"]) else None,
    ("input", "threshold", "value", "inplace"),
    {"inplace": False},
    inplace_funcs=(torch.threshold_, F.threshold_),
)

_HANDLERS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.conv1d: _conv,
    torch.conv2d: _conv,
    torch.conv3d: _conv,
    F.linear: _linear,
    torch.addmm: _addmm,
    F.scaled_dot_product_attention: _sdpa,
    F.multi_head_attention_forward: _multi_head_attention,
    F.relu: _RELU,
    torch.relu: _RELU,
    torch.relu_: _RELU,
    torch.Tensor.relu: _RELU,
    torch.Tensor.relu_: _RELU,
    torch.clamp: _CLAMP,
    torch.clamp_: _CLAMP,
    torch.clip: _CLAMP,
    torch.clip_: _CLAMP,
    torch.Tensor.clamp: _CLAMP,
    torch.Tensor.clamp_: _CLAMP,
    torch.Tensor.clip: _CLAMP,
    torch.Tensor.clip_: _CLAMP,
    F.hardtanh: _HARDTANH,
    F.hardtanh_: _HARDTANH,
    F.relu6: _RELU6,
    F.leaky_relu: _LEAKY,
    F.leaky_relu_: _LEAKY,
    F.threshold: _THRESHOLD,
    torch.threshold: _THRESHOLD,
    torch.threshold_: _THRESHOLD,
    F.threshold_: _THRESHOLD,
    F.dropout: _dropout,
    F.gelu: _activation,
    F.silu: _activation,
    F.mish: _activation,
    torch.mul: _product,
    torch.Tensor.mul: _product,
    torch.Tensor.__mul__: _product,
    torch.Tensor.__rmul__: _product,
    torch.matmul: _matmul,
    torch.Tensor.matmul: _matmul,
    torch.Tensor.__matmul__: _matmul,
    F.max_pool2d: _max_pool2d,
    F.batch_norm: _batch_norm,
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.rms_norm: _rms_norm,
}


def _zero_slope_handlers() -> tuple[Callable[..., Any], ...]:
    """Ops whose gradient is zero wherever they change their input (so an eval-mode norm before them can read their output)."""
    return (_RELU, _CLAMP, _HARDTANH, _RELU6, _THRESHOLD)
