"""One fine-tuning run of setup B with one activation-storage method, and its row of results.

:func:`run_one` fine-tunes a copy of the pretrained model (``--seeds``
times) with its last ``k`` conv/linear layers trainable and converted to the
method, and returns one row: top-1 with its error bar, what a step holds for
backward, the layers' own bytes, ranks and step times (the columns are
described in :data:`MEMORY_COLUMNS` and in the reproduction guide).
A method name is a registered method, one of :data:`BASELINES`, or a
registered method with an eps and the suffix ``+all`` (:data:`ALL_SUFFIX`),
which runs it with :data:`COMPRESS_ALL` (:func:`storage_method`).
:func:`failed_row` is the row of a run that raised, :func:`relate_to_vanilla`
fills the columns that compare a row with vanilla's.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

#: The options of ``convert`` that make the method store every saved float tensor of the trainable part in its
#: own form: the conv/linear inputs (always), the normalisation inputs, the GELU/SiLU/Mish inputs and attention's
#: q, k, v (gradients below those ops become approximate; see ``tensorcomp.adapters.convert``).
COMPRESS_ALL = {"norm_inputs": "compress", "activation_inputs": "compress", "attention_inputs": "compress"}
#: A method name with this suffix (``hosvd+all``) runs that method with :data:`COMPRESS_ALL`, at each eps.
ALL_SUFFIX = "+all"
#: The baselines that are not a registered storage method, and how each runs.
#: ``checkpoint``: non-reentrant activation checkpointing of the trainable part (exact gradients).
#: ``quant8_all``/``quant4_all``: ``convert(model, "quant8"/"quant4", **COMPRESS_ALL)``: every saved float tensor
#: of the trainable part quantised (conv/linear, normalisation and activation inputs, attention's q, k, v),
#: masks exact.
BASELINES = {
    "checkpoint": None,
    "quant8_all": ("quant8", COMPRESS_ALL),
    "quant4_all": ("quant4", COMPRESS_ALL),
}
GRADFILTERS = ("gradfilter_r2", "gradfilter_r4", "gradfilter_r7")
#: What each memory column of a row is (stored in every run's metadata).
MEMORY_COLUMNS = {
    "held_bytes": "bytes a step holds for backward: every tensor autograd saves in the model's forward, each storage "
    "once, parameters and buffers excluded; peak over fine-tuning steps (memory_stats(model).held_bytes; for vanilla "
    "and checkpoint a counting saved-tensor hook, plus the checkpointed regions' inputs)",
    "held_mean_bytes": "mean of the same over steps",
    "held_std_bytes": "population standard deviation of the same over steps",
    "held_vs_vanilla": "vanilla's held_bytes / this run's, at the same #layers",
    "layers_peak_bytes": "the layers' own accounting (the paper's): bytes the converted layers store of their "
    "inputs per step, peak over steps (memory_stats(model).peak_bytes); empty for vanilla and checkpoint",
    "layers_ratio": "the same layers' inputs uncompressed / layers_peak_bytes",
    "host_bytes": "save_on_cpu: the layer inputs it moved to host memory (on a CPU device, host and device are one "
    "memory, so nothing is saved there)",
    "held_device_bytes": "save_on_cpu on CUDA: held_bytes minus host_bytes, what stays on the device",
    "cuda_step_peak_bytes": "CUDA only: torch.cuda.max_memory_allocated during a step's forward and backward minus "
    "memory_allocated at its start; peak over steps",
}
#: The row columns that hold numbers (``None`` in a failed run's row).
_NUMERIC = ("top1", "top1_err", "held_bytes", "held_mean_bytes", "held_std_bytes", "held_vs_vanilla", "layers_peak_bytes",
            "layers_ratio", "host_bytes", "held_device_bytes", "cuda_step_peak_bytes", "forward_ms", "backward_ms", "step_vs_vanilla")


def base_method(method: str) -> str:
    """The registered method a comparison name runs: ``hosvd`` for ``hosvd+all``, the name itself otherwise."""
    return method[: -len(ALL_SUFFIX)] if method.endswith(ALL_SUFFIX) else method


def is_compress_all(method: str) -> bool:
    """Whether ``method`` is a decomposition run with :data:`COMPRESS_ALL` (``<name>+all``)."""
    return method.endswith(ALL_SUFFIX) and len(method) > len(ALL_SUFFIX)


def storage_method(method: str) -> tuple[str, dict[str, Any]]:
    """The registered method and the ``convert`` options a comparison name (not vanilla/checkpoint) runs with."""
    if method in BASELINES:
        name, options = BASELINES[method]
        return name, dict(options)
    if is_compress_all(method):
        return base_method(method), dict(COMPRESS_ALL)
    return method, {}


def _rank_tuple(rank: Any) -> tuple[int, ...] | None:
    if rank is None:
        return None
    if isinstance(rank, (list, tuple)):
        return tuple(int(r) for r in rank)
    return (int(rank),)


def summarize_ranks(per_layer: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """A short summary (mean rank per mode of each layer, in layer order) and the per-layer detail."""
    short, detail = [], {}
    for name, record in per_layer.items():
        ranks = [_rank_tuple(r) for r in record["ranks"]]
        ranks = [r for r in ranks if r is not None]
        if not ranks or len({len(r) for r in ranks}) != 1:
            continue
        columns = list(zip(*ranks))
        mean = [sum(c) / len(c) for c in columns]
        detail[name] = {"mean": [round(m, 2) for m in mean], "min": [min(c) for c in columns], "max": [max(c) for c in columns]}
        short.append("x".join(f"{m:.0f}" for m in mean))
    return " ".join(short) if short else "-", detail


def _fine_tune(setup: Any, method: str, eps: float | None, k: int, args: argparse.Namespace, seed: int,
               progress: bool) -> dict[str, Any]:
    """One fine-tuning run: its top-1, the held bytes of its steps, the layers' own bytes, times, warnings."""
    import torch

    from tensorcomp.adapters import convert, memory_stats

    from ._census import StepCensus
    from ._models import FineTuneSetting, bn_eval, checkpoint_trainable
    from ._setup import finetune_schedule
    from ._training import evaluate, train

    torch.manual_seed(seed)
    model = setup.pretrained_model()
    setting = FineTuneSetting(model, k)
    census = stats = None
    if method in ("vanilla", "checkpoint"):
        if method == "checkpoint":
            checkpoint_trainable(model)
        census = StepCensus(model)  # plain autograd: counted by an independent saved-tensor hook
    else:
        name, options = storage_method(method)
        if name == "cp":
            options.update(max_rank=args.cp_max_rank, n_iter_max=args.cp_iters)
        convert(model, name, 0.9 if eps is None else eps, last=k, **options)

    def set_train_mode() -> None:
        setting.train()
        if args.bn == "eval":
            bn_eval(model)

    label = f"{method}" + ("" if eps is None else f" eps={eps:g}") + f" k={k}" + (f" seed={seed}" if args.seeds > 1 else "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = train(
            model, setup.finetune, finetune_schedule(args, seed), setting.parameters(), set_train_mode=set_train_mode,
            progress=label if progress else None,
        )
    top1 = evaluate(model, setup.test)
    out: dict[str, Any] = {"top1": top1, "log": log, "trainable_layers": setting.trainable_layers, "warnings": caught}
    if census is not None:
        census.remove()
        out.update(held=census.peak_bytes, held_mean=census.mean_bytes, held_std=census.std_bytes, stats=None)
    else:
        stats = memory_stats(model)
        out.update(held=stats.held_bytes, held_mean=stats.held_mean_bytes, held_std=stats.held_std_bytes, stats=stats)
    return out


