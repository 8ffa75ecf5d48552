"""Fine-tune one model with every activation-storage method and compare accuracy and memory.

The paper's setup B (Nguyen et al., NeurIPS 2024): the training set is cut
into two disjoint, class-skewed halves; the model is pretrained on the first
(cached on disk), then, for each method, ``eps`` and number of trainable
layers ``k``, a copy of it is fine-tuned on the second half with only its last
``k`` conv/linear layers trainable, those layers converted with
``tensorcomp.adapters.convert(model, method, eps, last=k)``, and evaluated on
the test set. Every run uses the same seed, data order, optimizer (SGD,
momentum 0, weight decay 1e-4, learning rate 0.05 with cosine decay, gradients
clipped at L2 norm 2.0) and batch size, and by default keeps the trainable
BatchNorm layers in evaluation mode as the paper's code does (``--bn train``
lets them update their statistics).

Memory is what a step *holds* for backward (``held_bytes``: every tensor
autograd saves in the model's forward, each storage once), peak and mean ±
std over the fine-tuning steps, read from ``memory_stats(model)``; the
``vanilla`` row is plain autograd and the ``checkpoint`` row plain
checkpointing, both counted by an independent saved-tensor hook
(``benchmarks._census``). The layers' own bytes (what the converted layers
store of their inputs, the paper's accounting) are a second, labelled
column. Baselines users pick instead run on the same loop: ``checkpoint``
(``torch.utils.checkpoint``, non-reentrant, around the trainable part),
``quant8_all``/``quant4_all`` (every saved float tensor of the trainable
part quantised, masks exact) and ``save_on_cpu``. Top-1 comes with an error
bar: the binomial standard deviation on the test set, or with ``--seeds N``
the standard deviation over N fine-tuning seeds; differences below it are
reported as ties.

With no arguments it runs a complete comparison on data shipped with
scikit-learn (no download): handwritten digits upsampled to 32x32, a small
CNN, every method but CP (whose ALS fits cost seconds per training step on a
CPU; ``--methods all`` adds it), eps 0.8 and 0.9, the last 2 and 4 layers (a
few minutes on two CPU cores). ``--dataset cifar10 --data-root DIR --model resnet18``
runs the real-scale version.

A decomposition of your own is compared by name once registered::

    import tensorcomp
    from benchmarks import compare

    def my_method(x, eps=0.9, **kwargs):
        ...  # return an object with to_tensor(), nbytes, rank, explained_variance

    tensorcomp.register("mine", my_method)
    compare.main(["--methods", "vanilla", "hosvd", "mine"])

Outputs, under ``benchmarks/results/<run-name>/``: ``results.csv`` and
``results.json`` (rows and the run's metadata: machine, versions, command,
data split, pretraining, BatchNorm mode, what each memory column counts),
``paper.csv``/``paper.json`` (the paper's questions answered in held
memory) and ``pareto.png`` (accuracy against held bytes).

Run ``python -m benchmarks.compare --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import Parser, UsageError, check_eps, check_positive, load_images, run_main

METHODS = (
    "vanilla",
    "svd",
    "hosvd",
    "tucker",
    "cp",
    "tt",
    "subspace",
    "gradfilter_r2",
    "gradfilter_r4",
    "gradfilter_r7",
    "quant8",
    "quant4",
    "quant2",
    "quant8_all",
    "quant4_all",
    "checkpoint",
    "save_on_cpu",
)
#: The baselines that are not a registered storage method, and how each runs.
#: ``checkpoint``: non-reentrant activation checkpointing of the trainable part (exact gradients).
#: ``quant8_all``/``quant4_all``: ``convert(model, "quant8"/"quant4", norm_inputs="compress")``, every saved
#: float tensor of the trainable part quantised (conv/linear and normalisation inputs), masks exact.
BASELINES = {
    "checkpoint": None,
    "quant8_all": ("quant8", {"norm_inputs": "compress"}),
    "quant4_all": ("quant4", {"norm_inputs": "compress"}),
}
#: Methods with no energy threshold: run once per depth, whatever ``--eps`` holds.
EPS_FREE = frozenset(
    {"vanilla", "save_on_cpu", "checkpoint", "gradfilter_r2", "gradfilter_r4", "gradfilter_r7", "quant8", "quant4",
     "quant2", "quant8_all", "quant4_all"}
)
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
DEFAULTS = {
    "digits": {"model": "smallcnn", "image_size": 32, "epochs": 6, "pretrain_epochs": 20},
    "cifar10": {"model": "resnet18", "image_size": 224, "epochs": 5, "pretrain_epochs": 10},
}
DEFAULT_EPS = (0.8, 0.9)
DEFAULT_LAYERS = ("2", "4")
DEFAULT_CP_MAX_RANK = 4
DEFAULT_CP_ITERS = 20
#: The default comparison: every method but CP, whose ALS fits (one per candidate rank, every step) cost seconds per step on a CPU.
DEFAULT_METHODS = tuple(m for m in METHODS if m != "cp")
RESULTS = Path(__file__).resolve().parent / "results"
PROG = "python -m benchmarks.compare"


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a setup-B run that every fine-tuning benchmark shares: data, model, pretraining, seed, device.

    ``None`` defaults are filled per dataset by :func:`check_setup_arguments`.
    """
    from ._models import MODELS

    add = parser.add_argument
    add("--dataset", default="digits", help="digits (embedded) or cifar10")
    add("--data-root", default=None, metavar="DIR",
        help="CIFAR-10 folder: cifar-10-batches-py/ (torchvision's layout) or train/<class>/*.jpg + test/ "
        "(ImageFolder layout); default $TENSORCOMP_DATA_ROOT")
    add("--model", default=None, help=f"one of {', '.join(MODELS)} (default: smallcnn for digits, resnet18 for cifar10)")
    add("--image-size", type=int, default=None, help="side of the square input images (default: 32 for digits, 224 for cifar10)")
    add("--pretrain-epochs", type=int, default=None, help="pretraining epochs on the first half (default: per dataset)")
    add("--batch-size", type=int, default=128, help="batch size of pretraining and fine-tuning")
    add("--seed", type=int, default=0, help="seed of the split, the initialisation and the data order")
    add("--device", default="cpu", help="cpu or cuda")
    add("--limit-train", type=int, default=None, metavar="N", help="use N training images (seeded random subset), for quick runs")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description=(
            "Fine-tune a model with each activation-storage method (setup B: pretrain on one non-iid half of "
            "the training set, fine-tune the last k conv/linear layers on the other) and compare top-1 "
            "accuracy, the memory a step holds for backward and step time."
        ),
        epilog=(
            "Default (no arguments): --dataset digits (scikit-learn's handwritten digits, no download) "
            "--model smallcnn --image-size 32, all methods but cp (its ALS fits cost seconds per step on a CPU; "
            "add it with --methods all), --eps 0.8 0.9, --layers 2 4, --bn eval, "
            f"--epochs {DEFAULTS['digits']['epochs']} --pretrain-epochs {DEFAULTS['digits']['pretrain_epochs']}: "
            "a few minutes on two CPU cores. Real scale: --dataset cifar10 --data-root DIR --model resnet18 "
            f"(--image-size 224, --epochs {DEFAULTS['cifar10']['epochs']}, "
            f"--pretrain-epochs {DEFAULTS['cifar10']['pretrain_epochs']} by default). "
            "Pretrained checkpoints and decoded images are cached under $TENSORCOMP_CACHE or ~/.cache/tensorcomp. "
            "A decomposition of your own: register it with tensorcomp.register(name, fn) in a script, then call "
            "benchmarks.compare.main(['--methods', 'vanilla', 'hosvd', name])."
        ),
    )
    add = parser.add_argument
    add("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
        help=f"methods to compare (space or comma separated; 'all' = {' '.join(METHODS)}); "
        "any method registered with tensorcomp.register works by name (default: every method but cp)")
    add("--eps", nargs="+", type=float, default=list(DEFAULT_EPS),
        help="energy fractions to keep, in (0, 1], as each method defines it (HOSVD: of each mode's energy); "
        f"methods without a threshold ({', '.join(sorted(EPS_FREE))}) run once per depth (default: 0.8 0.9)")
    add("--layers", nargs="+", default=list(DEFAULT_LAYERS), metavar="K",
        help="numbers k of trailing conv/linear layers to fine-tune (and compress), or 'all' (default: 2 4)")
    add("--bn", choices=("eval", "train"), default="eval",
        help="mode of the trainable BatchNorm layers during fine-tuning: eval (statistics frozen, as the paper's "
        "code fine-tunes: set_bn_eval) or train (default: eval)")
    add("--seeds", type=int, default=1, metavar="N",
        help="fine-tune each setting N times (seeds --seed .. --seed+N-1 for the data order; one pretrained model) "
        "and report top-1 as mean ± standard deviation; with 1, the error bar is the binomial standard deviation "
        "of the test accuracy (default: 1)")
    add_setup_arguments(parser)
    add("--epochs", type=int, default=None, help="fine-tuning epochs (default: per dataset, see below)")
    add("--lr", type=float, default=0.05, help="fine-tuning learning rate, decayed to 0 by a cosine")
    add("--limit-test", type=int, default=None, metavar="N", help="use N test images (seeded random subset)")
    add("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results of this checkout)")
    add("--run-name", default=None, help="subfolder of --out (default: compare-<dataset>-<model>-<image size>)")
    add("--cp-max-rank", type=int, default=DEFAULT_CP_MAX_RANK,
        help="largest CP rank the eps search may reach (CP fits one ALS problem per candidate rank "
        "on every step; higher is slower; activations rarely reach eps at small CP ranks, so CP "
        f"usually runs at this rank and keeps less energy than eps; default: {DEFAULT_CP_MAX_RANK})")
    add("--cp-iters", type=int, default=DEFAULT_CP_ITERS,
        help=f"ALS iterations of each CP fit (tensorcomp.cp's n_iter_max, whose own default is 100; default: {DEFAULT_CP_ITERS})")
    add("--note", default="", help="free text stored in the run's metadata and printed with the table")
    add("--no-cache", action="store_true", help="do not read or write cached checkpoints and decoded images")
    add("--no-progress", action="store_true", help="no progress bars")
    return parser


