"""What a training step really holds for backward, vanilla against compressed, checked against the allocator.

For each setting (model, BatchNorm mode, number of trailing trainable layers)
one training step is run four ways on the same weights and batch:

- ``vanilla``: plain autograd;
- ``hooks``: ``compress_activations(model, method, eps, modules=<the trainable layers>)``;
- ``convert``: ``convert(model, method, eps, layers=<the trainable layers>)``;
- ``layers-only``: the hook style with ``masks=False`` and the trainable
  BatchNorms in training mode kept exact, the nearest to what the adapters
  did before whole-graph compression (kept for comparison).

and reports, per way:

- the bytes the C allocator has in use between the end of forward and the
  start of backward, minus what it had before the forward and minus the
  output and loss (the *independent* measure: glibc ``mallinfo2`` on CPU,
  ``torch.cuda.memory_allocated`` on CUDA);
- the adapters' own figure, ``stats.held_bytes`` (every saved tensor, each
  storage once) and its breakdown by what holds the bytes; and for vanilla,
  a census of every tensor autograd saves (each storage once, parameters
  excluded) through a counting saved-tensor hook;
- the layers' own bytes (the paper's accounting);
- forward and backward milliseconds (median of ``--repeats`` steps);
- the largest relative error of every gradient outside the compressed
  layers' weights (and evaluation-mode BatchNorm weights) against vanilla.

Settings: the main job's model (``python -m benchmarks.compare``'s pretrained
SmallCNN on the digits, batch 128, last 2 and 4 layers) and torchvision's
resnet18 and mobilenet_v2 (random initialisation, CIFAR-10 images at 224x224
when ``../shared/data`` or ``--data-root`` has them, batch 16, last 4
layers), each with the trainable BatchNorms in training and in evaluation
mode. Run ``python -m benchmarks.held_memory --help`` for the options.
"""

from __future__ import annotations

import argparse
import copy
import gc
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tensorcomp.adapters import compress_activations, convert, memory_stats

from ._census import SavedCensus, allocator_in_use
from ._cli import Parser, UsageError, check_eps, check_methods, check_positive, run_main
from ._data import cifar10_root, load_image_batch
from ._models import FineTuneSetting, bn_eval, build_model
from ._report import machine_description, pyplot, save_figure, text_table, write_table
from ._setup import pretrained_setup, resolve_images, setup_arguments
from ._training import Stopwatch

PROG = "python -m benchmarks.held_memory"
RESULTS = Path(__file__).resolve().parent / "results" / "held_memory"
WAYS = ("vanilla", "hooks", "convert", "layers-only")
CATEGORIES = ("layer_inputs", "masks", "norm_inputs", "other")


# -- one setting ------------------------------------------------------------------


