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
part quantised: conv/linear, normalisation and activation inputs and
attention's q, k, v; masks exact) and ``save_on_cpu``. A decomposition
method with the suffix ``+all`` (``hosvd+all``, ``svd+all``) runs that
method at each eps on every saved float tensor of the trainable part the
same way (``convert(..., norm_inputs="compress",
activation_inputs="compress", attention_inputs="compress")``; the gradients
below those ops become approximate); it is never in the default list. Top-1 comes with an error
bar: the binomial standard deviation on the test set, or with ``--seeds N``
the standard deviation over N fine-tuning seeds; differences below it are
reported as ties.

With no arguments it runs a complete comparison on data shipped with
scikit-learn (no download): handwritten digits upsampled to 32x32, a small
CNN, every method but CP (whose eps search makes a step cost 4.8x-8.9x
vanilla's there, ``benchmarks/results/compare-digits-cp-step``; ``--methods
all`` adds it), eps 0.8 and 0.9, the last 2 and 4 layers (a
few minutes on two CPU cores). ``--dataset cifar10 --data-root DIR --model resnet18``
runs the real-scale version, and ``--model vit_tiny`` a small vision
transformer at 32x32 (``benchmarks._models.build_model``) on either dataset.

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

This module is the command line, the plan of runs and what is printed; the
pieces live beside it: the setup-B options, shared with the other
fine-tuning benchmarks, in ``benchmarks._setup``; one fine-tuning run and
its row in ``benchmarks._finetune``; the paper's questions in
``benchmarks._paper``; the figure in ``benchmarks._pareto``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import Parser, UsageError, check_eps, check_positive, run_main, split_names
from ._finetune import ALL_SUFFIX, BASELINES, MEMORY_COLUMNS, base_method, failed_row, is_compress_all, relate_to_vanilla
from ._finetune import run_one, step_ms, tied
from ._paper import format_paper_table, write_paper_comparison
from ._pareto import pareto_plot
from ._report import machine_description, text_table, write_table
from ._setup import DEFAULTS, MODEL_DEFAULTS, SETUP_DEFAULTED, add_setup_arguments, check_finetune_arguments, finetune_schedule
from ._setup import parse_setup_arguments, pretrained_setup, resolve_layers

#: Shown first where a list of methods is printed; every other method follows in the catalogue's order.
_SHOWN_FIRST = ("vanilla", "svd", "hosvd", "tucker", "cp", "tt", "subspace")
#: Left out of the default comparison, and why: with its eps search capped at --cp-max-rank, a CP step costs
#: 4.8x (last 2 layers) and 8.9x (last 4) vanilla's on the digits job, beyond the 3x the default grid allows.
DEFAULT_EXCLUDED = {"cp": "its eps search costs 4.8x-8.9x a vanilla step on the digits job"}


def all_methods() -> tuple[str, ...]:
    """Every method the comparison can run: the catalogue's (``tensorcomp.available_methods()``) and :data:`BASELINES`."""
    import tensorcomp
    import tensorcomp.adapters  # noqa: F401  (registers the baselines)

    registered = tensorcomp.available_methods()
    first = [m for m in _SHOWN_FIRST if m in registered]
    return (*first, *(m for m in registered if m not in first), *BASELINES)


def uses_eps(method: str) -> bool:
    """Whether ``method`` has an energy threshold (else it runs once per depth, whatever ``--eps`` holds).

    ``<name>+all`` has its method's threshold.
    """
    import tensorcomp

    return method not in BASELINES and tensorcomp.method_info(base_method(method)).uses_eps


def compress_all_bases() -> tuple[str, ...]:
    """The methods that take the ``+all`` suffix: every registered method whose catalogue record uses eps."""
    return tuple(m for m in all_methods() if m not in BASELINES and uses_eps(m))


def default_methods() -> tuple[str, ...]:
    """The default comparison: every method but those in :data:`DEFAULT_EXCLUDED`."""
    return tuple(m for m in all_methods() if m not in DEFAULT_EXCLUDED)


