"""Fine-tune one model with every activation-storage method and compare accuracy and memory.

The paper's setup B (Nguyen et al., NeurIPS 2024): the training set is cut
into two disjoint, class-skewed halves; the model is pretrained on the first
(cached on disk), then, for each method, ``eps`` and number of trainable
layers ``k``, a copy of it is fine-tuned on the second half with only its last
``k`` conv/linear layers trainable, those layers converted with
``tensorcomp.adapters.convert(model, method, eps, last=k)``, and evaluated on
the test set. Every run uses the same seed, data order, optimizer (SGD,
momentum 0, weight decay 1e-4, learning rate 0.05 with cosine decay, gradients
clipped at L2 norm 2.0) and batch size. Activation memory is what the
converted layers store for backward, read with ``memory_stats(model)``; the
``"vanilla"`` method stores the activations as they are and is measured the
same way.

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
data split, pretraining) and ``pareto.png`` (accuracy against peak
activation memory).

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
    "save_on_cpu",
)
#: Methods with no energy threshold: run once per depth, whatever ``--eps`` holds.
EPS_FREE = frozenset(
    {"vanilla", "save_on_cpu", "gradfilter_r2", "gradfilter_r4", "gradfilter_r7", "quant8", "quant4", "quant2"}
)
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
            "accuracy, activation memory and step time."
        ),
        epilog=(
            "Default (no arguments): --dataset digits (scikit-learn's handwritten digits, no download) "
            "--model smallcnn --image-size 32, all methods but cp (its ALS fits cost seconds per step on a CPU; "
            "add it with --methods all), --eps 0.8 0.9, --layers 2 4, "
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
    available = tensorcomp.available_methods()
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
    check_positive(epochs=args.epochs, cp_max_rank=args.cp_max_rank, cp_iters=args.cp_iters, limit_test=args.limit_test)
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


def run_one(setup: Any, method: str, eps: float | None, k: int, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    import torch

    from tensorcomp.adapters import convert, memory_stats

    from ._models import FineTuneSetting
    from ._training import Schedule, evaluate, train

    torch.manual_seed(args.seed)
    model = setup.pretrained_model()
    setting = FineTuneSetting(model, k)
    kwargs: dict[str, Any] = {"max_rank": args.cp_max_rank, "n_iter_max": args.cp_iters} if method == "cp" else {}
    convert(model, method, 0.9 if eps is None else eps, last=k, **kwargs)
    schedule = Schedule(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.0, weight_decay=1e-4, clip=2.0,
        seed=args.seed, flip=args.dataset != "digits",
    )
    label = f"{method}" + ("" if eps is None else f" eps={eps:g}") + f" k={k}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = train(
            model, setup.finetune, schedule, setting.parameters(), set_train_mode=setting.train,
            progress=label if progress else None,
        )
    top1 = evaluate(model, setup.test)
    stats = memory_stats(model)
    ranks, rank_detail = summarize_ranks(stats.per_layer)
    messages: dict[str, int] = {}
    for w in caught:
        text = str(w.message).split(";")[0]
        messages[text] = messages.get(text, 0) + 1
    final_loss = sum(log.losses[-5:]) / max(1, len(log.losses[-5:]))
    row = {
        "method": method,
        "eps": "" if eps is None else eps,
        "layers": k,
        "top1": round(top1, 2),
        "peak_bytes": stats.peak_bytes,
        "mean_bytes": round(stats.mean_bytes, 1),
        "std_bytes": round(stats.std_bytes, 1),
        "vanilla_bytes": stats.original_bytes,
        "compression_ratio": round(stats.compression_ratio, 3),
        "ranks": ranks,
        "forward_ms": round(log.forward_median_ms, 2),
        "backward_ms": round(log.backward_median_ms, 2),
        "steps": len(log.losses),
        "final_loss": round(final_loss, 4),
        "seconds": round(log.seconds, 2),
        "trainable_layers": " ".join(setting.trainable_layers),
        "ranks_per_layer": json.dumps(rank_detail),
        "warnings": "; ".join(f"{m} (x{n})" for m, n in messages.items()),
    }
    if log.cuda_peak_bytes:
        row["cuda_peak_bytes"] = max(log.cuda_peak_bytes)
    if not math.isfinite(final_loss):
        row["warnings"] = (row["warnings"] + "; " if row["warnings"] else "") + "training diverged (non-finite loss)"
    return row


def failed_row(method: str, eps: float | None, k: int, error: BaseException) -> dict[str, Any]:
    """The row of a run that raised: no numbers, the error in ``warnings``."""
    message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    keys = ("top1", "peak_bytes", "mean_bytes", "std_bytes", "vanilla_bytes", "compression_ratio", "forward_ms", "backward_ms")
    row: dict[str, Any] = {"method": method, "eps": "" if eps is None else eps, "layers": k}
    row.update(dict.fromkeys(keys))
    row.update({"ranks": "-", "steps": 0, "final_loss": None, "seconds": None, "trainable_layers": "", "ranks_per_layer": "{}"})
    row["warnings"] = f"failed: {message}"
    return row


# -- output -------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _mem_unit(rows: Sequence[dict[str, Any]]) -> tuple[str, float]:
    peak = max((r["peak_bytes"] or 0 for r in rows), default=0)
    return ("MiB", 2.0**20) if peak >= 2**20 else ("KiB", 2.0**10)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as an aligned text table (one line per run)."""
    vanilla = {r["layers"]: r["top1"] for r in rows if r["method"] == "vanilla" and r["top1"] is not None}
    header = ["method", "eps", "#layers", "top-1 %", "vs vanilla", "peak mem", "mean ± std mem", "ratio", "ranks", "fwd ms", "bwd ms"]
    lines = []
    for r in rows:
        eps = f"{r['eps']:g}" if r["eps"] != "" else "-"
        if r["top1"] is None:
            lines.append([r["method"], eps, str(r["layers"]), "failed", "", "", "", "", "see notes", "", ""])
            continue
        delta = f"{r['top1'] - vanilla[r['layers']]:+.2f}" if r["layers"] in vanilla else ""
        ranks = r["ranks"] if len(r["ranks"]) <= 28 else r["ranks"][:27] + "…"
        lines.append([
            r["method"], eps, str(r["layers"]), f"{r['top1']:.2f}", delta,
            _bytes(r["peak_bytes"]), f"{_bytes(r['mean_bytes'])} ± {_bytes(r['std_bytes'])}",
            f"{r['compression_ratio']:.1f}x", ranks, f"{r['forward_ms']:.1f}", f"{r['backward_ms']:.1f}",
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    left = {0, 8}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


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


def paper_comparison(rows: Sequence[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """The paper's three questions, answered from one run's rows, with its Table 1 ratios beside ours.

    One row per (layers, eps) that has vanilla, ``svd`` and ``hosvd`` results:
    memory ratios to vanilla and HOSVD's ratio to SVD (does HOSVD store
    >= 10x less?); SVD's top-1 minus HOSVD's (is SVD more accurate?); and
    the best top-1 of the gradient filters that store at least as much as
    HOSVD, minus HOSVD's (is gradient filtering less accurate at equal or
    more memory? ``None`` when no filter stores that much). Accuracies are
    top-1 % on the run's test set, where one test image is
    ``100 / test_images`` points: differences of a few images are noise.
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
            larger = [f for f in filters if f["peak_bytes"] >= hosvd["peak_bytes"]]
            best = max(larger, key=lambda f: f["top1"], default=None)
            out.append({
                "layers": k,
                "eps": eps,
                "vanilla_top1": vanilla["top1"],
                "svd_top1": svd["top1"],
                "hosvd_top1": hosvd["top1"],
                "svd_vs_vanilla": _ratio(vanilla["peak_bytes"], svd["peak_bytes"]),
                "hosvd_vs_vanilla": _ratio(vanilla["peak_bytes"], hosvd["peak_bytes"]),
                "hosvd_vs_svd": _ratio(svd["peak_bytes"], hosvd["peak_bytes"]),
                "paper_svd_vs_vanilla": paper["svd"] if paper else None,
                "paper_hosvd_vs_vanilla": paper["hosvd"] if paper else None,
                "paper_hosvd_vs_svd": _ratio(paper["hosvd"], paper["svd"]) if paper else None,
                "hosvd_10x_less_than_svd": svd["peak_bytes"] >= 10 * hosvd["peak_bytes"],
                "svd_minus_hosvd_top1": round(svd["top1"] - hosvd["top1"], 2),
                "gradfilter": best["method"] if best else None,
                "gradfilter_vs_vanilla": _ratio(vanilla["peak_bytes"], best["peak_bytes"]) if best else None,
                "gradfilter_minus_hosvd_top1": round(best["top1"] - hosvd["top1"], 2) if best else None,
            })
    return out


def format_paper_table(rows: Sequence[dict[str, Any]]) -> str:
    """The paper-comparison rows as a terminal table."""
    def num(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "the paper's questions (memory: vanilla's peak / the method's; paper: its Table 1, ImageNet, eps 0.8;",
        "GF: the most accurate gradient filter storing at least as much as HOSVD; top-1 differences in points)",
        f"{'k':>2} {'eps':>4} | {'van/SVD':>7} {'paper':>5} {'van/HOSVD':>9} {'paper':>5} {'SVD/HOSVD':>9} {'paper':>5} | "
        f"{'top1 van':>8} {'HOSVD':>6} {'SVD-HOSVD':>9} | {'GF':<13} {'van/GF':>6} {'GF-HOSVD':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['layers']:>2} {r['eps']:>4} | {num(r['svd_vs_vanilla']):>7} {num(r['paper_svd_vs_vanilla']):>5} "
            f"{num(r['hosvd_vs_vanilla']):>9} {num(r['paper_hosvd_vs_vanilla']):>5} "
            f"{num(r['hosvd_vs_svd']):>9} {num(r['paper_hosvd_vs_svd']):>5} | "
            f"{num(r['vanilla_top1'], '.2f'):>8} {num(r['hosvd_top1'], '.2f'):>6} {num(r['svd_minus_hosvd_top1'], '+.2f'):>9} | "
            f"{r['gradfilter'] or '-':<13} {num(r['gradfilter_vs_vanilla']):>6} {num(r['gradfilter_minus_hosvd_top1'], '+.2f'):>8}"
        )
    return "\n".join(lines)


def write_paper_comparison(out_dir: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Write ``paper.csv``/``paper.json`` beside a run's results; returns the rows (empty: nothing written)."""
    from ._report import write_table

    table = paper_comparison(rows, meta.get("model", ""))
    if table:
        info = {key: meta[key] for key in ("date", "command", "device", "cpu", "gpu", "model", "dataset",
                                            "image_size", "test_images", "note") if key in meta}
        info["paper"] = ("Nguyen et al., NeurIPS 2024, Table 1: ImageNet, setup B, eps 0.8; "
                         "vanilla's activation memory / the method's at the same #layers")
        info["derived_from"] = "results.json beside this file (benchmarks.compare.paper_comparison)"
        info["gradfilter"] = "the most accurate gradient filter storing at least HOSVD's peak (empty: none does)"
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


def pareto_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Top-1 accuracy against peak activation memory (log x): one curve per method and eps, a marker per #layers."""
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
    # Distinct hues first (tab10 without its grey), then the lighter Set2 for longer lists.
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7] + list(plt.get_cmap("Set2").colors)
    others = [m for m in methods if m != "vanilla"]
    colors = {m: palette[i % len(palette)] for i, m in enumerate(others)}
    colors["vanilla"] = "black"
    all_eps = sorted({r["eps"] for r in rows if r["eps"] != ""})
    styles = dict(zip(all_eps, ["-", "--", ":", "-."] * 4))
    fig, ax = plt.subplots(figsize=(9, 6))
    series: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["method"], r["eps"]), []).append(r)
    for (method, eps), points in series.items():
        points = sorted(points, key=lambda r: r["peak_bytes"])
        xs = [max(r["peak_bytes"], 1) / scale for r in points]
        ys = [r["top1"] for r in points]
        label = method if eps == "" else f"{method} ε={eps:g}"
        # Vanilla on top: exact methods (save_on_cpu) share its points.
        z, width = (3, 2.0) if method == "vanilla" else (2, 1.3)
        ax.plot(xs, ys, styles.get(eps, "-"), color=colors[method], alpha=0.85, label=label, zorder=z, linewidth=width)
        for x, y, r in zip(xs, ys, points):
            ax.plot(x, y, markers[r["layers"]], color=colors[method], markersize=6, zorder=z)
    ax.set_xscale("log")
    ax.set_xlabel(f"peak activation memory of the fine-tuned layers ({unit}, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    method_legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="method")
    ax.add_artist(method_legend)
    handles = [Line2D([], [], marker=markers[d], linestyle="", color="grey", label=f"{d} layers") for d in depths]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8, title="#layers")
    save_figure(fig, path, tight_layout=False)  # the legends sit outside the axes


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
        "memory": "bytes the converted layers store for backward per step (memory_stats); peak/mean/std over fine-tuning steps",
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
            row = failed_row(method, eps, k, error)
        rows.append(row)
        meta["seconds"] = round(time.perf_counter() - started, 1)
        if hasattr(os, "getloadavg"):
            meta["load_average_1min_end"] = round(os.getloadavg()[0], 2)
        write_table(out_dir / "results", rows, meta)  # partial results survive an interrupted run
        if bar is not None:
            bar.update(1)
            eps_text = row["eps"] if row["eps"] != "" else "-"
            if row["top1"] is None:
                bar.write(f"  {method:<14} eps={eps_text:<4} k={k}: {row['warnings']}")
            else:
                bar.write(
                    f"  {method:<14} eps={eps_text:<4} k={k}: top-1 {row['top1']:6.2f}%  "
                    f"peak {_bytes(row['peak_bytes'])} ({row['compression_ratio']:.1f}x less than vanilla)"
                )
    if bar is not None:
        bar.close()
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
