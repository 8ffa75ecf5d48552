"""An independent count of what plain autograd holds for backward: every saved tensor, each storage once.

The adapters count what a compressed step holds themselves
(``memory_stats(model).held_bytes``). Runs that do not go through the
adapters (plain autograd, activation checkpointing) are counted here instead,
by a saved-tensor hook that keeps every tensor as it is and notes its storage.
The two counts agree on plain autograd (``benchmarks.held_memory`` checks it
against the C allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._cli import UsageError


class SavedCensus(torch.autograd.graph.saved_tensors_hooks):
    """Every tensor autograd saves while the context is active, each storage once (bytes).

    Parameters, ``model``'s buffers and leaves that require grad (and views
    of them) are left out, as the adapters' ``held_bytes`` leaves them out:
    they exist before the step and after it. Tensors kept alive by other
    means during the step (an activation-checkpointing region's inputs) are
    added with :meth:`add`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.storages: dict[int, int] = {}
        self._buffers = {b.untyped_storage().data_ptr() for b in model.buffers()}
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t

    def add(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage (once), unless it is a parameter, a buffer or a leaf that requires grad."""
        base = t._base if t._base is not None else t
        if isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad):
            return
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._buffers:
            self.storages[storage.data_ptr()] = storage.nbytes()

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


class StepCensus:
    """A :class:`SavedCensus` around every training forward of ``model``, one byte count per step.

    Installed with forward hooks on the root module (as ``convert`` installs
    its own), so the training loop is unchanged. Forwards that save nothing
    (evaluation under ``torch.no_grad``) are not steps.

    Examples
    --------
    >>> census = StepCensus(model)          # doctest: +SKIP
    >>> loss = model(x).sum(); loss.backward()  # doctest: +SKIP
    >>> census.peak_bytes                   # doctest: +SKIP
    """

    active: "StepCensus | None" = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.steps: list[int] = []
        self._open: SavedCensus | None = None
        self._handles = [
            model.register_forward_pre_hook(self._enter),
            model.register_forward_hook(self._exit, always_call=True),
        ]

    def _enter(self, module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            self._open = SavedCensus(self.model)
            self._open.__enter__()
            StepCensus.active = self

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        census, self._open = self._open, None
        if census is None:
            return
        census.__exit__(None, None, None)
        StepCensus.active = None
        if census.nbytes:
            self.steps.append(census.nbytes)

    def add(self, t: torch.Tensor) -> None:
        """Count ``t`` in the open step (a tensor held outside autograd's saved tensors)."""
        if self._open is not None:
            self._open.add(t)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    @property
    def peak_bytes(self) -> int:
        return max(self.steps, default=0)

    @property
    def mean_bytes(self) -> float:
        return sum(self.steps) / len(self.steps) if self.steps else 0.0

    @property
    def std_bytes(self) -> float:
        if not self.steps:
            return 0.0
        mean = self.mean_bytes
        return math.sqrt(sum((s - mean) ** 2 for s in self.steps) / len(self.steps))


# -- the allocator's own count ---------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def libc_in_use() -> Callable[[], int] | None:
    """glibc's bytes in use (small blocks + mmap-ed blocks), or None where glibc's mallinfo2 is missing."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


def allocator_in_use(device: torch.device) -> Callable[[], int]:
    """Bytes in use as the allocator of ``device`` sees them."""
    if device.type == "cuda":
        return lambda: int(torch.cuda.memory_allocated(device))
    in_use = libc_in_use()
    if in_use is None:
        raise UsageError("the CPU measure needs glibc's mallinfo2 (Linux, glibc >= 2.33); run on CUDA or on such a system")
    return in_use