DEFAULT_EPS = (0.8, 0.9)
DEFAULT_LAYERS = ("2", "4")
DEFAULT_CP_MAX_RANK = 4
DEFAULT_CP_ITERS = 20
RESULTS = Path(__file__).resolve().parent / "results"
PROG = "python -m benchmarks.compare"


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
            "--model smallcnn --image-size 32, all methods but cp (its eps search makes a step cost 4.8x-8.9x vanilla's; "
            "add it with --methods all), --eps 0.8 0.9, --layers 2 4, --bn eval, "
            f"--epochs {DEFAULTS['digits']['epochs']} --pretrain-epochs {DEFAULTS['digits']['pretrain_epochs']}: "
            "a few minutes on two CPU cores. Real scale: --dataset cifar10 --data-root DIR --model resnet18 "
            f"(--image-size 224, --epochs {DEFAULTS['cifar10']['epochs']}, "
            f"--pretrain-epochs {DEFAULTS['cifar10']['pretrain_epochs']} by default). "
            "A small vision transformer: --model vit_tiny (torchvision's VisionTransformer, 4x4 patches, 6 blocks of "
            "4 heads, width 128, MLP 256, no dropout; --image-size 32 on either dataset, "
            f"--pretrain-epochs {MODEL_DEFAULTS['vit_tiny']['digits']['pretrain_epochs']} on digits and "
            f"{MODEL_DEFAULTS['vit_tiny']['cifar10']['pretrain_epochs']} on cifar10 by default); its conv/linear "
            "layers are the patch embedding, each block's two MLP layers and the head, the attention projections "
            "staying frozen. "
            "Pretrained checkpoints and decoded images are cached under $TENSORCOMP_CACHE or ~/.cache/tensorcomp. "
            "A decomposition of your own: register it with tensorcomp.register(name, fn) in a script, then call "
            "benchmarks.compare.main(['--methods', 'vanilla', 'hosvd', name])."
        ),
    )
    add = parser.add_argument
    methods = all_methods()
    add("--methods", nargs="+", default=list(default_methods()), metavar="NAME",
        help=f"methods to compare (space or comma separated; 'all' = {' '.join(methods)}); "
        "any method registered with tensorcomp.register works by name (default: every method but cp). "
        f"NAME{ALL_SUFFIX} (e.g. hosvd{ALL_SUFFIX}, svd{ALL_SUFFIX}; any method with an eps: "
        f"{', '.join(compress_all_bases())}) runs NAME at each eps on every saved float tensor of the trainable "
        "part: besides the conv/linear inputs, the normalisation and GELU/SiLU inputs and attention's q, k, v are "
        "stored decomposed (convert(..., norm_inputs='compress', activation_inputs='compress', "
        "attention_inputs='compress'); the gradients below those ops become approximate); never in 'all' "
        "or the default")
    add("--eps", nargs="+", type=float, default=list(DEFAULT_EPS),
        help="energy fractions to keep, in (0, 1], as each method defines it (HOSVD: of each mode's energy); "
        f"methods without a threshold ({', '.join(sorted(m for m in methods if not uses_eps(m)))}) run once per "
        "depth (default: 0.8 0.9)")
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


# -- arguments and the plan of runs ---------------------------------------------


def resolve_methods(values: Sequence[str]) -> list[str]:
    names = split_names(values)
    if not names:
        raise UsageError("--methods needs at least one name")
    out: list[str] = []
    for name in names:
        for expanded in all_methods() if name == "all" else [name]:
            if expanded not in out:
                out.append(expanded)
    available = all_methods()
    unknown = [name for name in out if name not in available and not is_compress_all(name)]
    if unknown:
        raise UsageError(f"unknown method {', '.join(map(repr, unknown))}; available: {', '.join(available)}")
    bases = compress_all_bases()
    for name in out:
        if not is_compress_all(name) or base_method(name) in bases:
            continue
        base = base_method(name)
        why = (f"unknown method {base!r}" if base not in available
               else f"{base!r} has no eps (the suffix is for the decomposition methods)")
        raise UsageError(f"bad method {name!r}: {why}; {ALL_SUFFIX!r} takes one of: {', '.join(bases)}")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, parsed and checked; ``--epochs`` and the setup options left unset get the dataset's defaults."""
    args = parse_setup_arguments(build_parser(), argv, (*SETUP_DEFAULTED, "epochs"))
    check_eps(args.eps)
    check_finetune_arguments(args)
    check_positive(cp_max_rank=args.cp_max_rank, cp_iters=args.cp_iters, limit_test=args.limit_test, seeds=args.seeds)
    return args


def plan_runs(methods: Sequence[str], eps_values: Sequence[float], layers: Sequence[int]) -> list[tuple[str, float | None, int]]:
    """Every ``(method, eps, k)`` to run, depth by depth; a method without a threshold (:func:`uses_eps`) once per depth."""
    return [(m, e, k) for k in layers for m in methods for e in (eps_values if uses_eps(m) else [None])]


# -- output -------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


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
            f"{step_ms(r):.1f}",
            "-" if r["step_vs_vanilla"] is None else f"{r['step_vs_vanilla']:.2f}x",
        ])
    return text_table(header, lines, left=(0, 4, 10))