# -- argument checks ------------------------------------------------------------


def _split_names(values: Sequence[str]) -> list[str]:
    return [name for value in values for name in value.split(",") if name]


def resolve_methods(values: Sequence[str]) -> list[str]:
    import tensorcomp
    import tensorcomp.adapters  # noqa: F401  (registers the baseline methods)

    names = _split_names(values)
    if not names:
        raise UsageError("--methods needs at least one name")
    out: list[str] = []
    for name in names:
        for expanded in METHODS if name == "all" else [name]:
            if expanded not in out:
                out.append(expanded)
    available = [*tensorcomp.available_methods(), *BASELINES]
    unknown = [name for name in out if name not in available]
    if unknown:
        raise UsageError(f"unknown method {', '.join(map(repr, unknown))}; available: {', '.join(available)}")
    return out


def resolve_layers(values: Sequence[str], num_candidates: int) -> list[int]:
    out: list[int] = []
    for value in _split_names(values):
        if value == "all":
            k = num_candidates
        else:
            try:
                k = int(value)
            except ValueError:
                raise UsageError(f"--layers takes positive integers or 'all'; got {value!r}") from None
            if not 1 <= k <= num_candidates:
                raise UsageError(f"--layers {k}: the model has {num_candidates} conv/linear layers; choose 1..{num_candidates} or 'all'")
        if k not in out:
            out.append(k)
    if not out:
        raise UsageError("--layers needs at least one value")
    return out