def _binomial_std(top1: float, n: int) -> float:
    """Standard deviation (points) of a top-1 accuracy ``top1`` (%) measured on ``n`` test images."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1))


def run_one(setup: Any, method: str, eps: float | None, k: int, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    """Fine-tune ``--seeds`` times with one method, eps and #layers; one row of results.

    Top-1 is the mean over seeds with its error bar (``top1_err``): the
    standard deviation over seeds, or with one seed the binomial standard
    deviation on the test set. Memory, ranks and times are the first seed's.
    """
    runs = [_fine_tune(setup, method, eps, k, args, args.seed + i, progress) for i in range(args.seeds)]
    first = runs[0]
    top1s = [r["top1"] for r in runs]
    top1 = sum(top1s) / len(top1s)
    if len(top1s) > 1:
        err = math.sqrt(sum((t - top1) ** 2 for t in top1s) / (len(top1s) - 1))
    else:
        err = _binomial_std(top1, len(setup.test))
    log, stats = first["log"], first["stats"]
    ranks, rank_detail = summarize_ranks(stats.per_layer) if stats is not None else ("-", {})
    messages: dict[str, int] = {}
    for w in first["warnings"]:
        text = str(w.message).split(";")[0]
        messages[text] = messages.get(text, 0) + 1
    final_loss = sum(log.losses[-5:]) / max(1, len(log.losses[-5:]))
    row = {
        "method": method,
        "eps": "" if eps is None else eps,
        "layers": k,
        "bn": args.bn,
        "top1": round(top1, 2),
        "top1_err": round(err, 2),
        "top1_seeds": " ".join(f"{t:.2f}" for t in top1s),
        "held_bytes": int(first["held"]),
        "held_mean_bytes": round(first["held_mean"], 1),
        "held_std_bytes": round(first["held_std"], 1),
        "held_vs_vanilla": None,
        "layers_peak_bytes": stats.peak_bytes if stats is not None else None,
        "layers_ratio": round(stats.compression_ratio, 3) if stats is not None else None,
        "host_bytes": stats.peak_bytes if stats is not None and method == "save_on_cpu" else None,
        "held_device_bytes": (int(first["held"]) - stats.peak_bytes
                              if stats is not None and method == "save_on_cpu" and args.device.startswith("cuda") else None),
        "cuda_step_peak_bytes": max(log.cuda_peak_bytes) if log.cuda_peak_bytes else None,
        "ranks": ranks,
        "forward_ms": round(log.forward_median_ms, 2),
        "backward_ms": round(log.backward_median_ms, 2),
        "step_vs_vanilla": None,
        "steps": len(log.losses),
        "final_loss": round(final_loss, 4),
        "seconds": round(sum(r["log"].seconds for r in runs), 2),
        "trainable_layers": " ".join(first["trainable_layers"]),
        "ranks_per_layer": json.dumps(rank_detail),
        "warnings": "; ".join(f"{m} (x{n})" for m, n in messages.items()),
    }
    if not math.isfinite(final_loss):
        row["warnings"] = (row["warnings"] + "; " if row["warnings"] else "") + "training diverged (non-finite loss)"
    return row


def failed_row(method: str, eps: float | None, k: int, error: BaseException, bn: str = "eval") -> dict[str, Any]:
    """The row of a run that raised: no numbers, the error in ``warnings``."""
    message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    row: dict[str, Any] = {"method": method, "eps": "" if eps is None else eps, "layers": k, "bn": bn, "top1_seeds": ""}
    row.update(dict.fromkeys(_NUMERIC))
    row.update({"ranks": "-", "steps": 0, "final_loss": None, "seconds": None, "trainable_layers": "", "ranks_per_layer": "{}"})
    row["warnings"] = f"failed: {message}"
    return row


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to two decimals; ``None`` when either is missing or ``b`` is 0."""
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def step_ms(row: dict[str, Any]) -> float:
    """A row's step time: the medians of its forward and its backward, added (milliseconds)."""
    return row["forward_ms"] + row["backward_ms"]


def relate_to_vanilla(rows: Sequence[dict[str, Any]]) -> None:
    """Fill ``held_vs_vanilla`` and ``step_vs_vanilla`` of every row that has a vanilla row at its #layers."""
    vanilla = {r["layers"]: r for r in rows if r["method"] == "vanilla" and r["top1"] is not None}
    for r in rows:
        v = vanilla.get(r["layers"])
        if v is None or r["top1"] is None:
            continue
        r["held_vs_vanilla"] = ratio(v["held_bytes"], r["held_bytes"])
        r["step_vs_vanilla"] = ratio(step_ms(r), step_ms(v))


def tied(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two rows' top-1 differ by less than the larger of their error bars."""
    return abs(a["top1"] - b["top1"]) < max(a.get("top1_err") or 0.0, b.get("top1_err") or 0.0)
