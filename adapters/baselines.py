"""Baseline ways of storing activations, registered as methods next to the decompositions.

Importing :mod:`tensorcomp.adapters` registers these names in the core
catalogue (:func:`register_baselines`, called by the package's
``__init__``; this module registers nothing by itself), so
:func:`~tensorcomp.adapters.compress_activations` and
:func:`~tensorcomp.decompose` accept them like ``"hosvd"``:

``"vanilla"``
    The tensor as is (exact); the reference every other method is compared to.
``"gradfilter_r2"``, ``"gradfilter_r4"``, ``"gradfilter_r7"``
    Gradient filtering (Yang et al., CVPR 2023): the mean of each
    ``R x R`` spatial patch (:func:`patch_mean`).
``"quant8"``, ``"quant4"``, ``"quant2"``
    Per-group min/max quantization with stochastic rounding, as in ActNN and
    GACT (:func:`quantize`).
``"save_on_cpu"``
    A copy in host memory, moved back to the original device for backward
    (:func:`offload`).

Each registered function is ``fn(x, eps=..., **kwargs)`` like the core
methods; ``eps`` is accepted for a uniform interface and ignored, since none
of these methods has an energy threshold (all are registered with
``uses_eps=False``; ``"vanilla"`` and ``"save_on_cpu"`` with ``exact=True``,
``"vanilla"`` also with ``stores_input=True``). Their results have ``to_tensor()``,
``nbytes``, ``rank`` (always ``None``: these are not low-rank formats) and
``explained_variance`` (``1 - ||x - x_hat||^2 / ||x||^2``, 1.0 for an
all-zero input).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F

from tensorcomp.registry import available_methods, register

__all__ = [
    "register_baselines",
    "StoredTensor",
    "PatchMeans",
    "QuantizedTensor",
    "offload",
    "patch_mean",
    "quantize",
]


def _explained(residual_squared: float, total_squared: float) -> float:
    if total_squared <= 0.0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - residual_squared / total_squared))


def _check_finite(x: torch.Tensor, method: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"x contains NaN or Inf values; {method} needs finite input")


def _check_tensor(x: Any, method: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{method} needs a torch.Tensor; got x of type {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{method} needs a floating-point tensor; got x of dtype {x.dtype}")
    return x.detach()


# -- stored as is, on the device or on the host ------------------------------


class StoredTensor:
    """A tensor kept exactly, on its device or in host memory.

    Attributes
    ----------
    tensor : torch.Tensor
        The stored data (on ``device`` or on the CPU).
    device : torch.device
        Where :meth:`to_tensor` returns the tensor.
    nbytes : int
        Bytes stored, wherever they are (host bytes for an offloaded tensor).
    rank : None
    explained_variance : float
        Always 1.0.
    """

    rank = None
    explained_variance = 1.0

    def __init__(self, tensor: torch.Tensor, device: torch.device) -> None:
        self.tensor = tensor
        self.device = torch.device(device)
        self.nbytes = tensor.numel() * tensor.element_size()

    @property
    def shape(self) -> torch.Size:
        """Shape of the stored tensor."""
        return self.tensor.shape

    def to_tensor(self) -> torch.Tensor:
        """The stored tensor, on its original device."""
        if self.tensor.device == self.device:
            return self.tensor
        return self.tensor.to(self.device, non_blocking=self.tensor.is_pinned())

    def __repr__(self) -> str:
        return f"StoredTensor(shape={tuple(self.shape)}, on={self.tensor.device}, device={self.device}, nbytes={self.nbytes})"


def _vanilla(x: torch.Tensor, eps: float = 0.9) -> StoredTensor:
    """Store ``x`` as is (``eps`` is ignored)."""
    x = _check_tensor(x, "vanilla")
    return StoredTensor(x, x.device)


def offload(x: torch.Tensor) -> StoredTensor:
    """Copy ``x`` to host memory (pinned when CUDA is available) for later use on its device.

    A CPU tensor is kept as is (it already lives in host memory). A CUDA
    tensor is copied asynchronously into pinned memory; the copy back in
    :meth:`StoredTensor.to_tensor` is issued on the current stream, after the
    first copy.

    Parameters
    ----------
    x : torch.Tensor
        A floating-point tensor of any shape.

    Returns
    -------
    StoredTensor
        ``nbytes`` counts the host bytes; the device keeps none.

    Raises
    ------
    TypeError
        If ``x`` is not a floating-point torch tensor.

    Examples
    --------
    >>> import torch
    >>> from tensorcomp.adapters import offload
    >>> x = torch.randn(2, 3)
    >>> stored = offload(x)
    >>> stored.nbytes, torch.equal(stored.to_tensor(), x)
    (24, True)
    """
    x = _check_tensor(x, "offload")
    if x.device.type == "cpu":
        return StoredTensor(x, x.device)
    pin = torch.cuda.is_available()
    host = torch.empty(x.shape, dtype=x.dtype, layout=x.layout, pin_memory=pin)
    host.copy_(x, non_blocking=pin)
    return StoredTensor(host, x.device)


def _save_on_cpu(x: torch.Tensor, eps: float = 0.9) -> StoredTensor:
    """Offload ``x`` to host memory with :func:`offload` (``eps`` is ignored)."""
    return offload(x)


# -- gradient filtering ------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {name}={value!r}")
    return int(value)


def _patch_counts(size: int, patch: int, device: torch.device) -> torch.Tensor:
    """Number of elements of each patch along one axis (the last patch may be short)."""
    counts = torch.full((math.ceil(size / patch),), float(patch), device=device)
    counts[-1] = size - patch * (counts.numel() - 1)
    return counts


class PatchMeans:
    """An activation stored as the mean of each spatial patch (gradient filtering).

    Attributes
    ----------
    means : torch.Tensor, shape (B, C, ceil(H / R), ceil(W / R))
        The patch means, in the activation's dtype.
    patch : int
        The patch side ``R``.
    original_shape : tuple of int
        ``(B, C, H, W)``.
    nbytes : int
        Bytes of ``means``.
    rank : None
    explained_variance : float
        ``||x_hat||^2 / ||x||^2``: replacing each patch by its mean is an
        orthogonal projection, so this equals ``1 - ||x - x_hat||^2 / ||x||^2``.
    """

    rank = None

    def __init__(self, means: torch.Tensor, patch: int, original_shape: tuple[int, ...], explained_variance: float) -> None:
        self.means = means
        self.patch = patch
        self.original_shape = tuple(original_shape)
        self.explained_variance = float(explained_variance)
        self.nbytes = means.numel() * means.element_size()

    def to_tensor(self) -> torch.Tensor:
        """Every element replaced by the mean of its patch, shape ``(B, C, H, W)``."""
        height, width = self.original_shape[-2:]
        up = self.means.repeat_interleave(self.patch, dim=-2).repeat_interleave(self.patch, dim=-1)
        return up[..., :height, :width]

    def __repr__(self) -> str:
        return (
            f"PatchMeans(shape={self.original_shape}, patch={self.patch}, "
            f"explained_variance={self.explained_variance:.4f}, nbytes={self.nbytes})"
        )


def patch_mean(x: torch.Tensor, patch: int) -> PatchMeans:
    """Mean of each ``patch x patch`` spatial patch of a ``(B, C, H, W)`` activation.

    Gradient filtering (Yang et al., CVPR 2023) stores only these means, so
    the weight gradient of a convolution sees the patch-averaged activation.
    When ``H`` or ``W`` is not a multiple of ``patch`` the last patches are
    shorter (ceil mode) and hold the mean of the elements they cover.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, H, W)
        Floating-point activation, finite.
    patch : int
        Patch side ``R >= 1``.

    Returns
    -------
    PatchMeans
        ``means`` of shape ``(B, C, ceil(H / R), ceil(W / R))``;
        ``to_tensor()`` gives back a ``(B, C, H, W)`` tensor, each patch
        filled with its mean.

    Raises
    ------
    ValueError
        If ``x`` is not 4-D, ``patch`` is not a positive integer, or ``x``
        holds NaN or Inf.
    TypeError
        If ``x`` is not a floating-point torch tensor.

    Examples
    --------
    >>> import torch
    >>> from tensorcomp.adapters import patch_mean
    >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)
    >>> res = patch_mean(x, 2)
    >>> res.means
    tensor([[[[2.0000, 3.5000],
              [6.5000, 8.0000]]]])
    >>> res.to_tensor()
    tensor([[[[2.0000, 2.0000, 3.5000],
              [2.0000, 2.0000, 3.5000],
              [6.5000, 6.5000, 8.0000]]]])
    """
    x = _check_tensor(x, "patch_mean")
    patch = _check_positive_int(patch, "patch")
    if x.dim() != 4:
        raise ValueError(f"patch_mean needs a (B, C, H, W) tensor; got x of shape {tuple(x.shape)}")
    _check_finite(x, "patch_mean")
    # With no padding, avg_pool2d divides a ceil-mode edge window by the
    # number of elements it covers, which is exactly the patch mean.
    means = F.avg_pool2d(x, patch, stride=patch, ceil_mode=True)
    weights = torch.outer(_patch_counts(x.shape[2], patch, x.device), _patch_counts(x.shape[3], patch, x.device))
    wide = means.double()
    kept = float((wide.square() * weights.double()).sum())
    total = float(x.double().square().sum())
    return PatchMeans(means, patch, tuple(x.shape), _explained(total - kept, total))


class _GradientFilter:
    """Gradient filtering with ``R x R`` patches, as a picklable callable (a converted model can be saved)."""

    def __init__(self, patch: int) -> None:
        self.patch = patch
        self.__name__ = f"gradfilter_r{patch}"
        self.__doc__ = (
            f"Gradient filtering with {patch} x {patch} patches: :func:`patch_mean` of a 4-D activation; "
            "any other order is stored as is. ``eps`` is ignored."
        )

    def __call__(self, x: torch.Tensor, eps: float = 0.9) -> PatchMeans | StoredTensor:
        x = _check_tensor(x, self.__name__)
        if x.dim() != 4:
            # Gradient filtering is defined on the spatial maps of 2-D
            # convolutions; other activations (linear layers' tokens x
            # features, 1-D signals) are kept exact rather than averaged
            # along an axis whose neighbours need not be alike.
            return StoredTensor(x, x.device)
        return patch_mean(x, self.patch)


# -- quantization --------------------------------------------------------------

_SUPPORTED_BITS = (1, 2, 4, 8)
_GENERATORS: dict[torch.device, torch.Generator] = {}


def _default_generator(device: torch.device) -> torch.Generator:
    """A generator per device, private to this module, so the global RNG is never advanced."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    generator = _GENERATORS.get(device)
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(torch.initial_seed())
        _GENERATORS[device] = generator
    return generator


