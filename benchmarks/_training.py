"""One training loop for every method: seeded data order, SGD with cosine decay, clipping, timing."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._data import DeviceImages, cache_dir


@dataclass
class Schedule:
    """Optimizer and schedule of a training run (the paper's fine-tuning defaults).

    SGD with ``momentum`` and ``weight_decay``, learning rate ``lr`` decayed
    to 0 by a cosine over all steps, gradients clipped to L2 norm ``clip``.
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 1e-4
    clip: float = 2.0
    seed: int = 0
    flip: bool = False


@dataclass
class TrainLog:
    """What a training run measured: per-step forward/backward milliseconds and losses.

    ``cuda_peak_bytes``: per step on CUDA, ``torch.cuda.max_memory_allocated``
    during forward and backward minus ``torch.cuda.memory_allocated`` at the
    step's start (bytes).
    """

    forward_ms: list[float] = field(default_factory=list)
    backward_ms: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    cuda_peak_bytes: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @staticmethod
    def _median(values: Sequence[float]) -> float:
        return float(np.median(values)) if len(values) else float("nan")

    @property
    def forward_median_ms(self) -> float:
        return self._median(self.forward_ms)

    @property
    def backward_median_ms(self) -> float:
        return self._median(self.backward_ms)


def batches(num: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded permutation of ``range(num)`` cut into batches; a last partial batch is dropped
    when there is at least one full batch, so that every step stores activations of one size."""
    order = torch.randperm(num, generator=generator)
    full = num // batch_size
    if full == 0:
        return [order]
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(full)]


class Stopwatch:
    """Milliseconds between readings, the device's queued work finished before each reading.

    CUDA kernels run asynchronously: read alone, ``time.perf_counter`` would
    time their launch. :meth:`start` (re)starts the watch, :meth:`lap`
    returns the milliseconds since the last ``start`` or ``lap``; both first
    synchronise ``device`` when it is a CUDA device (on a CPU, nothing).

    Examples
    --------
    >>> watch = Stopwatch("cpu")
    >>> watch.start()
    >>> forward_ms = watch.lap()   # after the forward
    >>> backward_ms = watch.lap()  # after the backward
    """

    def __init__(self, device: Any) -> None:
        self.device = torch.device(device)
        self._last = time.perf_counter()

    def sync(self) -> None:
        """Wait for the work queued on the device (CUDA only)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self.sync()
        self._last = time.perf_counter()

    def lap(self) -> float:
        self.sync()
        now = time.perf_counter()
        elapsed, self._last = (now - self._last) * 1e3, now
        return elapsed


def train(
    model: nn.Module,
    data: DeviceImages,
    schedule: Schedule,
    parameters: Sequence[nn.Parameter],
    *,
    set_train_mode: Callable[[], None] | None = None,
    progress: str | None = None,
) -> TrainLog:
    """Train ``parameters`` of ``model`` on ``data`` with ``schedule``; time each forward and backward.

    The data order depends only on ``schedule.seed``, so runs with different
    methods see the same batches in the same order. ``set_train_mode``
    replaces ``model.train()`` (e.g. to keep frozen normalisation layers in
    evaluation mode).
    """
    device = data.device
    generator = torch.Generator().manual_seed(schedule.seed)
    steps_per_epoch = len(batches(len(data), schedule.batch_size, torch.Generator().manual_seed(0)))
    total_steps = max(1, schedule.epochs * steps_per_epoch)
    optimizer = torch.optim.SGD(parameters, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps)))
    log = TrainLog()
    watch = Stopwatch(device)
    (set_train_mode or model.train)()
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=progress, leave=False, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    for _ in range(schedule.epochs):
        for index in batches(len(data), schedule.batch_size, generator):
            flip = torch.rand(len(index), generator=generator) < 0.5 if schedule.flip else None
            x, y = data.batch(index, flip=flip)
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                at_start = torch.cuda.memory_allocated(device)
            watch.start()
            loss = F.cross_entropy(model(x), y)
            log.forward_ms.append(watch.lap())
            loss.backward()
            log.backward_ms.append(watch.lap())
            if device.type == "cuda":
                log.cuda_peak_bytes.append(int(torch.cuda.max_memory_allocated(device)) - at_start)
            if schedule.clip:
                torch.nn.utils.clip_grad_norm_(parameters, schedule.clip)
            optimizer.step()
            scheduler.step()
            log.losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{log.losses[-1]:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    log.seconds = time.perf_counter() - start
    return log


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceImages, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of ``model`` in evaluation mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x, y = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return 100.0 * correct / max(1, len(data))


def pretrained_state(
    build: Callable[[], nn.Module],
    data: DeviceImages,
    schedule: Schedule,
    key: dict[str, Any],
    *,
    use_cache: bool = True,
    progress: str | None = "pretrain",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights of ``build()`` trained on ``data`` with every layer trainable, cached on disk.

    The checkpoint lives under ``cache_dir()/checkpoints/`` and is named after
    ``key`` (model, dataset, image size, epochs, seed, data fingerprint, ...)
    and the schedule, so a later run with the same settings reuses it.

    Returns
    -------
    state : dict
        The model's ``state_dict`` (on the CPU).
    info : dict
        ``path`` of the checkpoint, ``cached`` (whether it was reused) and the
        pretraining ``seconds``.
    """
    full_key = dict(key, schedule=asdict(schedule))
    digest = hashlib.sha1(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    readable = "-".join(str(key[k]) for k in ("model", "dataset", "image_size") if k in key)
    path = cache_dir() / "checkpoints" / f"{readable}-e{schedule.epochs}-s{schedule.seed}-{digest}.pt"
    if use_cache and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state, {"path": str(path), "cached": True, "seconds": 0.0}
    model = build().to(data.device)
    params = [p for p in model.parameters() if p.requires_grad]
    log = train(model, data, schedule, params, progress=progress)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.tmp")
        torch.save(state, partial)
        os.replace(partial, path)
    return state, {"path": str(path), "cached": False, "seconds": round(log.seconds, 2)}


@dataclass
class SetupB:
    """The paper's setup B, ready to fine-tune: pretrained weights, the second half, the test set.

    Attributes
    ----------
    build : callable
        Returns a fresh (randomly initialised) model of the chosen architecture.
    state : dict
        Weights after pretraining on the first half.
    finetune, test : DeviceImages
        The second half of the training set and the test set, on the device.
    info : dict
        Sizes of the halves, class histograms, pretraining checkpoint and
        accuracy, normalisation statistics: the run's metadata.
    """

    build: Callable[[], nn.Module]
    state: dict[str, torch.Tensor]
    finetune: DeviceImages
    test: DeviceImages
    info: dict[str, Any]

    def pretrained_model(self) -> nn.Module:
        model = self.build()
        model.load_state_dict(self.state)
        return model.to(self.finetune.device)


def setup_b(
    images: Any,
    model_name: str,
    *,
    image_size: int,
    pretrain_epochs: int,
    batch_size: int,
    seed: int,
    device: Any,
    use_cache: bool = True,
    progress: bool = True,
) -> SetupB:
    """Split ``images`` (an :class:`~benchmarks._data.ImageSet`) into non-iid halves, pretrain on the first.

    Pretraining trains every layer from random initialisation with SGD
    (``lr`` 0.05, momentum 0.9, weight decay 5e-4, cosine decay, clipping at
    2.0), ``pretrain_epochs`` epochs; the checkpoint is cached (see
    :func:`pretrained_state`).
    """
    from ._data import channel_stats, split_non_iid
    from ._models import build_model

    device = torch.device(device)
    first, second = split_non_iid(images.train_labels, seed=seed)
    mean, std = channel_stats(images.train_images)
    _, channels = build_model(model_name, images.channels, images.num_classes, seed, image_size=image_size)

    def build() -> nn.Module:
        return build_model(model_name, images.channels, images.num_classes, seed, image_size=image_size)[0]

    def on_device(index: np.ndarray | None, test: bool = False) -> DeviceImages:
        source_x = images.test_images if test else images.train_images[index]
        source_y = images.test_labels if test else images.train_labels[index]
        return DeviceImages(source_x, source_y, image_size, mean, std, device, channels)

    flip = images.name != "digits"  # mirrored digits are other symbols
    pre_schedule = Schedule(
        epochs=pretrain_epochs, batch_size=batch_size, lr=0.05, momentum=0.9, weight_decay=5e-4, clip=2.0, seed=seed, flip=flip
    )
    pre_data = on_device(first)
    key = {
        "model": model_name,
        "dataset": images.name,
        "image_size": image_size,
        "data": images.fingerprint(),
        "split": "non-iid 0.2..0.8",
        "torch": torch.__version__.split("+")[0],
    }
    state, checkpoint = pretrained_state(
        build, pre_data, pre_schedule, key, use_cache=use_cache, progress="pretrain" if progress else None
    )
    del pre_data
    finetune = on_device(second)
    test = on_device(None, test=True)
    model = build()
    model.load_state_dict(state)
    pretrained_top1 = evaluate(model.to(device), test)
    hist = lambda idx: np.bincount(images.train_labels[idx], minlength=images.num_classes).tolist()  # noqa: E731
    info = {
        "dataset": images.name,
        "data_source": images.source,
        "model": model_name,
        "image_size": image_size,
        "train_images": int(len(images.train_labels)),
        "test_images": int(len(images.test_labels)),
        "split_rule": (
            "setup B: classes in a seeded random order, the i-th of C classes sends "
            "0.2 + 0.6 * i / (C - 1) of its images to the pretraining half, the rest to the fine-tuning half"
        ),
        "pretrain_images": int(len(first)),
        "finetune_images": int(len(second)),
        "pretrain_class_counts": hist(first),
        "finetune_class_counts": hist(second),
        "normalisation_mean": [round(v, 4) for v in mean],
        "normalisation_std": [round(v, 4) for v in std],
        "pretrain_schedule": asdict(pre_schedule),
        "pretrain_checkpoint": checkpoint["path"],
        "pretrain_reused": checkpoint["cached"],
        "pretrain_seconds": checkpoint["seconds"],
        "pretrained_top1": round(pretrained_top1, 2),
    }
    return SetupB(build, state, finetune, test, info)
