"""How much the weight gradients change when activations are kept as truncated decompositions.

For each ``eps``, the last ``k`` conv/linear layers of a pretrained model (the
setup B of :mod:`benchmarks.compare`, from :mod:`benchmarks._setup`) are converted with
``tensorcomp.adapters.convert(model, method, eps, last=k)`` and one training
batch is run forward and backward, next to the same model unconverted. For
each converted layer it reports

- the measured signal-to-noise ratio of the weight gradient,
  ``SNR = ||dW||^2 / ||dW - dW_eps||^2`` (``dW``: exact gradient,
  ``dW_eps``: gradient computed from the stored decomposition), averaged
  (geometrically) over ``--batches`` batches;
- the paper's prediction ``1 / (1 - eps)^2``;
- the energy actually kept by the decomposition of the layer's input, and
  the same prediction evaluated there, ``1 / (1 - kept)^2``, with the SNR
  of the activation itself, ``||X||^2 / ||X - X_eps||^2 = 1 / (1 - kept)``.
  For SVD ``kept >= eps``; HOSVD keeps ``eps`` of each *mode's* energy, so
  of the whole tensor it keeps less than ``eps``;

and checks that the gradient with respect to the network's input is
unchanged: compression only touches what a layer stores to compute its
*weight* gradient; the gradient it passes on needs only its weight.

With ``--norm-inputs compress`` it also measures what that option costs:
the trainable part runs with its normalisation layers in *training* mode,
once keeping their inputs exactly (the default) and once decomposed
(``convert(..., norm_inputs="compress")``), and ``norm_inputs.csv`` reports
the relative error of the network input's gradient and of every trainable
parameter's gradient against vanilla, for each ``eps``: with exact norm
inputs only the converted layers' weights move; with compressed ones the
error reaches everything below the first normalisation.

Outputs ``results.csv``/``results.json`` and ``snr.png`` under
``benchmarks/results/gradient_snr/``. Default: the embedded digits and the
small CNN, every layer, HOSVD and SVD (seconds on a CPU).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import tensorcomp
from tensorcomp.adapters import convert

from ._cli import UsageError, check_eps, check_methods, check_positive, run_main
from ._models import FineTuneSetting, candidate_layers
from ._report import machine_description, pyplot, save_figure, text_table, write_table
from ._setup import finetune_parser, parse_setup_arguments, pretrained_setup, resolve_layer

RESULTS = Path(__file__).resolve().parent / "results" / "gradient_snr"
DEFAULT_EPS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
PROG = "python -m benchmarks.gradient_snr"


def build_parser() -> argparse.ArgumentParser:
    parser = finetune_parser(
        PROG,
        "Measured SNR of compressed weight gradients against the prediction 1/(1-eps)^2; input gradients unchanged.",
        out=RESULTS, eps=DEFAULT_EPS, eps_range="(0, 1)",
    )
    add = parser.add_argument
    add("--methods", nargs="+", default=["hosvd", "svd"], help="decompositions to measure")
    add("--batches", type=int, default=2, help="training batches averaged over")
    add("--norm-inputs", choices=["exact", "compress"], default="exact",
        help="with 'compress', also measure the gradient error of decomposing training-mode normalisation inputs "
        "(norm_inputs.csv)")
    return parser


def _gradients(model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Weight gradients of ``names`` and the gradient with respect to the input, in float64."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    grads = {name: model.get_submodule(name).weight.grad.detach().double().clone() for name in names}
    return grads, x.grad.detach().double()


def _layer_inputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0].detach()))
        for name in names
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return inputs


def measure(setup: Any, methods: Sequence[str], eps_values: Sequence[float], k: int | None, batches: int, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """One row per (method, eps, layer): measured and predicted SNR, kept energy, input-gradient check."""
    reference = setup.pretrained_model()
    k = k or len(candidate_layers(reference))
    setting = FineTuneSetting(reference, k)
    names = setting.trainable_layers
    # Evaluation-mode normalisation: both models compute exactly the same
    # forward, so any gradient difference comes from the stored activations.
    reference.eval()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(setup.finetune), generator=generator)
    data = [setup.finetune.batch(order[i * batch_size : (i + 1) * batch_size]) for i in range(batches)]
    exact = [_gradients(reference, names, x, y) for x, y in data]
    inputs = [_layer_inputs(reference, names, x) for x, _ in data]
    rows = []
    for method in methods:
        tokens = tensorcomp.method_info(method).linear_view == "tokens"  # as the adapters present a linear layer's input
        for eps in eps_values:
            model = copy.deepcopy(reference)
            convert(model, method, eps, layers=names)
            model.eval()
            for module in model.modules():  # compressed layers store decompositions in training mode only
                if hasattr(module, "compressor"):
                    module.train()
            log_snr = {name: 0.0 for name in names}
            kept = {name: 0.0 for name in names}
            input_diff = 0.0
            for (x, y), (grads, grad_x), acts in zip(data, exact, inputs):
                approx, approx_x = _gradients(model, names, x, y)
                input_diff = max(input_diff, float((approx_x - grad_x).abs().max() / grad_x.abs().max().clamp_min(1e-30)))
                for name in names:
                    noise = float((grads[name] - approx[name]).square().sum())
                    signal = float(grads[name].square().sum())
                    log_snr[name] += math.log10(signal / max(noise, 1e-300))
                    view = acts[name]
                    if view.dim() > 2 and tokens and isinstance(model.get_submodule(name), nn.Linear):
                        view = view.reshape(-1, view.shape[-1])
                    kept[name] += tensorcomp.decompose(view, method, eps=eps).explained_variance
            for name in names:
                kept_energy = kept[name] / len(data)
                snr = 10 ** (log_snr[name] / len(data))
                predicted = 1.0 / (1.0 - eps) ** 2
                rows.append({
                    "method": method,
                    "eps": eps,
                    "layer": name,
                    "kept_energy": round(kept_energy, 5),
                    "snr_measured": round(snr, 3),
                    "snr_predicted": round(predicted, 3),
                    "measured_over_predicted": round(snr / predicted, 3),
                    "snr_predicted_from_kept": round(1.0 / max(1.0 - kept_energy, 1e-12) ** 2, 3),
                    "activation_snr": round(1.0 / max(1.0 - kept_energy, 1e-12), 3),
                    "input_grad_max_rel_diff": float(f"{input_diff:.3g}"),
                })
    return rows


def _all_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.detach().double().clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["<input>"] = x.grad.detach().double()
    return grads


def measure_norm_inputs(setup: Any, method: str, eps_values: Sequence[float], k: int | None, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """Relative gradient errors with training-mode normalisation inputs kept exactly and decomposed."""
    base = setup.pretrained_model()
    k = k or len(candidate_layers(base))
    names = FineTuneSetting(copy.deepcopy(base), k).trainable_layers
    order = torch.randperm(len(setup.finetune), generator=torch.Generator().manual_seed(seed))
    x, y = setup.finetune.batch(order[:batch_size])

    def fresh() -> nn.Module:
        model = copy.deepcopy(base)
        FineTuneSetting(model, k).train()  # the trainable part's norms in training mode
        return model

    exact = _all_gradients(fresh(), x, y)
    rows = []
    for eps in eps_values:
        for option in ("exact", "compress"):
            model = fresh()
            convert(model, method, eps, layers=names, norm_inputs=option)
            got = _all_gradients(model, x, y)
            for name, g in exact.items():
                error = float((got[name] - g).norm() / g.norm().clamp_min(1e-30))
                kind = "input" if name == "<input>" else ("layer weight" if name.rsplit(".", 1)[0] in names and name.endswith("weight") else "other")
                rows.append({"method": method, "eps": eps, "norm_inputs": option, "gradient": name, "kind": kind,
                             "relative_error": float(f"{error:.3g}")})
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4.5), squeeze=False, sharey=True)
    eps_grid = sorted({r["eps"] for r in rows})
    fine = [e for e in (i / 200 for i in range(int(min(eps_grid) * 200), int(max(eps_grid) * 200) + 1))]
    for ax, method in zip(axes[0], methods):
        layers = list(dict.fromkeys(r["layer"] for r in rows if r["method"] == method))
        for i, layer in enumerate(layers):
            points = sorted((r["eps"], r["snr_measured"]) for r in rows if r["method"] == method and r["layer"] == layer)
            ax.plot(*zip(*points), "o-", color=plt.get_cmap("tab10")(i % 10), label=layer, markersize=4)
        ax.plot(fine, [1 / (1 - e) ** 2 for e in fine], "k--", label="1/(1-ε)² (paper)")
        ax.plot(fine, [1 / (1 - e) for e in fine], "k:", label="1/(1-ε)")
        ax.set_yscale("log")
        ax.set_xlabel("ε (energy kept)")
        ax.set_title(method)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("weight-gradient SNR  ||dW||² / ||dW - dW_ε||²")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    save_figure(fig, path, title)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; returns the exit status (2 for bad input, with a one-line message)."""
    return run_main(PROG, _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_setup_arguments(build_parser(), argv)
    check_methods(args.methods)
    check_eps(args.eps, allow_one=False)  # at 1 the gradient noise is zero: no SNR to measure
    check_positive(batches=args.batches)
    k = resolve_layer(args.layers)  # 'all': None, every layer once the model is built
    setup = pretrained_setup(args)
    if args.batches * args.batch_size > len(setup.finetune):
        raise UsageError(
            f"--batches {args.batches} of --batch-size {args.batch_size} need {args.batches * args.batch_size} "
            f"fine-tuning images; there are {len(setup.finetune)}"
        )
    try:
        rows = measure(setup, args.methods, args.eps, k, args.batches, args.batch_size, args.seed)
    except ValueError as error:
        raise UsageError(str(error)) from None
    meta = machine_description(args.device, argv)
    meta.update(setup.info)
    meta.update({
        "batches": args.batches,
        "batch_size": args.batch_size,
        "snr": "||dW||^2 / ||dW - dW_eps||^2 per layer, geometric mean over batches; models in evaluation-mode normalisation",
        "prediction": "1 / (1 - eps)^2 (paper); activation_snr = 1 / (1 - kept_energy)",
    })
    write_table(args.out / "results", rows, meta)
    title = f"{args.dataset}, {args.model} {args.image_size}px, {args.batches} batches of {args.batch_size}"
    plot(rows, args.out / "snr.png", title)
    print(text_table(
        ["method", "eps", "layer", "kept", "SNR", "1/(1-eps)^2", "ratio", "1/(1-kept)^2", "input grad diff"],
        [[r["method"], f"{r['eps']:g}", r["layer"], f"{r['kept_energy']:.4f}", f"{r['snr_measured']:.2f}",
          f"{r['snr_predicted']:.2f}", f"{r['measured_over_predicted']:.2f}", f"{r['snr_predicted_from_kept']:.2f}",
          f"{r['input_grad_max_rel_diff']:.2e}"] for r in rows],
        left=(0, 2),
    ))
    below = [r for r in rows if r["measured_over_predicted"] < 1]
    worst = max(r["input_grad_max_rel_diff"] for r in rows)
    above_kept = sum(r["snr_measured"] >= r["snr_predicted_from_kept"] for r in rows)
    print(f"\nmeasured SNR >= 1/(1-eps)^2 in {len(rows) - len(below)} of {len(rows)} (method, eps, layer) cases")
    print(f"measured SNR >= 1/(1-kept)^2 (kept: the energy the decomposition actually kept) in {above_kept} of {len(rows)}")
    print(f"largest relative change of the input gradient: {worst:.2e}")
    print(f"written: {args.out / 'results.csv'}, {args.out / 'results.json'}, {args.out / 'snr.png'}")
    if args.norm_inputs == "compress":
        norm_rows = measure_norm_inputs(setup, args.methods[0], args.eps, k, args.batch_size, args.seed)
        meta_norm = dict(meta)
        meta_norm["measure"] = (
            "relative L2 error of each gradient against vanilla, one batch, the trainable part's normalisation layers "
            "in training mode; norm_inputs=exact keeps their inputs, compress decomposes them"
        )
        write_table(args.out / "norm_inputs", norm_rows, meta_norm)
        lines = []
        for eps in args.eps:
            for option in ("exact", "compress"):
                sel = [r for r in norm_rows if r["eps"] == eps and r["norm_inputs"] == option]
                worst = lambda kind: max((r["relative_error"] for r in sel if r["kind"] == kind), default=0.0)  # noqa: E731
                lines.append([f"{eps:g}", option, *(f"{worst(kind):.2e}" for kind in ("input", "other", "layer weight"))])
        print()
        print(text_table(["eps", "norm inputs", "input grad", "worst other", "worst layer weight"], lines, left=()))
        print(f"written: {args.out / 'norm_inputs.csv'}, {args.out / 'norm_inputs.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