class QuantizedTensor:
    """A tensor stored as packed ``bits``-bit codes with a scale and offset per group.

    Element ``i`` of group ``g`` is ``offset[g] + code[i] * scale[g]``.

    Attributes
    ----------
    codes : torch.Tensor of uint8, shape (ceil(n / group_size) * group_size * bits / 8,)
        The codes, ``8 // bits`` per byte (lowest bits first).
    scale, offset : torch.Tensor of float32, shape (number of groups,)
        Per-group step and minimum.
    bits, group_size : int
    original_shape : tuple of int
    dtype : torch.dtype
        The original dtype, restored by :meth:`to_tensor`.
    nbytes : int
        Bytes of ``codes``, ``scale`` and ``offset``.
    rank : None
    explained_variance : float
        ``1 - ||x - x_hat||^2 / ||x||^2`` of this particular rounding.
    """

    rank = None

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        offset: torch.Tensor,
        *,
        bits: int,
        group_size: int,
        original_shape: tuple[int, ...],
        dtype: torch.dtype,
        explained_variance: float,
    ) -> None:
        self.codes = codes
        self.scale = scale
        self.offset = offset
        self.bits = bits
        self.group_size = group_size
        self.original_shape = tuple(original_shape)
        self.dtype = dtype
        self.explained_variance = float(explained_variance)
        self.nbytes = sum(t.numel() * t.element_size() for t in (codes, scale, offset))

    def to_tensor(self) -> torch.Tensor:
        """Dequantized tensor, in the original shape and dtype."""
        levels = _unpack_codes(self.codes, self.bits).reshape(-1, self.group_size).float()
        values = levels * self.scale[:, None] + self.offset[:, None]
        numel = math.prod(self.original_shape)
        return values.reshape(-1)[:numel].reshape(self.original_shape).to(self.dtype)

    def __repr__(self) -> str:
        return (
            f"QuantizedTensor(shape={self.original_shape}, bits={self.bits}, group_size={self.group_size}, "
            f"explained_variance={self.explained_variance:.4f}, nbytes={self.nbytes})"
        )


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2**bits) to bytes holding ``8 // bits`` codes each."""
    per_byte = 8 // bits
    codes = codes.to(torch.uint8).reshape(-1, per_byte)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (codes << shifts).sum(dim=1, dtype=torch.uint8)


