"""What a training step holds for backward: every saved tensor, each storage once.

NOTE [ Held memory ]

The ledger of one step sees every tensor kept for backward inside an active
:func:`~tensorcomp.adapters.compress_activations` (or a :func:`convert`-ed
model's forward): the raw tensors autograd saves, through the saved-tensor
pack hook, and the compact forms the policy's own autograd functions keep
(decompositions, bit masks, narrow indices), registered by those functions.

Rule 1. Identity. A *source* is one storage at one version: the storage's
        address, the version counter of the tensor that reaches the ledger,
        and a weak reference to the tensor that owns the storage (the view's
        ``_base``, or the tensor itself). The weak reference tells a live
        storage from freed memory that another tensor reuses at the same
        address: when the owner is gone, the address starts a new source.
        An in-place change bumps the version, so the changed tensor is a new
        source and nothing cached for the old contents is ever reused for it.
Rule 2. Bytes. A source held raw by at least one saver costs its storage's
        bytes, once, however many savers keep it. A source held only in
        compact forms costs the sum of those forms. The original bytes (what
        vanilla autograd would keep) are each storage's bytes, once, whatever
        the versions of it that are held.
Rule 3. Raw wins. When a saver keeps a source raw, the compact forms of the
        same source that can use the raw tensor instead (a layer input's
        decomposition) drop their arrays and read the raw tensor: they were
        redundant, and the gradient they give becomes exact. A layer input
        asked for after the source is held raw is not decomposed at all.
        The raw tensor read this way is checked against its version at
        backward, as autograd checks its own saved tensors.
Rule 4. Lifetime. Each holding is released when the object that holds it
        (the pack hook's record, the compact form) is freed: when backward
        has used it, or when the graph is dropped. The step's figures are
        the peaks during the step of the live held total and of the live
        original total; the breakdown by category is taken at the end of the
        forward, when the session stops.
Rule 5. Not counted: parameters and buffers (they exist before the step and
        after it), leaves one asks gradients for (the network input), and
        views of either. Everything else saved is counted, including casts of
        parameters made in the step (autocast's copies).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CATEGORIES", "HeldLedger", "HeldStep"]  # HeldStep is public, through tensorcomp.adapters

CATEGORIES = ("layer_inputs", "masks", "norm_inputs", "activation_inputs", "attention_inputs", "other")
"""What holds the bytes: the inputs of conv/linear layers (decomposed or raw),
activation masks and pooling indices, normalisation inputs, the inputs of
GELU/SiLU/Mish and of the recomputed activation chains, the query, key, value
and mask of attention, anything else."""


def storage_nbytes(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().nbytes())
    except RuntimeError:  # tensors without storage
        return t.numel() * t.element_size()


def storage_ptr(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:
        return None


def _owner(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


class _Source:
    """One storage at one version (Rule 1), and who holds it."""

    __slots__ = ("owner", "original", "raw", "raw_category", "raw_tensor", "compact", "adopters", "cache", "storage")

    def __init__(self, owner: torch.Tensor, original: int, storage: _Storage) -> None:
        self.owner = weakref.ref(owner)
        self.original = original
        self.storage = storage
        self.raw = 0
        self.raw_category = "other"
        self.raw_tensor: weakref.ref | None = None
        self.compact: dict[int, tuple[int, str]] = {}
        # Compact forms that can switch to the raw tensor (Rule 3): id -> callback(raw tensor).
        self.adopters: dict[int, Callable[[torch.Tensor], None]] = {}
        # Compact forms reusable by later savers of the same view: key -> weakref.
        self.cache: dict[Any, weakref.ref] = {}

    def held(self) -> dict[str, int]:
        if self.raw:
            return {self.raw_category: self.original}
        out: dict[str, int] = {}
        for nbytes, category, _ in self.compact.values():
            out[category] = out.get(category, 0) + nbytes
        return out

    def alive(self) -> bool:
        return bool(self.raw or self.compact)

    def vanilla_keeps(self) -> bool:
        """Whether what is held stands for a tensor vanilla autograd would keep (its original counts)."""
        return bool(self.raw) or any(counts for _, _, counts in self.compact.values())

    def category(self) -> str:
        if self.raw:
            return self.raw_category
        return next(c for _, c, counts in self.compact.values() if counts)


class _Storage:
    """One storage, whatever its version: its original bytes count once while any of its sources is held (Rule 2)."""

    __slots__ = ("owner", "nbytes", "alive", "category")

    def __init__(self, owner: torch.Tensor, nbytes: int) -> None:
        self.owner = weakref.ref(owner)
        self.nbytes = nbytes
        self.alive = 0
        self.category = "other"


class _RawHold:
    """What the pack hook returns for a counted tensor; releases its holding when freed (Rule 4)."""

    __slots__ = ("tensor", "_release")

    def __init__(self, tensor: torch.Tensor, release: Callable[[], None]) -> None:
        self.tensor = tensor
        self._release = release

    def __del__(self) -> None:
        release = getattr(self, "_release", None)  # absent where a tracer copied the object without __init__
        if release is not None:
            release()


class HeldStep:
    """The figures of one step: peak held bytes, their originals, by category.

    Attributes
    ----------
    held_bytes : int
        Peak over the step of the bytes held for backward.
    original_bytes : int
        Peak over the step of what vanilla autograd would hold of the same tensors.
    by_category : dict
        ``{category: {"held_bytes": int, "original_bytes": int}}`` at the end of the forward.
    cuda_peak_bytes : int or None
        On CUDA, ``torch.cuda.max_memory_allocated()`` over the step minus
        ``torch.cuda.memory_allocated()`` at its start.
    """

    __slots__ = ("held_bytes", "original_bytes", "by_category", "cuda_peak_bytes")

    def __init__(self, held_bytes: int, original_bytes: int, by_category: dict[str, dict[str, int]], cuda_peak_bytes: int | None = None) -> None:
        self.held_bytes = held_bytes
        self.original_bytes = original_bytes
        self.by_category = by_category
        self.cuda_peak_bytes = cuda_peak_bytes

    def __repr__(self) -> str:
        return f"HeldStep(held_bytes={self.held_bytes}, original_bytes={self.original_bytes})"


class HeldLedger:
    """Live accounting of one step's held memory (see NOTE [ Held memory ])."""

    def __init__(self) -> None:
        self._sources: dict[tuple[int, int], _Source] = {}
        self._storages: dict[int, _Storage] = {}
        self._held = dict.fromkeys(CATEGORIES, 0)
        self._original = dict.fromkeys(CATEGORIES, 0)
        self._total = 0
        self._peak_total = 0
        self._peak_original_total = 0
        self._originals_made = 0

    # -- identity (Rule 1) ---------------------------------------------------
    def source(self, t: torch.Tensor) -> _Source:
        """The source of ``t``'s storage at its current version, made if new."""
        owner = _owner(t)
        ptr = storage_ptr(t) or id(owner)
        key = (ptr, t._version)
        src = self._sources.get(key)
        if src is not None and src.owner() is owner:
            return src
        if src is not None and src.alive():
            # Memory reused while the earlier source is still held in compact form only:
            # the earlier one lives on under a private key.
            self._sources[(id(src), -1)] = src
        storage = self._storages.get(ptr)
        if storage is None or storage.owner() is not owner:
            storage = _Storage(owner, storage_nbytes(t))
            self._storages[ptr] = storage
        src = _Source(owner, storage.nbytes, storage)
        self._sources[key] = src
        return src

    # -- bookkeeping (Rules 2 and 4) -----------------------------------------
    def _change(self, src: _Source, update: Callable[[], None]) -> None:
        before = src.held()
        was_counted = src.vanilla_keeps()
        update()
        after = src.held()
        for category, nbytes in before.items():
            self._held[category] -= nbytes
            self._total -= nbytes
        for category, nbytes in after.items():
            self._held[category] += nbytes
            self._total += nbytes
        # The original bytes count once per storage, in the category of its first holder.
        storage = src.storage
        counted = src.vanilla_keeps()
        if counted and not was_counted:
            storage.alive += 1
            if storage.alive == 1:
                storage.category = src.category()
                self._original[storage.category] += storage.nbytes
        elif was_counted and not counted:
            storage.alive -= 1
            if storage.alive == 0:
                self._original[storage.category] -= storage.nbytes
        if not src.alive():
            self._forget(src)
        self._note_peak()

    def _forget(self, src: _Source) -> None:
        for key, value in list(self._sources.items()):
            if value is src:
                del self._sources[key]

    def hold_raw(self, t: torch.Tensor, category: str) -> _RawHold:
        """Count ``t`` as kept raw; the returned record releases it when freed (Rules 2-4)."""
        src = self.source(t)

        def add() -> None:
            if not src.raw:
                src.raw_category = category
            src.raw += 1
            if src.raw_tensor is None:
                src.raw_tensor = weakref.ref(t)

        self._change(src, add)
        if src.adopters:
            adopters, src.adopters = src.adopters, {}
            for adopt in adopters.values():
                adopt(t)

        def release() -> None:
            self._change(src, lambda: setattr(src, "raw", src.raw - 1))

        return _RawHold(t, release)

    def hold_compact(
        self,
        holder: Any,
        nbytes: int,
        category: str,
        source: torch.Tensor,
        adopt: Callable[[torch.Tensor], None] | None = None,
        *,
        vanilla_keeps: bool = True,
    ) -> _Source:
        """Count ``nbytes`` held by ``holder`` (a compact form of ``source``) until ``holder`` is freed.

        ``adopt``, if given, is called with the raw tensor when a saver later
        keeps the source raw (Rule 3); the compact bytes are released then.
        ``vanilla_keeps=False`` for a form of a tensor vanilla would not keep
        (what it replaces is counted elsewhere): the source's storage then
        counts among the originals only if another holder stands for it.
        """
        src = self.source(source)
        ident = id(holder)

        def add() -> None:
            src.compact[ident] = (int(nbytes), category, vanilla_keeps)
            if adopt is not None:
                src.adopters[ident] = adopt

        self._change(src, add)

        def release() -> None:
            if ident in src.compact:
                self._change(src, lambda: (src.compact.pop(ident, None), src.adopters.pop(ident, None)))

        weakref.finalize(holder, release)
        return src

    def hold_original(self, holder: Any, t: torch.Tensor, category: str, nbytes: int | None = None) -> None:
        """Count what vanilla would keep of ``t`` where ``holder`` keeps nothing of it (or an unrelated form).

        With ``nbytes=None``, ``t``'s storage counts once among the originals
        while ``holder`` lives (a frozen layer's input, an evaluation-mode
        norm's input); with ``nbytes``, that many bytes count (a tensor
        vanilla would make, such as max-pool's int64 indices). No held bytes
        are added.
        """
        if nbytes is not None:
            self.hold_virtual(holder, category, original=nbytes)
            return
        src = self.source(t)
        self._originals_made += 1
        ident = ("original", id(holder), self._originals_made)  # never the key of the holder's own compact bytes
        self._change(src, lambda: src.compact.__setitem__(ident, (0, category, True)))

        def release() -> None:
            if ident in src.compact:
                self._change(src, lambda: src.compact.pop(ident, None))

        weakref.finalize(holder, release)

    def hold_virtual(self, holder: Any, category: str, *, held: int = 0, original: int = 0) -> None:
        """Count ``held`` bytes kept and ``original`` bytes vanilla would keep, tied to no storage, while ``holder`` lives.

        For a compact form of a tensor vanilla would make itself (the copy of
        the input an in-place ``hardtanh_`` keeps, max-pool's int64 indices).
        """

        def add(sign: int) -> None:
            self._held[category] += sign * int(held)
            self._total += sign * int(held)
            self._original[category] += sign * int(original)
            self._note_peak()

        add(1)
        weakref.finalize(holder, add, -1)

    def _note_peak(self) -> None:
        self._peak_total = max(self._peak_total, self._total)
        self._peak_original_total = max(self._peak_original_total, sum(self._original.values()))

    def release_compact(self, src: _Source, holder: Any) -> None:
        """Drop ``holder``'s compact bytes now (it switched to the raw tensor)."""
        ident = id(holder)
        if ident in src.compact:
            self._change(src, lambda: (src.compact.pop(ident, None), src.adopters.pop(ident, None)))

    @staticmethod
    def raw_tensor(src: _Source) -> torch.Tensor | None:
        """A raw saved tensor of the source, if a saver keeps one (Rule 3)."""
        if not src.raw or src.raw_tensor is None:
            return None
        return src.raw_tensor()

    # -- figures ---------------------------------------------------------------
    @property
    def current_bytes(self) -> int:
        return self._total

    def summary(self, cuda_peak_bytes: int | None = None) -> HeldStep:
        by_category = {
            c: {"held_bytes": self._held[c], "original_bytes": self._original[c]} for c in CATEGORIES
        }
        return HeldStep(self._peak_total, self._peak_original_total, by_category, cuda_peak_bytes)
