"""How the HOSVD ranks chosen by ``eps`` move during fine-tuning (the paper's Figures 3 and 8).

Fine-tunes the last ``k`` conv/linear layers of a pretrained model (setup B
of :mod:`benchmarks.compare`, same loop and schedule: :mod:`benchmarks._setup`) with
``convert(model, "hosvd", eps, last=k)`` and records, at every training
step, the rank ``K_j`` HOSVD keeps along each mode ``j`` of each compressed
layer's input (batch, channels, height, width for a convolution). Plots one
panel per layer, one line per mode and ``eps``, against the training step.

Outputs ``results.csv``/``results.json`` (one row per step, eps, layer and
mode) and ``ranks.png`` under ``benchmarks/results/rank_evolution/``.
Default: the embedded digits and the small CNN, the last 4 layers, eps 0.8
and 0.9, 10 epochs (under a minute on a CPU).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tensorcomp.adapters import convert, memory_stats

from ._cli import check_eps, check_methods, run_main
from ._models import FineTuneSetting, candidate_layers
from ._report import machine_description, pyplot, save_figure, text_table, write_table
from ._setup import check_finetune_arguments, finetune_parser, finetune_schedule, parse_setup_arguments
from ._setup import pretrained_setup, resolve_layer
from ._training import Schedule, train

RESULTS = Path(__file__).resolve().parent / "results" / "rank_evolution"
PROG = "python -m benchmarks.rank_evolution"


def build_parser() -> argparse.ArgumentParser:
    parser = finetune_parser(
        PROG, "Per-mode HOSVD ranks chosen by eps at every fine-tuning step.", out=RESULTS, eps=(0.8, 0.9), layers="4"
    )
    add = parser.add_argument
    add("--method", default="hosvd", help="a Tucker-format method (hosvd, tucker, subspace) or svd")
    add("--epochs", type=int, default=10, help="fine-tuning epochs")
    add("--lr", type=float, default=0.05, help="fine-tuning learning rate, decayed to 0 by a cosine")
    add("--no-progress", action="store_true", help="no progress bars")
    return parser


def _as_tuple(rank: Any) -> tuple[int, ...]:
    return tuple(int(r) for r in rank) if isinstance(rank, (list, tuple)) else (int(rank),)


def record_ranks(setup: Any, method: str, eps: float, k: int, schedule: Schedule, progress: bool) -> list[dict[str, Any]]:
    """Fine-tune with ``method`` at ``eps``; one row per (step, layer, mode) with the rank kept."""
    torch.manual_seed(schedule.seed)
    model = setup.pretrained_model()
    setting = FineTuneSetting(model, k)
    convert(model, method, eps, last=k)
    steps_per_epoch = max(1, len(setup.finetune) // schedule.batch_size)
    train(
        model, setup.finetune, schedule, setting.parameters(), set_train_mode=setting.train,
        progress=f"{method} eps={eps:g}" if progress else None,
    )
    rows = []
    for step, record in enumerate(memory_stats(model).steps, start=1):
        for layer, entry in record.items():
            rank = entry.ranks[0]
            if rank is None:
                continue
            for mode, k_j in enumerate(_as_tuple(rank), start=1):
                rows.append({
                    "method": method, "eps": eps, "step": step, "epoch": (step - 1) / steps_per_epoch,
                    "layer": layer, "mode": mode, "rank": k_j,
                    "stored_bytes": entry.stored_bytes, "original_bytes": entry.original_bytes,
                })
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    eps_values = sorted({r["eps"] for r in rows})
    styles = dict(zip(eps_values, ["-", "--", ":", "-."] * 4))
    cols = min(2, len(layers))
    nrows = -(-len(layers) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 3.8 * nrows), squeeze=False)
    mode_names = {1: "K1 batch", 2: "K2 channels", 3: "K3 height", 4: "K4 width"}
    for ax, layer in zip(axes.flat, layers):
        modes = sorted({r["mode"] for r in rows if r["layer"] == layer})
        for mode in modes:
            color = plt.get_cmap("tab10")(mode - 1)
            for eps in eps_values:
                points = sorted((r["epoch"], r["rank"]) for r in rows if r["layer"] == layer and r["mode"] == mode and r["eps"] == eps)
                if points:
                    label = f"{mode_names.get(mode, f'K{mode}') if len(modes) > 1 else 'rank'}, ε={eps:g}"
                    ax.plot(*zip(*points), styles[eps], color=color, label=label, linewidth=1.2)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("rank kept")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="best")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    save_figure(fig, path, title)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recording; returns the exit status (2 for bad input, with a one-line message)."""
    return run_main(PROG, _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_setup_arguments(build_parser(), argv)
    check_methods([args.method])
    check_eps(args.eps)
    check_finetune_arguments(args)
    setup = pretrained_setup(args, progress=not args.no_progress)
    k = resolve_layer(args.layers, len(candidate_layers(setup.build())))
    schedule = finetune_schedule(args)
    rows: list[dict[str, Any]] = []
    for eps in args.eps:
        rows += record_ranks(setup, args.method, eps, k, schedule, not args.no_progress)
    meta = machine_description(args.device, argv)
    meta.update(setup.info)
    meta.update({"method": args.method, "layers": k, "finetune_schedule": vars(schedule)})
    write_table(args.out / "results", rows, meta)
    title = f"{args.method} ranks during fine-tuning: {args.dataset}, {args.model} {args.image_size}px, last {k} layers"
    plot(rows, args.out / "ranks.png", title)
    # Summary: first and last step's ranks per layer and eps.
    lines = []
    for eps in args.eps:
        for layer in dict.fromkeys(r["layer"] for r in rows):
            mine = [r for r in rows if r["eps"] == eps and r["layer"] == layer]
            if not mine:
                continue
            modes = sorted({r["mode"] for r in mine})
            last = max(r["step"] for r in mine)

            def at(step: int) -> str:
                return "x".join(str(r["rank"]) for r in sorted(mine, key=lambda r: r["mode"]) if r["step"] == step)

            spans = " ".join(f"{min(r['rank'] for r in mine if r['mode'] == m)}..{max(r['rank'] for r in mine if r['mode'] == m)}" for m in modes)
            lines.append([f"{eps:g}", layer, at(1), at(last), spans])
    print(text_table(["eps", "layer", "first step", "last step", "min..max per mode"], lines, left=(1, 2, 3, 4)))
    print(f"written: {args.out / 'results.csv'}, {args.out / 'results.json'}, {args.out / 'ranks.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