def _unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    return ((packed[:, None] >> shifts) & mask).reshape(-1)


def quantize(
    x: torch.Tensor,
    bits: int,
    group_size: int = 256,
    *,
    generator: torch.Generator | None = None,
) -> QuantizedTensor:
    """Per-group min/max quantization with stochastic rounding (ActNN/GACT style).

    ``x`` is flattened and cut into groups of ``group_size`` consecutive
    elements (the last one zero-padded). In each group, with ``lo`` and
    ``hi`` its minimum and maximum and ``L = 2**bits - 1``, an element ``v``
    becomes the code ``floor((v - lo) / s + u)``, ``s = (hi - lo) / L``,
    ``u ~ U[0, 1)``: rounding up with probability equal to the fractional
    part makes the dequantized value unbiased, ``E[x_hat] = x``. A constant
    group is stored exactly.

    The noise comes from ``generator`` or from a generator private to this
    module (one per device, seeded from :func:`torch.initial_seed` when
    first used), so the global random state is never touched.

    Parameters
    ----------
    x : torch.Tensor
        Floating-point tensor of any shape, finite.
    bits : {1, 2, 4, 8}
        Bits per code; codes are packed ``8 // bits`` per byte.
    group_size : int, default 256
        Elements sharing one scale and offset; a multiple of ``8 // bits``.
    generator : torch.Generator, optional
        Source of the rounding noise, on ``x``'s device.

    Returns
    -------
    QuantizedTensor
        Stores ``ceil(n / group_size) * (group_size * bits / 8 + 8)`` bytes
        for ``n`` elements (codes plus float32 scale and offset per group).

    Raises
    ------
    ValueError
        If ``bits`` is not one of 1, 2, 4, 8, ``group_size`` is not a
        positive multiple of ``8 // bits``, or ``x`` holds NaN or Inf.
    TypeError
        If ``x`` is not a floating-point torch tensor.

    Examples
    --------
    >>> import torch
    >>> from tensorcomp.adapters import quantize
    >>> x = torch.linspace(-1, 1, 512)
    >>> q = quantize(x, bits=4)
    >>> q.nbytes  # 512 four-bit codes + 2 groups x (scale, offset) in float32
    272
    >>> bool((q.to_tensor() - x).abs().max() <= 2 / 15)
    True
    """
    x = _check_tensor(x, "quantize")
    if isinstance(bits, bool) or bits not in _SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {_SUPPORTED_BITS}; got bits={bits!r}")
    per_byte = 8 // bits
    group_size = _check_positive_int(group_size, "group_size")
    if group_size % per_byte:
        raise ValueError(f"group_size must be a multiple of {per_byte} for {bits}-bit codes; got group_size={group_size}")
    _check_finite(x, "quantize")
    if generator is None:
        generator = _default_generator(x.device)
    flat = x.reshape(-1).float()
    numel = flat.numel()
    groups = max(1, math.ceil(numel / group_size))
    padded = F.pad(flat, (0, groups * group_size - numel)).reshape(groups, group_size)
    # The padding zeros would widen the last group's range: take its range from real elements only.
    lo = padded.amin(dim=1)
    hi = padded.amax(dim=1)
    tail = numel - (groups - 1) * group_size
    if tail < group_size:
        lo[-1] = padded[-1, :tail].amin()
        hi[-1] = padded[-1, :tail].amax()
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    normalized = (padded - lo[:, None]) / safe_scale[:, None]
    noise = torch.rand(padded.shape, generator=generator, device=x.device, dtype=torch.float32)
    codes = torch.floor(normalized + noise).clamp_(0, levels)
    codes[scale == 0] = 0
    dequantized = codes * scale[:, None] + lo[:, None]
    residual = float((dequantized.reshape(-1)[:numel].double() - flat.double()).square().sum())
    total = float(flat.double().square().sum())
    return QuantizedTensor(
        _pack_codes(codes, bits),
        scale,
        lo,
        bits=bits,
        group_size=group_size,
        original_shape=tuple(x.shape),
        dtype=x.dtype,
        explained_variance=_explained(residual, total),
    )