def check_setup_arguments(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Check the options of :func:`add_setup_arguments`, filling those in ``names`` left unset from the dataset's defaults.

    Shared by every benchmark built on this loop (compare, gradient_snr, rank_evolution).
    """
    from ._data import DATASETS
    from ._models import MODELS

    if args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    for name in names:
        if getattr(args, name) is None:
            setattr(args, name, DEFAULTS[args.dataset][name])
    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; choose one of {', '.join(MODELS)}")
    check_positive(
        pretrain_epochs=args.pretrain_epochs, batch_size=args.batch_size, image_size=args.image_size,
        limit_train=args.limit_train,
    )
    if args.image_size is not None and args.image_size < 8:
        raise UsageError(f"--image-size must be at least 8; got {args.image_size}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise UsageError(f"unknown device {args.device!r}; choose cpu or cuda")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: no CUDA device is available here; use --device cpu")


def pretrained_setup(
    args: argparse.Namespace, *, limit_test: int | None = None, use_cache: bool = True, progress: bool = False
) -> Any:
    """Load the data named by the setup options, split it (setup B) and pretrain on the first half (cached)."""
    from ._training import setup_b

    images = load_images(args.dataset, args.data_root, use_cache=use_cache)
    images = images.limited(args.limit_train, limit_test, seed=args.seed)
    if len(images.train_labels) < 4:
        raise UsageError(f"--limit-train {args.limit_train} leaves too few training images to split")
    return setup_b(
        images, args.model, image_size=args.image_size, pretrain_epochs=args.pretrain_epochs,
        batch_size=args.batch_size, seed=args.seed, device=args.device, use_cache=use_cache, progress=progress,
    )


def check_args(args: argparse.Namespace) -> None:
    from ._data import DATASETS

    check_setup_arguments(args, DEFAULTS[args.dataset] if args.dataset in DATASETS else ())
    check_eps(args.eps)
    check_positive(
        epochs=args.epochs, cp_max_rank=args.cp_max_rank, cp_iters=args.cp_iters, limit_test=args.limit_test,
        seeds=args.seeds,
    )
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive; got {args.lr}")


# -- one run -----------------------------------------------------------------------


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


def _bn_eval(model: Any) -> None:
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _fine_tune(setup: Any, method: str, eps: float | None, k: int, args: argparse.Namespace, seed: int,
               progress: bool) -> dict[str, Any]:
    """One fine-tuning run: its top-1, the held bytes of its steps, the layers' own bytes, times, warnings."""
    import torch

    from tensorcomp.adapters import convert, memory_stats

    from ._census import StepCensus
    from ._models import FineTuneSetting, checkpoint_trainable
    from ._training import Schedule, evaluate, train

    torch.manual_seed(seed)
    model = setup.pretrained_model()
    setting = FineTuneSetting(model, k)
    census = stats = None
    if method in ("vanilla", "checkpoint"):
        if method == "checkpoint":
            checkpoint_trainable(model)
        census = StepCensus(model)  # plain autograd: counted by an independent saved-tensor hook
    else:
        name, options = BASELINES.get(method) or (method, {})
        if name == "cp":
            options = {"max_rank": args.cp_max_rank, "n_iter_max": args.cp_iters}
        convert(model, name, 0.9 if eps is None else eps, last=k, **options)

    def set_train_mode() -> None:
        setting.train()
        if args.bn == "eval":
            _bn_eval(model)

    schedule = Schedule(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.0, weight_decay=1e-4, clip=2.0,
        seed=seed, flip=args.dataset != "digits",
    )
    label = f"{method}" + ("" if eps is None else f" eps={eps:g}") + f" k={k}" + (f" seed={seed}" if args.seeds > 1 else "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = train(
            model, setup.finetune, schedule, setting.parameters(), set_train_mode=set_train_mode,
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


#: The row columns that hold numbers (``None`` in a failed run's row).
_NUMERIC = ("top1", "top1_err", "held_bytes", "held_mean_bytes", "held_std_bytes", "held_vs_vanilla", "layers_peak_bytes",
            "layers_ratio", "host_bytes", "held_device_bytes", "cuda_step_peak_bytes", "forward_ms", "backward_ms", "step_vs_vanilla")


def failed_row(method: str, eps: float | None, k: int, error: BaseException, bn: str = "eval") -> dict[str, Any]:
    """The row of a run that raised: no numbers, the error in ``warnings``."""
    message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    row: dict[str, Any] = {"method": method, "eps": "" if eps is None else eps, "layers": k, "bn": bn, "top1_seeds": ""}
    row.update(dict.fromkeys(_NUMERIC))
    row.update({"ranks": "-", "steps": 0, "final_loss": None, "seconds": None, "trainable_layers": "", "ranks_per_layer": "{}"})
    row["warnings"] = f"failed: {message}"
    return row


def relate_to_vanilla(rows: Sequence[dict[str, Any]]) -> None:
    """Fill ``held_vs_vanilla`` and ``step_vs_vanilla`` of every row that has a vanilla row at its #layers."""
    vanilla = {r["layers"]: r for r in rows if r["method"] == "vanilla" and r["top1"] is not None}
    for r in rows:
        v = vanilla.get(r["layers"])
        if v is None or r["top1"] is None:
            continue
        r["held_vs_vanilla"] = _ratio(v["held_bytes"], r["held_bytes"])
        r["step_vs_vanilla"] = _ratio(r["forward_ms"] + r["backward_ms"], v["forward_ms"] + v["backward_ms"])


def tied(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two rows' top-1 differ by less than the larger of their error bars."""
    return abs(a["top1"] - b["top1"]) < max(a.get("top1_err") or 0.0, b.get("top1_err") or 0.0)


# -- output -------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _mem_unit(rows: Sequence[dict[str, Any]]) -> tuple[str, float]:
    peak = max((r["held_bytes"] or 0 for r in rows), default=0)
    return ("MiB", 2.0**20) if peak >= 2**20 else ("KiB", 2.0**10)


def text_table(header: Sequence[str], lines: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """Cells as an aligned text table: columns in ``left`` left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as an aligned text table (one line per run).

    ``held``: what a step holds for backward (every saved tensor); ``layers'
    own``: the converted layers' stored inputs (the paper's accounting).
    ``vs vanilla`` says ``tied`` when the difference is below the error bar.
    """
    vanilla = {r["layers"]: r for r in rows if r["method"] == "vanilla" and r["top1"] is not None}
    header = ["method", "eps", "#layers", "top-1 %", "vs vanilla", "held peak", "held mean ± std", "held ratio",
              "layers' own", "own ratio", "ranks", "step ms", "step ratio"]
    lines = []
    for r in rows:
        eps = f"{r['eps']:g}" if r["eps"] != "" else "-"
        if r["top1"] is None:
            lines.append([r["method"], eps, str(r["layers"]), "failed", *[""] * 6, "see notes", "", ""])
            continue
        v = vanilla.get(r["layers"])
        delta = ""
        if v is not None and r is not v:
            delta = f"{r['top1'] - v['top1']:+.2f}" + (" tied" if tied(r, v) else "")
        ranks = r["ranks"] if len(r["ranks"]) <= 24 else r["ranks"][:23] + "…"
        own = "-" if r["layers_peak_bytes"] is None else _bytes(r["layers_peak_bytes"])
        own_ratio = "-" if r["layers_ratio"] is None else f"{r['layers_ratio']:.1f}x"
        lines.append([
            r["method"], eps, str(r["layers"]), f"{r['top1']:.2f} ± {r['top1_err']:.2f}", delta,
            _bytes(r["held_bytes"]), f"{_bytes(r['held_mean_bytes'])} ± {_bytes(r['held_std_bytes'])}",
            "-" if r["held_vs_vanilla"] is None else f"{r['held_vs_vanilla']:.2f}x", own, own_ratio, ranks,
            f"{r['forward_ms'] + r['backward_ms']:.1f}",
            "-" if r["step_vs_vanilla"] is None else f"{r['step_vs_vanilla']:.2f}x",
        ])
    return text_table(header, lines, left=(0, 4, 10))


#: The paper's Table 1 (Nguyen et al., NeurIPS 2024; ImageNet, setup B, eps 0.8): vanilla's activation
#: memory divided by the method's, at the same number of fine-tuned layers.
PAPER_TABLE1 = {
    ("resnet18", 2): {"hosvd": 12.6, "svd": 1.6},
    ("resnet18", 4): {"hosvd": 10.6, "svd": 1.5},
    ("mobilenet_v2", 2): {"hosvd": 102.0, "svd": 3.1},
    ("mobilenet_v2", 4): {"hosvd": 39.0, "svd": 1.9},
}
PAPER_EPS = 0.8
GRADFILTERS = ("gradfilter_r2", "gradfilter_r4", "gradfilter_r7")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


#: The baselines HOSVD is compared with at equal accuracy in the paper's questions.
RIVALS = ("checkpoint", "quant8_all", "quant4_all")


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` holds no more than ``b`` and is more accurate beyond the error bars."""
    return a["held_bytes"] <= b["held_bytes"] and a["top1"] > b["top1"] and not tied(a, b)


def paper_comparison(rows: Sequence[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """The paper's questions, answered in held memory from one run's rows, with its Table 1 ratios beside ours.

    One row per (layers, eps) that has vanilla, ``svd`` and ``hosvd`` results:

    - memory ratios in held bytes (``*_vs_*``: what a step holds) and in the
      layers' own accounting (``own_*``, the paper's), and the paper's
      Table 1 ratios: does HOSVD hold >= 10x less than SVD?
    - SVD's top-1 minus HOSVD's, and whether they are tied (the difference is
      below the larger error bar);
    - against the baselines users pick instead (``checkpoint``,
      ``quant8_all``, ``quant4_all``): each one's held bytes over HOSVD's and
      its top-1 minus HOSVD's; ``hosvd_on_front`` is true when no run at
      that #layers holds no more than HOSVD while being more accurate beyond
      the error bars (``dominated_by`` names those that do);
    - step time over vanilla's (forward + backward medians) of HOSVD and of
      checkpointing;
    - the most accurate gradient filter that holds at least as much as HOSVD,
      minus HOSVD's top-1 (``None`` when none holds that much).

    Accuracies are top-1 % on the run's test set, where one test image is
    ``100 / test_images`` points.
    """
    ok = [r for r in rows if r.get("top1") is not None]
    out = []
    for k in sorted({r["layers"] for r in ok}):
        at_k = {(r["method"], r["eps"]): r for r in ok if r["layers"] == k}
        vanilla = at_k.get(("vanilla", ""))
        if vanilla is None:
            continue
        for eps in sorted({r["eps"] for r in ok if r["layers"] == k and r["eps"] != ""}):
            svd, hosvd = at_k.get(("svd", eps)), at_k.get(("hosvd", eps))
            if svd is None or hosvd is None:
                continue
            paper = PAPER_TABLE1.get((model, k)) if eps == PAPER_EPS else None
            filters = [at_k[(g, "")] for g in GRADFILTERS if (g, "") in at_k]
            larger = [f for f in filters if f["held_bytes"] >= hosvd["held_bytes"]]
            best = max(larger, key=lambda f: f["top1"], default=None)
            own = {m: r.get("layers_peak_bytes") for m, r in (("svd", svd), ("hosvd", hosvd))}
            entry: dict[str, Any] = {
                "layers": k,
                "eps": eps,
                "vanilla_top1": vanilla["top1"],
                "svd_top1": svd["top1"],
                "hosvd_top1": hosvd["top1"],
                "hosvd_top1_err": hosvd.get("top1_err"),
                "svd_vs_vanilla": _ratio(vanilla["held_bytes"], svd["held_bytes"]),
                "hosvd_vs_vanilla": _ratio(vanilla["held_bytes"], hosvd["held_bytes"]),
                "hosvd_vs_svd": _ratio(svd["held_bytes"], hosvd["held_bytes"]),
                "own_svd_vs_vanilla": svd.get("layers_ratio") and round(svd["layers_ratio"], 2),
                "own_hosvd_vs_vanilla": hosvd.get("layers_ratio") and round(hosvd["layers_ratio"], 2),
                "own_hosvd_vs_svd": _ratio(own["svd"], own["hosvd"]),
                "paper_svd_vs_vanilla": paper["svd"] if paper else None,
                "paper_hosvd_vs_vanilla": paper["hosvd"] if paper else None,
                "paper_hosvd_vs_svd": _ratio(paper["hosvd"], paper["svd"]) if paper else None,
                "hosvd_10x_less_than_svd": svd["held_bytes"] >= 10 * hosvd["held_bytes"],
                "svd_minus_hosvd_top1": round(svd["top1"] - hosvd["top1"], 2),
                "svd_hosvd_tied": tied(svd, hosvd),
            }
            for rival in RIVALS:
                r = at_k.get((rival, ""))
                entry[f"{rival}_vs_hosvd"] = _ratio(r["held_bytes"], hosvd["held_bytes"]) if r else None
                entry[f"{rival}_minus_hosvd_top1"] = round(r["top1"] - hosvd["top1"], 2) if r else None
            dominating = [f"{r['method']}" + (f" eps={r['eps']:g}" if r["eps"] != "" else "")
                          for r in at_k.values() if r is not hosvd and _dominates(r, hosvd)]
            entry["hosvd_on_front"] = not dominating
            entry["dominated_by"] = " ".join(dominating) if dominating else None
            entry["hosvd_step_vs_vanilla"] = _ratio(hosvd["forward_ms"] + hosvd["backward_ms"],
                                                    vanilla["forward_ms"] + vanilla["backward_ms"])
            checkpoint = at_k.get(("checkpoint", ""))
            entry["checkpoint_step_vs_vanilla"] = _ratio(checkpoint["forward_ms"] + checkpoint["backward_ms"],
                                                         vanilla["forward_ms"] + vanilla["backward_ms"]) if checkpoint else None
            entry.update({
                "gradfilter": best["method"] if best else None,
                "gradfilter_vs_vanilla": _ratio(vanilla["held_bytes"], best["held_bytes"]) if best else None,
                "gradfilter_minus_hosvd_top1": round(best["top1"] - hosvd["top1"], 2) if best else None,
            })
            out.append(entry)
    return out


def format_paper_table(rows: Sequence[dict[str, Any]]) -> str:
    """The paper-comparison rows as two terminal tables: memory, then accuracy and time."""
    def num(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    memory = [[str(r["layers"]), f"{r['eps']:g}", num(r["svd_vs_vanilla"]), num(r["paper_svd_vs_vanilla"]),
               num(r["hosvd_vs_vanilla"]), num(r["paper_hosvd_vs_vanilla"]),
               num(r["hosvd_vs_svd"]), num(r["own_hosvd_vs_svd"]), num(r["paper_hosvd_vs_svd"]),
               *(num(r[f"{rival}_vs_hosvd"], ".2f") for rival in RIVALS)] for r in rows]
    accuracy = [[str(r["layers"]), f"{r['eps']:g}", num(r["vanilla_top1"], ".2f"),
                 f"{num(r['hosvd_top1'], '.2f')} ± {num(r['hosvd_top1_err'], '.2f')}",
                 num(r["svd_minus_hosvd_top1"], "+.2f") + (" tied" if r["svd_hosvd_tied"] else ""),
                 *(num(r[f"{rival}_minus_hosvd_top1"], "+.2f") for rival in RIVALS),
                 "yes" if r["hosvd_on_front"] else f"no ({r['dominated_by']})",
                 num(r["hosvd_step_vs_vanilla"], ".2f"), num(r["checkpoint_step_vs_vanilla"], ".2f"),
                 r["gradfilter"] or "-", num(r["gradfilter_minus_hosvd_top1"], "+.2f")] for r in rows]
    return "\n".join([
        "the paper's questions, in held memory (what a step holds for backward; 'own': the layers' own accounting,",
        "the paper's; paper: its Table 1, ImageNet, eps 0.8; X/HOSVD: X's held bytes over HOSVD's)",
        text_table(["k", "eps", "van/SVD", "paper", "van/HOSVD", "paper", "SVD/HOSVD", "own", "paper",
                    *(f"{rival}/HOSVD" for rival in RIVALS)], memory),
        "",
        "top-1 (points; X-HOSVD: X's minus HOSVD's; front: no run holds no more and is more accurate beyond the error",
        "bars; step: forward + backward over vanilla's; GF: the most accurate gradient filter holding >= HOSVD)",
        text_table(["k", "eps", "vanilla", "HOSVD", "SVD-HOSVD", *(f"{rival}-HOSVD" for rival in RIVALS),
                    "HOSVD on front", "HOSVD step", "ckpt step", "GF", "GF-HOSVD"], accuracy, left=(4, 8, 11)),
    ])


def write_paper_comparison(out_dir: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Write ``paper.csv``/``paper.json`` beside a run's results; returns the rows (empty: nothing written)."""
    from ._report import write_table

    table = paper_comparison(rows, meta.get("model", ""))
    if table:
        info = {key: meta[key] for key in ("date", "command", "device", "cpu", "gpu", "model", "dataset",
                                            "image_size", "test_images", "note") if key in meta}
        info["paper"] = ("Nguyen et al., NeurIPS 2024, Table 1: ImageNet, setup B, eps 0.8; "
                         "vanilla's activation memory / the method's at the same #layers, in the layers' own accounting")
        info["memory"] = ("*_vs_*: ratios of held bytes (what a step holds for backward, every saved tensor); "
                          "own_*: of the layers' own bytes (the paper's accounting)")
        info["derived_from"] = "results.json beside this file (benchmarks.compare.paper_comparison)"
        info["gradfilter"] = "the most accurate gradient filter holding at least HOSVD's held bytes (empty: none does)"
        info["tied"] = "two top-1 values are tied when they differ by less than the larger of their error bars"
        write_table(Path(out_dir) / "paper", table, info)
    return table


def run_title(meta: dict[str, Any]) -> str:
    """A run's one-line description from its metadata, with its note (if any) wrapped below."""
    import textwrap

    epochs = meta.get("finetune_schedule", {}).get("epochs", "?")
    title = f"{meta.get('dataset')}, {meta.get('model')} {meta.get('image_size')}px, setup B, {epochs} fine-tuning epochs"
    if meta.get("note"):
        title += "\n" + textwrap.fill(meta["note"], 100)
    return title


#: Colour families of the Pareto plot: a colormap per family of methods, a shade per member.
FAMILIES = (
    ("exact", "Greys", ("vanilla", "checkpoint", "save_on_cpu")),
    ("SVD", "Reds", ("svd",)),
    ("Tucker", "Blues", ("hosvd", "tucker", "subspace")),
    ("TT", "Purples", ("tt",)),
    ("CP", "YlOrBr", ("cp",)),
    ("gradient filter", "Greens", GRADFILTERS),
    ("quantisation", "Oranges", ("quant8", "quant4", "quant2", "quant8_all", "quant4_all")),
)


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """A colour per method: its family's colormap, one shade per member; other methods get distinct hues."""
    import matplotlib.pyplot as plt

    colors: dict[str, Any] = {}
    for _, cmap, members in FAMILIES:
        present = [m for m in members if m in methods]
        for i, m in enumerate(present):
            colors[m] = plt.get_cmap(cmap)(0.95 - 0.5 * i / max(1, len(present) - 1) if len(present) > 1 else 0.8)
    colors["vanilla"] = "black"
    extra = [m for m in methods if m not in colors]
    palette = [plt.get_cmap("tab10").colors[i] for i in (6, 8, 9, 4, 5)]
    for i, m in enumerate(extra):
        colors[m] = palette[i % len(palette)]
    return colors


def spread_identical(points: Sequence[tuple[float, float]], factor: float = 1.04) -> list[float]:
    """Multiplicative x offsets that move apart points at (nearly) the same place: 1 for a point alone.

    Points whose x agree within 0.5% and y within 0.01 form a group; a
    group of n gets offsets ``factor ** (j - (n - 1) / 2)``.
    """
    import math as _math

    keys = [(round(_math.log10(max(x, 1e-30)) / 0.002), round(y / 0.01)) for x, y in points]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    offsets = [1.0] * len(points)
    for members in groups.values():
        for j, i in enumerate(members):
            offsets[i] = factor ** (j - (len(members) - 1) / 2)
    return offsets


def pareto_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Top-1 accuracy (± error bar) against held bytes (log x): colour by method family, line style by eps, marker by #layers.

    Points at identical values are spread a few percent apart horizontally so
    that none hides another (the title says so when it happens).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ._report import save_figure

    rows = [r for r in rows if r["top1"] is not None]
    unit, scale = _mem_unit(rows)
    depths = sorted({r["layers"] for r in rows})
    markers = dict(zip(depths, "osD^vP*Xh<>p"))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = method_colors(methods)
    all_eps = sorted({r["eps"] for r in rows if r["eps"] != ""})
    styles = dict(zip(all_eps, ["--", ":", "-.", (0, (5, 1, 1, 1))] * 4))
    offsets = spread_identical([(max(r["held_bytes"], 1) / scale, r["top1"]) for r in rows])
    x_of = {id(r): max(r["held_bytes"], 1) / scale * o for r, o in zip(rows, offsets)}
    fig, ax = plt.subplots(figsize=(10, 6.5))
    series: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["method"], r["eps"]), []).append(r)
    for (method, eps), points in series.items():
        points = sorted(points, key=lambda r: r["layers"])
        xs = [x_of[id(r)] for r in points]
        ys = [r["top1"] for r in points]
        label = method if eps == "" else f"{method} ε={eps:g}"
        z, width = (3, 2.0) if method == "vanilla" else (2, 1.3)
        ax.plot(xs, ys, styles.get(eps, "-"), color=colors[method], alpha=0.85, label=label, zorder=z, linewidth=width)
        for x, y, r in zip(xs, ys, points):
            ax.errorbar(x, y, yerr=r.get("top1_err") or 0.0, fmt=markers[r["layers"]], color=colors[method],
                        markersize=6, capsize=2, elinewidth=0.8, zorder=z)
    ax.set_xscale("log")
    ax.set_xlabel(f"held bytes: what a training step keeps for backward, peak over steps ({unit}, log scale)")
    ax.set_ylabel("top-1 accuracy (%), ± error bar")
    if any(o != 1.0 for o in offsets):
        title += "\n(points at identical values are drawn a few percent apart horizontally)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    method_legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="method")
    ax.add_artist(method_legend)
    handles = [Line2D([], [], marker=markers[d], linestyle="", color="grey", label=f"{d} layers") for d in depths]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8, title="#layers")
    save_figure(fig, path, tight_layout=False)  # the legends sit outside the axes


def run_line(row: dict[str, Any], done: int, total: int) -> str:
    """The one line printed when a run finishes (with or without progress bars)."""
    eps = row["eps"] if row["eps"] != "" else "-"
    head = f"[{done}/{total}] {row['method']:<14} eps={eps:<4} k={row['layers']}:"
    if row["top1"] is None:
        return f"{head} {row['warnings']}"
    ratio = "" if row["held_vs_vanilla"] is None or row["method"] == "vanilla" else f" ({row['held_vs_vanilla']:.2f}x less than vanilla)"
    return (f"{head} top-1 {row['top1']:6.2f} ± {row['top1_err']:.2f}%  held {_bytes(row['held_bytes'])}{ratio}  "
            f"step {row['forward_ms'] + row['backward_ms']:.1f} ms ({row['seconds']:.0f} s)")


# -- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status (2 for bad input, with a one-line message)."""
    return run_main(PROG, _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    methods = resolve_methods(args.methods)

    from ._models import build_model, candidate_layers
    from ._report import machine_description, write_table

    probe, _ = build_model(args.model, 1 if args.dataset == "digits" else 3, 10)
    layers = resolve_layers(args.layers, len(candidate_layers(probe)))
    del probe
    progress = not args.no_progress
    run_name = args.run_name or f"compare-{args.dataset}-{args.model}-{args.image_size}"
    out_dir = Path(args.out) / run_name
    started = time.perf_counter()
    setup = pretrained_setup(args, limit_test=args.limit_test, use_cache=not args.no_cache, progress=progress)
    meta = machine_description(args.device, argv)
    if hasattr(os, "getloadavg"):
        # Step times are only comparable on an otherwise idle machine: record how busy it was.
        meta["load_average_1min_start"] = round(os.getloadavg()[0], 2)
    meta.update(setup.info)
    meta.update({
        "note": args.note,
        "finetune_schedule": {
            "optimizer": "SGD", "lr": args.lr, "lr_schedule": "cosine to 0 over all steps", "momentum": 0.0,
            "weight_decay": 1e-4, "grad_clip_l2": 2.0, "batch_size": args.batch_size, "epochs": args.epochs,
            "seed": args.seed, "drop_last_partial_batch": True, "random_flip": args.dataset != "digits",
        },
        "trainable": "the last k conv/linear layers (convert(..., last=k)) and the normalisation layers after the first of them",
        "memory": MEMORY_COLUMNS,
        "bn": f"trainable BatchNorm layers in {args.bn} mode during fine-tuning" + (
            " (statistics frozen, as the paper's code: set_bn_eval)" if args.bn == "eval" else ""),
        "seeds": args.seeds,
        "top1_err": "standard deviation over seeds" if args.seeds > 1 else "binomial standard deviation on the test set",
        "baselines": {
            "checkpoint": "torch.utils.checkpoint (non-reentrant) around the trainable part (benchmarks._models.checkpoint_trainable)",
            "quant8_all/quant4_all": "convert(model, 'quant8'/'quant4', norm_inputs='compress'): every saved float tensor "
            "of the trainable part quantised, masks exact",
            "save_on_cpu": "layer inputs moved to host memory (host_bytes); held_bytes counts them, on any device",
        },
        "cp_max_rank": args.cp_max_rank,
        "cp_iters": args.cp_iters,
        "methods": methods,
        "eps": args.eps,
        "layers": layers,
    })
    how = "cached checkpoint" if setup.info["pretrain_reused"] else f"{setup.info['pretrain_seconds']:.0f} s"
    print(
        f"{args.dataset} ({setup.info['data_source']}), {args.model} at {args.image_size}x{args.image_size}: "
        f"pretrained on {setup.info['pretrain_images']} images ({how}), "
        f"test top-1 {setup.info['pretrained_top1']:.2f}%; fine-tuning on {setup.info['finetune_images']}, "
        f"testing on {setup.info['test_images']}",
        flush=True,
    )
    plan = [(m, e, k) for k in layers for m in methods for e in ([None] if m in EPS_FREE else args.eps)]
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="runs", unit="run", dynamic_ncols=True)
    for method, eps, k in plan:
        try:
            row = run_one(setup, method, eps, k, args, progress)
        except (RuntimeError, ValueError, ArithmeticError) as error:
            # One failing method (e.g. a user's decomposition) must not cost the whole comparison.
            row = failed_row(method, eps, k, error, args.bn)
        rows.append(row)
        relate_to_vanilla(rows)
        meta["seconds"] = round(time.perf_counter() - started, 1)
        if hasattr(os, "getloadavg"):
            meta["load_average_1min_end"] = round(os.getloadavg()[0], 2)
        write_table(out_dir / "results", rows, meta)  # partial results survive an interrupted run
        if bar is not None:
            bar.update(1)
        (bar.write if bar is not None else print)(run_line(row, len(rows), len(plan)))
        sys.stdout.flush()
    pareto_plot(rows, out_dir / "pareto.png", run_title(meta))
    print()
    if args.note:
        print(args.note)
    print(format_table(rows))
    written = [out_dir / "results.csv", out_dir / "results.json", out_dir / "pareto.png"]
    questions = write_paper_comparison(out_dir, rows, meta)
    if questions:
        print()
        print(format_paper_table(questions))
        written += [out_dir / "paper.csv", out_dir / "paper.json"]
    print(f"\nwritten: {', '.join(map(str, written))}")
    warned = [r for r in rows if r["warnings"]]
    for r in warned:
        print(f"note: {r['method']} eps={r['eps'] or '-'} k={r['layers']}: {r['warnings']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
