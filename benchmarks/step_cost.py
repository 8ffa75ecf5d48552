"""Per-layer and per-step cost of activation compression against vanilla training.

Fine-tunes (one step at a time, timed) the last 1, 2 and 4 conv layers of
torchvision's resnet18 and mobilenet_v2 (random initialisation, earlier layers
frozen) on a batch of real images, at 32x32 and 224x224, and reports:

- per step: forward and backward milliseconds and the activation bytes the
  compressed layers store, vanilla against each method;
- per layer: the cost of a plain conv forward+backward, of the decomposition,
  of the weight gradient computed from the factors and of the same gradient
  computed by rebuilding the activation (``to_tensor`` then
  ``torch.nn.grad.conv2d_weight``), and of one warm-started subspace step.

Run ``python -m benchmarks.step_cost --help`` for the options.
"""

from __future__ import annotations

import copy
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import tensorcomp
from tensorcomp.adapters import conv2d_weight_from_factors, convert, memory_stats

from ._cli import Parser, UsageError, check_eps, check_methods, check_positive, run_main
from ._data import load_image_batch
from ._models import build_model
from ._report import machine_description, pyplot, save_figure, text_table, write_table
from ._setup import resolve_images
from ._training import Stopwatch

MODELS = ("resnet18", "mobilenet_v2")


def last_convs(model: nn.Module, k: int) -> list[str]:
    """Names of the last ``k`` ``nn.Conv2d`` layers, in registration (= forward) order."""
    convs = [name for name, m in model.named_modules() if type(m) is nn.Conv2d]
    return convs[-k:]


def _freeze_all_but(model: nn.Module, names: Sequence[str]) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        model.get_submodule(name).weight.requires_grad_(True)


def _median_ms(fn: Callable[[], Any], repeats: int, watch: Stopwatch) -> float:
    times = []
    for _ in range(repeats):
        watch.start()
        fn()
        times.append(watch.lap())
    return statistics.median(times)


def time_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, repeats: int, watch: Stopwatch) -> tuple[float, float]:
    """Median forward and backward milliseconds of one training step (after one warm-up)."""
    fwd, bwd = [], []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        watch.start()
        loss = F.cross_entropy(model(images), labels)
        forward = watch.lap()
        loss.backward()
        backward = watch.lap()
        if i:  # the first step warms up allocators and kernels
            fwd.append(forward)
            bwd.append(backward)
    return statistics.median(fwd), statistics.median(bwd)