class _Quantizer:
    """:func:`quantize` at a fixed number of bits, as a picklable callable (a converted model can be saved)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.__name__ = f"quant{bits}"
        self.__doc__ = f":func:`quantize` with {bits}-bit codes. ``eps`` is ignored."

    def __call__(self, x: torch.Tensor, eps: float = 0.9, *, group_size: int = 256, generator: torch.Generator | None = None) -> QuantizedTensor:
        return quantize(x, self.bits, group_size, generator=generator)


def _baselines() -> list[tuple[str, Any, dict[str, bool]]]:
    """Each baseline's name, function and capabilities, as :func:`tensorcomp.register` takes them."""
    fixed = {"uses_eps": False}
    exact = {"uses_eps": False, "exact": True}
    return [
        ("vanilla", _vanilla, {**exact, "stores_input": True}),
        ("save_on_cpu", _save_on_cpu, exact),
        *((f"gradfilter_r{patch}", _GradientFilter(patch), fixed) for patch in (2, 4, 7)),
        *((f"quant{bits}", _Quantizer(bits), fixed) for bits in (8, 4, 2)),
    ]


def register_baselines() -> tuple[str, ...]:
    """Register the baselines in the core catalogue, next to the decompositions.

    Called once when :mod:`tensorcomp.adapters` is imported. Calling it again
    is harmless: a name that is already registered (by an earlier call, or
    by the user before the adapters were imported) is left as it is.

    Returns
    -------
    tuple of str
        The names this call registered (empty when every baseline already was).

    Examples
    --------
    >>> import tensorcomp
    >>> from tensorcomp.adapters.baselines import register_baselines
    >>> register_baselines()  # done on import already
    ()
    >>> tensorcomp.method_info("vanilla").exact, tensorcomp.method_info("quant8").uses_eps
    (True, False)
    """
    added = []
    for name, fn, capabilities in _baselines():
        if name not in available_methods():
            register(name, fn, **capabilities)
            added.append(name)
    return tuple(added)
