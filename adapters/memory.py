"""Accounting of the activation memory kept for the backward pass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ActivationMemory", "LayerRecord"]


@dataclass
class LayerRecord:
    """What one layer stored for backward during one training step.

    Attributes
    ----------
    original_bytes : int
        Bytes the uncompressed activation(s) would have taken.
    stored_bytes : int
        Bytes actually kept (the decomposition's arrays).
    ranks : list
        The rank of each stored decomposition (``None`` for uncompressed tensors).
    count : int
        Number of tensors recorded for the layer in this step.
    """

    original_bytes: int = 0
    stored_bytes: int = 0
    ranks: list[Any] = field(default_factory=list)
    count: int = 0


class ActivationMemory:
    """Per-layer, per-step record of the bytes kept for backward.

    One instance can be passed to several ``compress_activations`` contexts
    (``stats=``) to accumulate over training steps; each context, and each
    training-mode forward of a ``convert``-ed model, is one step.

    Attributes
    ----------
    steps : list of dict
        For each step, ``{layer name: LayerRecord}``.
    cuda_max_allocated : list of int
        ``torch.cuda.max_memory_allocated`` over each step, on CUDA (bytes).
    skipped : int
        Tensors stored uncompressed because they held NaN or Inf.

    Examples
    --------
    >>> from tensorcomp.adapters import ActivationMemory
    >>> mem = ActivationMemory()
    >>> mem.start_step(); mem.record("conv1", original_bytes=1000, stored_bytes=100, rank=(2, 2)); mem.end_step()
    >>> mem.start_step(); mem.record("conv1", original_bytes=1000, stored_bytes=300, rank=(4, 4)); mem.end_step()
    >>> mem.peak_bytes, mem.mean_bytes, mem.std_bytes, mem.original_bytes
    (300, 200.0, 100.0, 1000)
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, LayerRecord]] = []
        self.cuda_max_allocated: list[int] = []
        self.skipped = 0
        self._open = False

    # -- recording ---------------------------------------------------------
    def start_step(self) -> None:
        """Begin a new training step (closing an open one)."""
        self.steps.append({})
        self._open = True

    def end_step(self, cuda_max_allocated: int | None = None) -> None:
        """Close the current step, optionally with the CUDA peak allocation seen during it (bytes)."""
        if cuda_max_allocated is not None:
            self.cuda_max_allocated.append(int(cuda_max_allocated))
        self._open = False

    def record(self, layer: str, *, original_bytes: int, stored_bytes: int, rank: Any = None) -> None:
        """Add one stored tensor to ``layer``'s record of the current step."""
        if not self.steps:
            self.start_step()
        entry = self.steps[-1].setdefault(layer, LayerRecord())
        entry.original_bytes += int(original_bytes)
        entry.stored_bytes += int(stored_bytes)
        entry.ranks.append(rank)
        entry.count += 1

    def reset(self) -> None:
        """Forget every recorded step."""
        self.__init__()

    # -- summaries ---------------------------------------------------------
    def _totals(self, attr: str) -> list[int]:
        return [sum(getattr(r, attr) for r in step.values()) for step in self.steps if step]

    @property
    def num_steps(self) -> int:
        """Number of steps that recorded at least one tensor."""
        return len(self._totals("stored_bytes"))

    @property
    def peak_bytes(self) -> int:
        """Largest total stored bytes of a step (the paper's "Peak Mem"); 0 before any step."""
        return max(self._totals("stored_bytes"), default=0)

    @property
    def mean_bytes(self) -> float:
        """Mean over steps of the total stored bytes (the paper's "Mean Mem")."""
        totals = self._totals("stored_bytes")
        return sum(totals) / len(totals) if totals else 0.0

    @property
    def std_bytes(self) -> float:
        """Population standard deviation over steps of the total stored bytes."""
        totals = self._totals("stored_bytes")
        if not totals:
            return 0.0
        mean = sum(totals) / len(totals)
        return math.sqrt(sum((t - mean) ** 2 for t in totals) / len(totals))

    @property
    def original_bytes(self) -> int:
        """Largest total bytes a step would have stored without compression."""
        return max(self._totals("original_bytes"), default=0)

    @property
    def compression_ratio(self) -> float:
        """``original_bytes / peak_bytes`` (1.0 before any step)."""
        peak = self.peak_bytes
        return self.original_bytes / peak if peak else 1.0

    @property
    def per_layer(self) -> dict[str, dict[str, Any]]:
        """Per layer: ``original_bytes`` (largest), ``peak_bytes``, ``mean_bytes`` and ``ranks`` (per step)."""
        names: dict[str, None] = {}
        for step in self.steps:
            names.update(dict.fromkeys(step))
        out = {}
        for name in names:
            records = [step[name] for step in self.steps if name in step]
            stored = [r.stored_bytes for r in records]
            out[name] = {
                "original_bytes": max(r.original_bytes for r in records),
                "peak_bytes": max(stored),
                "mean_bytes": sum(stored) / len(stored),
                "ranks": [r.ranks[0] if len(r.ranks) == 1 else list(r.ranks) for r in records],
            }
        return out

    def __repr__(self) -> str:
        return (
            f"ActivationMemory(steps={self.num_steps}, peak_bytes={self.peak_bytes}, "
            f"mean_bytes={self.mean_bytes:.0f}, std_bytes={self.std_bytes:.0f}, original_bytes={self.original_bytes})"
        )
