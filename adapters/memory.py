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
    """Per-step record of the bytes kept for backward: all of them, and the layers' own.

    One instance can be passed to several ``compress_activations`` contexts
    (``stats=``) to accumulate over training steps; each context, and each
    training-mode forward of a ``convert``-ed model, is one step.

    Two accountings are kept side by side:

    - **held bytes** (``held_*``): every tensor autograd keeps for backward
      during the step, each storage once, raw or compact (decompositions,
      bit masks, narrow indices), excluding parameters and buffers. This is
      what the allocator sees between the end of forward and the start of
      backward, and what a user measures with
      ``torch.cuda.max_memory_allocated``. See :doc:`/guide/memory` for the rules.
    - **the layers' own bytes** (``peak_bytes``, ``mean_bytes``,
      ``original_bytes``, ``compression_ratio``, ``per_layer``): the inputs of
      the compressed conv and linear layers only, as stored and as they would
      be uncompressed; the accounting of the paper this toolkit compares with.

    Attributes
    ----------
    steps : list of dict
        For each step, ``{layer name: LayerRecord}`` (the layers' own bytes).
    held_steps : list of HeldStep
        For each step, the peak held bytes, the peak of what vanilla would
        hold of the same tensors, and the breakdown by what holds them at the
        end of the forward (``layer_inputs``, ``masks``, ``norm_inputs``,
        ``activation_inputs``, ``attention_inputs``, ``other``).
    cuda_max_allocated : list of int
        ``torch.cuda.max_memory_allocated`` over each step, on CUDA (bytes).
    skipped : int
        Tensors stored uncompressed because they held NaN or Inf.
    warm_state_bytes : int
        Bytes a warm-started method (``"subspace"``) keeps between steps:
        each layer's last factors, one set per input shape (not part of any
        step's held bytes; 0 for other methods).

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
        self.held_steps: list[Any] = []
        self.cuda_max_allocated: list[int] = []
        self.skipped = 0
        self.warm_state_bytes = 0

    # -- recording ---------------------------------------------------------
    def start_step(self) -> None:
        """Begin a new training step (closing an open one)."""
        self.steps.append({})

    def end_step(self, cuda_max_allocated: int | None = None, *, held: Any = None) -> None:
        """Close the current step, with the CUDA peak allocation seen during it (bytes) and its held figures."""
        if cuda_max_allocated is not None:
            self.cuda_max_allocated.append(int(cuda_max_allocated))
        if held is not None:
            self.held_steps.append(held)

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

    # -- held bytes: every saved tensor ---------------------------------------
    @property
    def held_bytes(self) -> int:
        """Peak over steps of the bytes a step holds for backward (all saved tensors, each storage once); 0 before any step."""
        return max((h.held_bytes for h in self.held_steps), default=0)

    @property
    def held_mean_bytes(self) -> float:
        """Mean over steps of the bytes a step holds for backward."""
        values = self._held_values()
        return sum(values) / len(values) if values else 0.0

    @property
    def held_std_bytes(self) -> float:
        """Population standard deviation over steps of the bytes a step holds."""
        values = self._held_values()
        if not values:
            return 0.0
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))

    def _held_values(self) -> list[int]:
        # Steps that held nothing (no gradients were needed) are not steps, as in num_steps.
        return [h.held_bytes for h in self.held_steps if h.original_bytes]

    @property
    def held_original_bytes(self) -> int:
        """Peak over steps of the same saved tensors' bytes uncompressed (what vanilla autograd keeps)."""
        return max((h.original_bytes for h in self.held_steps), default=0)

    @property
    def held_ratio(self) -> float:
        """``held_original_bytes / held_bytes`` (1.0 before any step)."""
        held = self.held_bytes
        return self.held_original_bytes / held if held else 1.0

    @property
    def held_breakdown(self) -> dict[str, dict[str, int]]:
        """At the end of the forward of the step with the largest held bytes: ``{category: {"held_bytes", "original_bytes"}}``.

        Categories: ``layer_inputs`` (conv and linear inputs), ``masks``
        (activation masks, dropout masks, pooling indices), ``norm_inputs``
        (normalisation inputs and statistics), ``activation_inputs`` (the
        inputs of GELU, SiLU, Mish and of the recomputed activation chains,
        and what vanilla keeps inside those chains), ``attention_inputs``
        (attention's query, key, value and mask, and what vanilla keeps
        besides them), ``other``.
        """
        if not self.held_steps:
            return {}
        step = max(self.held_steps, key=lambda h: h.held_bytes)
        return {c: dict(v) for c, v in step.by_category.items()}

    @property
    def cuda_step_peak_bytes(self) -> list[int]:
        """Per step on CUDA: ``max_memory_allocated`` during the step minus ``memory_allocated`` at its start."""
        return [h.cuda_peak_bytes for h in self.held_steps if h.cuda_peak_bytes is not None]

    # -- the layers' own bytes (the paper's accounting) --------------------------
    def _totals(self, attr: str) -> list[int]:
        return [sum(getattr(r, attr) for r in step.values()) for step in self.steps if step]

    @property
    def num_steps(self) -> int:
        """Number of steps that recorded at least one tensor."""
        return len(self._totals("stored_bytes"))

    @property
    def peak_bytes(self) -> int:
        """Largest total bytes the compressed layers' inputs take in a step (the layers' own, the paper's "Peak Mem"); 0 before any step."""
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
            f"ActivationMemory(steps={self.num_steps}, held_bytes={self.held_bytes}, "
            f"held_original_bytes={self.held_original_bytes}, peak_bytes={self.peak_bytes}, "
            f"mean_bytes={self.mean_bytes:.0f}, std_bytes={self.std_bytes:.0f}, original_bytes={self.original_bytes})"
        )