def _prepare(base: nn.Module, k: int, bn: str) -> tuple[nn.Module, list[str]]:
    model = copy.deepcopy(base)
    setting = FineTuneSetting(model, k)
    setting.train()
    if bn == "eval":
        bn_eval(model)
    return model, setting.trainable_layers


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _approximate(model: nn.Module, layers: Sequence[str], bn: str) -> set[str]:
    names = {f"{n}.weight" for n in layers}
    if bn == "eval":
        names |= {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return names


def run_way(way: str, base: nn.Module, k: int, bn: str, x: torch.Tensor, y: torch.Tensor, method: str, eps: float, repeats: int) -> dict[str, Any]:
    """One way of running the step: memory (allocator and own figures), time, gradients."""
    model, layers = _prepare(base, k, bn)
    device = x.device
    in_use = allocator_in_use(device)
    watch = Stopwatch(device)
    selects = lambda name, module: name in layers  # noqa: E731
    if way == "convert":
        convert(model, method, eps, layers=layers)
    forward_ms, backward_ms, allocated = [], [], []
    census = stats = None
    for step in range(repeats + 1):
        torch.manual_seed(step)  # the same dropout masks for every way (ours draws them as vanilla does)
        model.zero_grad(set_to_none=True)
        gc.collect()
        watch.sync()
        before = in_use()
        watch.start()
        if way == "vanilla":
            census = SavedCensus(model)
            with census:
                out = model(x)
        elif way == "convert":
            out = model(x)
        else:
            ctx = compress_activations(model, method, eps, modules=selects, masks=way == "hooks")
            with ctx:
                out = model(x)
            stats = ctx.stats
        loss = F.cross_entropy(out, y)
        forward = watch.lap()
        gc.collect()
        held_alloc = in_use() - before - out.untyped_storage().nbytes() - loss.untyped_storage().nbytes()
        watch.start()
        loss.backward()
        backward = watch.lap()
        if step:  # the first step warms allocators, kernels and warm-started methods
            forward_ms.append(forward)
            backward_ms.append(backward)
            allocated.append(held_alloc)
        del out, loss
    if way == "convert":
        stats = memory_stats(model)
    row: dict[str, Any] = {
        "allocator_bytes": int(statistics.median(allocated)),
        "forward_ms": round(statistics.median(forward_ms), 2),
        "backward_ms": round(statistics.median(backward_ms), 2),
        "gradients": _gradients(model),
        "approximate": _approximate(model, layers, bn),
        "layers": layers,
    }
    if stats is not None:
        row["held_bytes"] = stats.held_bytes
        row["held_original_bytes"] = stats.held_original_bytes
        row["layers_own_bytes"] = stats.peak_bytes
        row["layers_own_original_bytes"] = stats.original_bytes
        row["breakdown"] = stats.held_breakdown
    else:
        row["held_bytes"] = census.nbytes
    return row


def run_setting(label: str, base: nn.Module, k: int, bn: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> list[dict[str, Any]]:
    results = {way: run_way(way, base, k, bn, x, y, args.method, args.eps, args.repeats) for way in WAYS}
    vanilla = results["vanilla"]
    rows = []
    for way, r in results.items():
        errors = [
            float((r["gradients"][n] - g).norm() / g.norm().clamp_min(1e-30))
            for n, g in vanilla["gradients"].items()
            if n not in r["approximate"] and n in r["gradients"]
        ]
        row = {
            "setting": label,
            "bn": bn,
            "layers": k,
            "way": way,
            "method": "vanilla" if way == "vanilla" else args.method,
            "eps": None if way == "vanilla" else args.eps,
            "allocator_MiB": round(r["allocator_bytes"] / 2**20, 3),
            "held_MiB": round(r["held_bytes"] / 2**20, 3),
            "held_vs_allocator": round(r["held_bytes"] / r["allocator_bytes"], 3) if r["allocator_bytes"] > 0 else None,
            "allocator_ratio": round(vanilla["allocator_bytes"] / r["allocator_bytes"], 2) if r["allocator_bytes"] > 0 else None,
            "held_ratio": round(vanilla["held_bytes"] / r["held_bytes"], 2) if r["held_bytes"] else None,
            "layers_own_ratio": (
                round(r["layers_own_original_bytes"] / r["layers_own_bytes"], 1) if r.get("layers_own_bytes") else None
            ),
            "forward_ms": r["forward_ms"],
            "backward_ms": r["backward_ms"],
            "step_vs_vanilla": round((r["forward_ms"] + r["backward_ms"]) / (vanilla["forward_ms"] + vanilla["backward_ms"]), 2),
            "max_exact_grad_error": max(errors) if errors else 0.0,
        }
        for category in CATEGORIES:
            part = r.get("breakdown", {}).get(category)
            row[f"{category}_MiB"] = None if part is None else round(part["held_bytes"] / 2**20, 3)
            row[f"{category}_original_MiB"] = None if part is None else round(part["original_bytes"] / 2**20, 3)
        rows.append(row)
    return rows


# -- the settings ------------------------------------------------------------------


def main_job_setting(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """The pretrained SmallCNN of ``python -m benchmarks.compare`` and a fine-tuning batch of 128 digits."""
    setup = pretrained_setup(setup_arguments(dataset="digits", device=args.device), progress=not args.no_progress)
    model = setup.pretrained_model()
    import numpy as np

    index = np.arange(min(128, len(setup.finetune.labels)))
    x, y = setup.finetune.batch(index)
    return model, x, y, f"digits smallcnn (pretrained, top-1 {setup.info['pretrained_top1']}%), batch {len(index)}"


def torchvision_setting(name: str, args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """A torchvision model, random or (``--pretrain-epochs``) pretrained on setup B's first half, and a batch."""
    if args.pretrain_epochs:
        root = cifar10_root(args.data_root)
        if root is None:
            raise UsageError("--pretrain-epochs needs CIFAR-10: pass --data-root DIR")
        setup_args = setup_arguments(
            dataset="cifar10", data_root=root, model=name, image_size=args.image_size, pretrain_epochs=args.pretrain_epochs,
            device=args.device, limit_train=args.limit_train,
        )
        setup = pretrained_setup(setup_args, limit_test=1000, progress=not args.no_progress)
        import numpy as np

        x, y = setup.finetune.batch(np.arange(min(args.batch, len(setup.finetune))))
        top1 = setup.info["pretrained_top1"]
        return setup.pretrained_model(), x, y, (
            f"{name} (pretrained on setup B's first half of {setup.info['train_images']} CIFAR-10 images, "
            f"{args.pretrain_epochs} epochs, top-1 {top1}%) at {args.image_size}px, batch {len(x)}"
        )
    data = resolve_images("auto", args.data_root)
    x, y, source = load_image_batch(data, args.batch, args.image_size, torch.device(args.device))
    model, _ = build_model(name, 3, 10, seed=0, image_size=args.image_size)
    return model.to(args.device), x, y, f"{name} (random init), {source} at {args.image_size}px, batch {args.batch}"


# -- report ---------------------------------------------------------------------------


#: The terminal table's columns: header, width (so that the tables printed setting by setting line up), row key.
_COLUMNS = (
    ("setting", 9, "setting"), ("bn", 5, "bn"), ("k", 2, "layers"), ("way", 11, "way"), ("alloc MiB", 9, "allocator_MiB"),
    ("held MiB", 8, "held_MiB"), ("held/alloc", 10, "held_vs_allocator"), ("x alloc", 7, "allocator_ratio"),
    ("x held", 6, "held_ratio"), ("x layers", 8, "layers_own_ratio"), ("fwd ms", 7, "forward_ms"),
    ("bwd ms", 7, "backward_ms"), ("step x", 6, "step_vs_vanilla"), ("grad err", 8, "max_exact_grad_error"),
)


def _cell(key: str, width: int, value: Any) -> str:
    if value is None:
        return "-"
    if key == "max_exact_grad_error":
        return f"{value:.0e}"
    if key == "setting":
        return str(value).split()[0][:width]
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a text table, every column right-aligned and at least as wide as :data:`_COLUMNS` says."""
    lines = [[_cell(key, width, row[key]) for _, width, key in _COLUMNS] for row in rows]
    return text_table([h for h, _, _ in _COLUMNS], lines, left=(), min_widths=[w for _, w, _ in _COLUMNS])


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Stacked bars: what holds the bytes, as vanilla holds them (originals) and with compression, per setting."""
    plt = pyplot()
    hooks = [r for r in rows if r["way"] == "hooks"]
    colours = {"layer_inputs": "#4C72B0", "masks": "#DD8452", "norm_inputs": "#55A868", "other": "#8C8C8C"}
    labels = {"layer_inputs": "conv/linear inputs", "masks": "activation masks, pool indices", "norm_inputs": "normalisation inputs", "other": "other"}
    fig, axes = plt.subplots(1, len(hooks), figsize=(2.2 * len(hooks) + 1, 3.8), squeeze=False)
    for ax, row in zip(axes[0], hooks):
        for i, suffix in enumerate(("_original_MiB", "_MiB")):
            bottom = 0.0
            for c in CATEGORIES:
                value = row[f"{c}{suffix}"] or 0.0
                ax.bar(i, value, bottom=bottom, color=colours[c], label=labels[c] if i == 0 else None, width=0.6)
                bottom += value
            ax.text(i, bottom, f"{bottom:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the totals under the title
        ax.set_xticks([0, 1], ["vanilla", "compressed"], fontsize=7)
        ax.set_title(f"{row['setting'].split()[0]}, BN {row['bn']}\nlast {row['layers']} layers: {row['held_ratio']}x", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel("held for backward (MiB)", fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.06))
    save_figure(fig, path, title)


# -- command line ---------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Measure what a training step holds for backward, vanilla against the adapters, with the allocator as referee.",
    )
    add = parser.add_argument
    add("--models", nargs="+", default=["smallcnn", "resnet18", "mobilenet_v2"],
        help="settings to run: smallcnn (the main job's pretrained model), resnet18, mobilenet_v2")
    add("--method", default="hosvd", help="decomposition of the trainable layers' inputs")
    add("--eps", type=float, default=0.8, help="energy fraction to keep, in (0, 1]")
    add("--bn", nargs="+", default=["train", "eval"], choices=["train", "eval"], help="mode of the trainable BatchNorms")
    add("--layers", nargs="+", type=int, default=None, metavar="K",
        help="trailing trainable conv/linear layers (default: 2 4 for smallcnn, 4 for the torchvision models)")
    add("--batch", type=int, default=16, help="batch size of the torchvision settings")
    add("--image-size", type=int, default=224, help="image side of the torchvision settings")
    add("--data-root", default=None, metavar="DIR", help="CIFAR-10 folder (default: ../shared/data/cifar10 when present, else the digits)")
    add("--pretrain-epochs", type=int, default=0, metavar="N",
        help="pretrain the torchvision models on setup B's first half of CIFAR-10 for N epochs (cached) instead of "
        "measuring them at random initialisation (default: 0, random)")
    add("--limit-train", type=int, default=None, metavar="N", help="with --pretrain-epochs: use N CIFAR-10 training images")
    add("--repeats", type=int, default=3, help="measured steps per way (after one warm-up step)")
    add("--device", default="cpu", help="cpu or cuda")
    add("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results/held_memory of this checkout)")
    add("--no-progress", action="store_true", help="no progress bars")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_methods([args.method])
    check_eps([args.eps])
    check_positive(batch=args.batch, image_size=args.image_size, repeats=args.repeats, limit_train=args.limit_train)
    if args.pretrain_epochs < 0:
        raise UsageError(f"--pretrain-epochs must be non-negative; got {args.pretrain_epochs}")
    unknown = [m for m in args.models if m not in ("smallcnn", "resnet18", "mobilenet_v2")]
    if unknown:
        raise UsageError(f"unknown setting {unknown[0]!r}; choose from smallcnn, resnet18, mobilenet_v2")
    if args.device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", args.device):
        raise UsageError(f"unknown device {args.device!r}; choose cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    if not args.device.startswith("cuda"):
        allocator_in_use(torch.device("cpu"))
    rows: list[dict[str, Any]] = []
    descriptions = {}
    for name in args.models:
        if name == "smallcnn":
            model, x, y, description = main_job_setting(args)
            ks = args.layers or [2, 4]
        else:
            model, x, y, description = torchvision_setting(name, args)
            ks = args.layers or [4]
        descriptions[name] = description
        for bn in args.bn:
            for k in ks:
                new = run_setting(description, model, k, bn, x, y, args)
                rows += new
                print(format_table(new).split("\n", 2)[2] if rows != new else format_table(new), flush=True)
    meta = machine_description(args.device, argv if argv is not None else sys.argv[1:])
    meta.update({
        "settings": descriptions,
        "method": args.method,
        "eps": args.eps,
        "accounting": {
            "allocator_MiB": "allocator bytes in use after forward (output and loss excluded) minus before it: glibc mallinfo2 "
            "(uordblks + hblkhd) on CPU, torch.cuda.memory_allocated on CUDA; median of the measured steps",
            "held_MiB": "vanilla: every tensor autograd saves, each storage once, parameters and buffers excluded (a "
            "counting saved-tensor hook); others: the adapters' stats.held_bytes",
            "layers_own_ratio": "the compressed layers' inputs only, uncompressed over stored (the paper's accounting)",
            "max_exact_grad_error": "largest relative L2 error against vanilla of the gradients outside the compressed "
            "layers' weights (and evaluation-mode BatchNorm weights)",
        },
        "ways": {
            "hooks": "compress_activations(model, method, eps, modules=<trainable layers>)",
            "convert": "convert(model, method, eps, layers=<trainable layers>)",
            "layers-only": "compress_activations(..., masks=False): no bit masks; evaluation-mode BatchNorms still keep "
            "nothing or a decomposition",
        },
    })
    out = Path(args.out)
    write_table(out / "held_memory", rows, meta)
    plot(rows, out / "held_memory.png", f"held for backward, {args.method} eps {args.eps} ({meta['cpu'] if args.device == 'cpu' else meta.get('gpu')})")
    print(f"\nwritten: {out / 'held_memory.csv'}, {out / 'held_memory.json'}, {out / 'held_memory.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