def run_title(meta: dict[str, Any]) -> str:
    """A run's one-line description from its metadata, with its note (if any) wrapped below."""
    import textwrap

    epochs = meta.get("finetune_schedule", {}).get("epochs", "?")
    title = f"{meta.get('dataset')}, {meta.get('model')} {meta.get('image_size')}px, setup B, {epochs} fine-tuning epochs"
    if meta.get("note"):
        title += "\n" + textwrap.fill(meta["note"], 100)
    return title


def run_line(row: dict[str, Any], done: int, total: int) -> str:
    """The one line printed when a run finishes (with or without progress bars)."""
    eps = row["eps"] if row["eps"] != "" else "-"
    head = f"[{done}/{total}] {row['method']:<14} eps={eps:<4} k={row['layers']}:"
    if row["top1"] is None:
        return f"{head} {row['warnings']}"
    ratio = "" if row["held_vs_vanilla"] is None or row["method"] == "vanilla" else f" ({row['held_vs_vanilla']:.2f}x less than vanilla)"
    return (f"{head} top-1 {row['top1']:6.2f} ± {row['top1_err']:.2f}%  held {_bytes(row['held_bytes'])}{ratio}  "
            f"step {step_ms(row):.1f} ms ({row['seconds']:.0f} s)")


def run_metadata(args: argparse.Namespace, methods: Sequence[str], layers: Sequence[int]) -> dict[str, Any]:
    """What a run's ``results.json`` says of its fine-tuning, memory columns, baselines and plan."""
    schedule = finetune_schedule(args)
    return {
        "note": args.note,
        "finetune_schedule": {
            "optimizer": "SGD", "lr": schedule.lr, "lr_schedule": "cosine to 0 over all steps",
            "momentum": schedule.momentum, "weight_decay": schedule.weight_decay, "grad_clip_l2": schedule.clip,
            "batch_size": schedule.batch_size, "epochs": schedule.epochs, "seed": schedule.seed,
            "drop_last_partial_batch": True, "random_flip": schedule.flip,
        },
        "trainable": "the last k conv/linear layers (convert(..., last=k)) and the normalisation layers after the first of them",
        "memory": MEMORY_COLUMNS,
        "bn": f"trainable BatchNorm layers in {args.bn} mode during fine-tuning" + (
            " (statistics frozen, as the paper's code: set_bn_eval)" if args.bn == "eval" else ""),
        "seeds": args.seeds,
        "top1_err": "standard deviation over seeds" if args.seeds > 1 else "binomial standard deviation on the test set",
        "baselines": {
            "checkpoint": "torch.utils.checkpoint (non-reentrant) around the trainable part (benchmarks._models.checkpoint_trainable)",
            "quant8_all/quant4_all": "convert(model, 'quant8'/'quant4', norm_inputs='compress', "
            "activation_inputs='compress', attention_inputs='compress'): every saved float tensor of the trainable "
            "part quantised (conv/linear, normalisation and GELU/SiLU inputs, attention's q, k, v), masks exact",
            "save_on_cpu": "layer inputs moved to host memory (host_bytes); held_bytes counts them, on any device",
        },
        "compress_all": f"<method>{ALL_SUFFIX}: convert(model, method, eps, norm_inputs='compress', "
        "activation_inputs='compress', attention_inputs='compress'): the method's decomposition of every saved float "
        "tensor of the trainable part (conv/linear, normalisation and GELU/SiLU inputs, attention's q, k, v) is kept "
        "instead of the tensor; the gradients below those ops are approximate",
        "cp_max_rank": args.cp_max_rank,
        "cp_iters": args.cp_iters,
        "methods": list(methods),
        "eps": args.eps,
        "layers": list(layers),
    }


# -- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status (2 for bad input, with a one-line message)."""
    return run_main(PROG, _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    methods = resolve_methods(args.methods)

    from ._models import build_model, candidate_layers

    probe, _ = build_model(args.model, 1 if args.dataset == "digits" else 3, 10, image_size=args.image_size)
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
    meta.update(run_metadata(args, methods, layers))
    how = "cached checkpoint" if setup.info["pretrain_reused"] else f"{setup.info['pretrain_seconds']:.0f} s"
    print(
        f"{args.dataset} ({setup.info['data_source']}), {args.model} at {args.image_size}x{args.image_size}: "
        f"pretrained on {setup.info['pretrain_images']} images ({how}), "
        f"test top-1 {setup.info['pretrained_top1']:.2f}%; fine-tuning on {setup.info['finetune_images']}, "
        f"testing on {setup.info['test_images']}",
        flush=True,
    )
    plan = plan_runs(methods, args.eps, layers)
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
