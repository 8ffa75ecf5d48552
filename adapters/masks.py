"""Exact compact forms of what a backward needs only in part: bit masks and narrow indices.

A ReLU's backward needs only where its output is positive, a clamp's only
where its input was inside the range, a dropout's only which elements it
kept: one bit per element instead of four (float32) or eight (float64)
bytes. A max-pool's backward needs only the argmax within each plane, which
fits a narrower integer type than int64. Unpacking gives back exactly what
was packed, so the gradients computed from these forms are the same as
vanilla autograd's.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["BitMask", "narrow_index_dtype"]

_SHIFTS_CACHE: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    shifts = _SHIFTS_CACHE.get(device)
    if shifts is None:
        shifts = torch.arange(8, dtype=torch.uint8, device=device)
        _SHIFTS_CACHE[device] = shifts
    return shifts


def _pack_lanes(flat: torch.Tensor) -> torch.Tensor:
    """``np.packbits(..., bitorder="little")`` in torch operations, for tensors off the CPU."""
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    lanes = flat.view(-1, 8).to(torch.uint8) << _shifts(flat.device)
    return lanes.sum(1, dtype=torch.uint8)


def _unpack_lanes(bits: torch.Tensor, numel: int) -> torch.Tensor:
    lanes = (bits.unsqueeze(1) >> _shifts(bits.device)) & 1
    return lanes.reshape(-1)[:numel].to(torch.bool)


class BitMask:
    """A boolean tensor stored as one bit per element.

    Parameters
    ----------
    mask : torch.Tensor
        Boolean tensor of any shape.

    Attributes
    ----------
    bits : torch.Tensor
        ``uint8`` tensor of shape ``(ceil(numel / 8),)``; bit ``j`` of byte
        ``i`` is element ``8 * i + j`` of the flattened mask.
    shape : torch.Size
        The mask's shape.
    nbytes : int
        Bytes stored (``bits.numel()``).

    Raises
    ------
    TypeError
        If ``mask`` is not a boolean tensor.

    Examples
    --------
    >>> import torch
    >>> from tensorcomp.adapters import BitMask
    >>> m = torch.tensor([[True, False, True], [False, False, True]])
    >>> packed = BitMask(m)
    >>> packed.nbytes
    1
    >>> torch.equal(packed.unpack(), m)
    True
    """

    __slots__ = ("bits", "shape", "__weakref__")

    def __init__(self, mask: torch.Tensor) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"BitMask needs a boolean tensor; got {got}")
        self.shape = mask.shape
        flat = mask.detach().reshape(-1)
        if flat.device.type == "cpu":
            # numpy's packbits is a single pass in C, several times faster than the lane arithmetic.
            self.bits = torch.from_numpy(np.packbits(flat.contiguous().numpy(), bitorder="little"))
            return
        self.bits = _pack_lanes(flat)

    @property
    def nbytes(self) -> int:
        return self.bits.numel()

    def unpack(self) -> torch.Tensor:
        """The boolean mask, in its original shape."""
        numel = self.shape.numel()
        if self.bits.device.type == "cpu":
            flat = np.unpackbits(self.bits.numpy(), count=numel, bitorder="little")
            return torch.from_numpy(flat).view(torch.bool).reshape(self.shape)
        return _unpack_lanes(self.bits, numel).reshape(self.shape)

    def __repr__(self) -> str:
        return f"BitMask(shape={tuple(self.shape)}, nbytes={self.nbytes})"


def narrow_index_dtype(upper: int) -> torch.dtype:
    """The narrowest integer dtype holding every index in ``range(upper)``.

    Parameters
    ----------
    upper : int
        One past the largest index (e.g. ``H * W`` for max-pool indices).

    Returns
    -------
    torch.dtype
        ``torch.uint8``, ``torch.int16``, ``torch.int32`` or ``torch.int64``.

    Raises
    ------
    ValueError
        If ``upper`` is negative.

    Examples
    --------
    >>> from tensorcomp.adapters import narrow_index_dtype
    >>> narrow_index_dtype(256), narrow_index_dtype(257), narrow_index_dtype(56 * 56)
    (torch.uint8, torch.int16, torch.int16)
    """
    if upper < 0:
        raise ValueError(f"upper must be non-negative; got upper={upper}")
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if upper - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64