def capture(model: nn.Module, names: Sequence[str], images: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each named layer's input activation and output gradient in one vanilla step."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for name in names:
        layer = model.get_submodule(name)

        def keep(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor, n: str = name) -> None:
            seen[n].append(args[0].detach())
            out.register_hook(lambda grad: seen[n].append(grad.detach()))

        handles.append(layer.register_forward_hook(keep))
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    for h in handles:
        h.remove()
    return {n: (v[0], v[1]) for n, v in seen.items()}


def layer_costs(
    model: nn.Module, name: str, act: torch.Tensor, act_next: torch.Tensor, grad_out: torch.Tensor,
    methods: Sequence[str], eps_values: Sequence[float], repeats: int, watch: Stopwatch,
) -> list[dict[str, Any]]:
    """Milliseconds of each piece of one layer's compressed step, against the plain conv's."""
    conv: nn.Conv2d = model.get_submodule(name)
    geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    weight = conv.weight.detach()

    def plain_conv() -> None:
        x = act.detach().requires_grad_(True)
        w = weight.detach().requires_grad_(True)
        F.conv2d(x, w, None, **geometry).backward(grad_out)

    conv_ms = _median_ms(plain_conv, repeats, watch)
    rows = []
    for method in methods:
        for eps in eps_values:
            if tensorcomp.method_info(method).warm_start:
                # Warm start from the previous batch's factors, as in training.
                init = tensorcomp.hosvd(act, eps)
                run = lambda: tensorcomp.decompose(act_next, method, eps=eps, init=init)  # noqa: E731
            else:
                run = lambda: tensorcomp.decompose(act, method, eps=eps)  # noqa: E731
            result = run()
            decompose_ms = _median_ms(run, repeats, watch)
            factor_ms = _median_ms(lambda: conv2d_weight_from_factors(result, weight.shape, grad_out, **geometry), repeats, watch)
            rebuild_ms = _median_ms(
                lambda: torch.nn.grad.conv2d_weight(result.to_tensor(), weight.shape, grad_out, **geometry), repeats, watch
            )
            rows.append({
                "layer": name,
                "shape": "x".join(map(str, act.shape)),
                "method": method,
                "eps": eps,
                "rank": str(result.rank),
                "original_bytes": act.numel() * act.element_size(),
                "stored_bytes": result.nbytes,
                "conv_fwd_bwd_ms": conv_ms,
                "decompose_ms": decompose_ms,
                "grad_weight_factors_ms": factor_ms,
                "grad_weight_rebuild_ms": rebuild_ms,
                "factors_vs_rebuild": rebuild_ms / factor_ms,
                "compress_vs_conv": decompose_ms / conv_ms,
            })
    return rows


def step_costs(
    base: nn.Module, depth: int, images: torch.Tensor, labels: torch.Tensor,
    methods: Sequence[str], eps_values: Sequence[float], repeats: int, watch: Stopwatch,
) -> list[dict[str, Any]]:
    """Forward/backward time and stored bytes of a whole training step, per method."""
    names = last_convs(base, depth)
    rows = []
    for method, eps in [(None, None)] + [(m, e) for m in methods for e in eps_values]:
        model = copy.deepcopy(base)
        _freeze_all_but(model, names)
        if method is not None:  # vanilla is the untouched torch model
            convert(model, method, eps, layers=names)
        fwd, bwd = time_step(model, images, labels, repeats, watch)
        row = {"depth": depth, "method": method or "vanilla", "eps": "" if method is None else eps,
               "forward_ms": fwd, "backward_ms": bwd, "step_ms": fwd + bwd}
        if method is not None:
            mem = memory_stats(model)
            row.update(stored_bytes=mem.peak_bytes, original_bytes=mem.original_bytes,
                       ranks="; ".join(str(v["ranks"][-1]) for v in mem.per_layer.values()))
        rows.append(row)
    # What vanilla autograd keeps for these layers: their inputs, uncompressed.
    rows[0].update(stored_bytes=rows[1]["original_bytes"], original_bytes=rows[1]["original_bytes"], ranks="")
    vanilla = rows[0]
    for row in rows:
        row["step_vs_vanilla"] = row["step_ms"] / vanilla["step_ms"]
        row["memory_vs_vanilla"] = vanilla["stored_bytes"] / row["stored_bytes"]
    return rows


PROG = "python -m benchmarks.step_cost"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--models", nargs="+", default=list(MODELS), choices=MODELS, help="torchvision architectures, random init")
    add("--sizes", nargs="+", type=int, default=[32, 224], help="image sizes")
    add("--layers", nargs="+", type=int, default=[1, 2, 4], help="numbers of trailing conv layers fine-tuned")
    add("--methods", nargs="+", default=["svd", "hosvd", "subspace"], help="registered methods to time against vanilla")
    add("--eps", nargs="+", type=float, default=[0.8, 0.9], help="energy fractions kept, in (0, 1]")
    add("--batch-size", type=int, default=64, help="images per step")
    add("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    add("--device", default="cpu", choices=("cpu", "cuda"), help="where the model and the decompositions run")
    add("--dataset", default="auto", choices=("auto", "cifar10", "digits"),
        help="images of the batches; auto: CIFAR-10 when --data-root or ../shared/data/cifar10 has it, else digits")
    add("--data-root", default=None, metavar="DIR",
        help="CIFAR-10 folder, either layout (default: ../shared/data/cifar10 beside the checkout when present)")
    add("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "step_cost",
        help="results folder (default: benchmarks/results/step_cost of this checkout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurements; returns the exit status (2 for bad input, with a one-line message)."""
    return run_main(PROG, _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_methods(args.methods)
    check_eps(args.eps)
    check_positive(batch_size=args.batch_size, repeats=args.repeats, layers=min(args.layers), sizes=min(args.sizes))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
    data = resolve_images(args.dataset, args.data_root)
    device = torch.device(args.device)
    watch = Stopwatch(device)
    from tqdm import tqdm

    step_rows, layer_rows = [], []
    jobs = [(m, s) for m in args.models for s in args.sizes]
    for model_name, size in tqdm(jobs, desc="model x size"):
        images, labels, source = load_image_batch(data, 2 * args.batch_size, size, device)
        first, second = images[: args.batch_size], images[args.batch_size :]
        y1, y2 = labels[: args.batch_size], labels[args.batch_size :]
        base = build_model(model_name, 3, 10, image_size=size)[0].to(device).train()
        for depth in tqdm(args.layers, desc=f"{model_name}@{size}", leave=False):
            for row in step_costs(base, depth, first, y1, args.methods, args.eps, args.repeats, watch):
                step_rows.append({"model": model_name, "size": size, "data": source, **row})
        names = last_convs(base, max(args.layers))
        probe = copy.deepcopy(base)
        _freeze_all_but(probe, names)
        now, later = capture(probe, names, first, y1), capture(probe, names, second, y2)
        for name in names:
            act, grad_out = now[name]
            rows = layer_costs(probe, name, act, later[name][0], grad_out, args.methods, args.eps, args.repeats, watch)
            layer_rows += [{"model": model_name, "size": size, **r} for r in rows]

    out = Path(args.out)
    meta = machine_description(device, argv)
    write_table(out / "steps", step_rows, meta)
    write_table(out / "layers", layer_rows, meta)
    plot(step_rows, layer_rows, out / "step_cost.png")
    print(summary(step_rows, layer_rows))
    return 0


def summary(step_rows: list[dict[str, Any]], layer_rows: list[dict[str, Any]]) -> str:
    """The step and per-layer rows as two text tables."""
    steps = text_table(
        ["model", "size", "depth", "method", "eps", "fwd", "bwd", "x time", "x less mem"],
        [[r["model"], str(r["size"]), str(r["depth"]), r["method"], str(r["eps"]), f"{r['forward_ms']:.1f}",
          f"{r['backward_ms']:.1f}", f"{r['step_vs_vanilla']:.2f}", f"{r['memory_vs_vanilla']:.2f}"] for r in step_rows],
        left=(0, 3),
    )
    layers = text_table(
        ["model", "size", "layer", "method", "eps", "conv", "decomp", "gW fac", "gW rebuild"],
        [[r["model"], str(r["size"]), r["layer"], r["method"], str(r["eps"]), f"{r['conv_fwd_bwd_ms']:.2f}",
          f"{r['decompose_ms']:.2f}", f"{r['grad_weight_factors_ms']:.2f}", f"{r['grad_weight_rebuild_ms']:.2f}"]
         for r in layer_rows],
        left=(0, 2, 3),
    )
    return "\n".join(["step cost (median ms; ratios vs vanilla at the same depth)", steps, "", "per layer (median ms)", layers])


def plot(step_rows: list[dict[str, Any]], layer_rows: list[dict[str, Any]], path: Path) -> None:
    """Step-time and memory ratios to vanilla, and factor vs rebuild weight-gradient time per layer."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    configs = sorted({(r["method"], r["eps"]) for r in step_rows if r["method"] != "vanilla"}, key=str)
    groups = sorted({(r["model"], r["size"], r["depth"]) for r in step_rows})
    width = 0.8 / max(len(configs), 1)
    for i, (method, eps) in enumerate(configs):
        sel = {(r["model"], r["size"], r["depth"]): r for r in step_rows if (r["method"], r["eps"]) == (method, eps)}
        xs = [j + i * width for j in range(len(groups))]
        axes[0].bar(xs, [sel[g]["step_vs_vanilla"] for g in groups], width, label=f"{method} eps={eps}")
        axes[1].bar(xs, [sel[g]["memory_vs_vanilla"] for g in groups], width, label=f"{method} eps={eps}")
    labels = [f"{m}\n{s}px L{d}" for m, s, d in groups]
    for ax, title in zip(axes[:2], ["training step time / vanilla", "vanilla stored bytes / method's"]):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], labels, fontsize=6, rotation=90)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(title)
    axes[0].axhline(1.5, color="r", lw=0.8, ls="--", label="1.5x target")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=6)
    pairs = [(r["grad_weight_rebuild_ms"], r["grad_weight_factors_ms"], r["method"]) for r in layer_rows if r["method"] != "subspace"]
    for method in sorted({p[2] for p in pairs}):
        pts = [(a, b) for a, b, m in pairs if m == method]
        axes[2].scatter([a for a, _ in pts], [b for _, b in pts], label=method, s=12)
    lim = max([max(a, b) for a, b, _ in pairs] or [1.0])
    axes[2].plot([1e-3, lim], [1e-3, lim], "k--", lw=0.8, label="equal time")
    axes[2].set(xscale="log", yscale="log", xlabel="rebuild + conv2d_weight (ms)", ylabel="from factors (ms)",
                title="weight gradient per layer: below the line = factors faster")
    axes[2].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
