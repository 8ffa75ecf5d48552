"""Setup B for a small GPT on real text: pretrain on one half of the topics, fine-tune on the other.

GPT-2 from a config (byte vocabulary, random init, no download) is
pretrained with plain autograd on one half of ``pydoc_data.topics`` (Python's
own documentation, alternate topics), then fine-tuned from the same weights,
on the same batches and seed, on the other half in each way:

- ``vanilla``: plain autograd, every parameter trained;
- ``exact``: the adapters' policy with nothing decomposed (method
  ``"vanilla"``: masks, recomputed GELU and attention, LayerNorms reading
  their outputs; every gradient exact, so the run follows vanilla's);
- ``hosvd``/``svd`` at each ``--eps``: the linear and Conv1D inputs decomposed;
- ``hosvd+all`` at each ``--eps``: also the LayerNorm, GELU and attention
  inputs (``norm_inputs``, ``activation_inputs``, ``attention_inputs`` set
  to ``"compress"``: the gradients below those ops become approximate);
- ``checkpoint``: plain autograd with ``transformers``' own activation
  checkpointing of every block (non-reentrant; exact, one more forward);
- ``quant8_all``: every saved float tensor quantised to 8 bits (the
  ``quant8`` baseline with the three options above; masks exact);
- ``lora``: a PEFT LoRA adapter (r ``--lora-r``) with plain autograd, and
  ``lora+hosvd``/``lora+hosvd+all`` at each ``--eps``.

Reported per way: validation loss and perplexity on held-out text of the
fine-tuning half (the last tenth of its bytes, never trained on), the peak
over steps of what a step holds for backward (an independent census for the
plain runs, the checkpointed blocks' inputs included; the adapters' ledger
otherwise) and its ratio to vanilla's, and the step time over vanilla's and
over checkpointing's (same process, same machine). The figure
(``pareto.png``) plots validation loss against held memory, the Pareto
front marked.

Run: ``python -m benchmarks.gpt_finetune`` (needs the ``hf`` extra).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import Parser, UsageError, check_eps, check_positive, run_main
from ._text import as_bytes, build_gpt2, checkpoint_blocks, compression, half_texts, random_windows, topic_halves, with_lora

PROG = "python -m benchmarks.gpt_finetune"
RESULTS = Path(__file__).resolve().parent / "results" / "gpt_finetune"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Setup B on pydoc text: GPT-2 fine-tuned with compressed activations, plain, and with LoRA.")
    add = parser.add_argument
    add("--eps", nargs="+", type=float, default=[0.8, 0.9], help="energy fractions kept, in (0, 1]")
    add("--embd", type=int, default=128, help="GPT-2's n_embd")
    add("--n-layer", type=int, default=2, help="GPT-2's n_layer")
    add("--batch", type=int, default=8, help="sequences per batch")
    add("--tokens", type=int, default=128, help="tokens (bytes) per sequence")
    add("--pretrain-steps", type=int, default=400, help="pretraining steps on the first half")
    add("--steps", type=int, default=100, help="fine-tuning steps on the second half")
    add("--lr", type=float, default=1e-3, help="AdamW learning rate (fine-tuning; pretraining uses 3x)")
    add("--lora-r", type=int, default=8, help="LoRA rank")
    add("--val-batches", type=int, default=8, help="validation batches of held-out fine-tuning text")
    add("--seed", type=int, default=0, help="seed of the weights and batches")
    add("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results/gpt_finetune of this checkout)")
    add("--no-progress", action="store_true", help="no progress bars")
    return parser


def split_text() -> dict[str, Any]:
    """Pretraining text (first half of the topics), fine-tuning text (the second half without the first's
    paragraphs, first 90%) and validation text (its last 10%), as byte tensors."""
    one, two = half_texts()
    pre, fine = as_bytes(one), as_bytes(two)
    cut = int(0.9 * len(fine))
    return {"pretrain": pre, "finetune": fine[:cut], "validation": fine[cut:]}


def _loss(model: Any, batch: Any) -> Any:
    return model(input_ids=batch, labels=batch).loss


def validation_loss(model: Any, data: Any, args: argparse.Namespace) -> float:
    import torch

    model.eval()
    step = (len(data) - args.tokens) // (args.val_batches * args.batch)
    starts = [i * step for i in range(args.val_batches * args.batch)]
    losses = []
    with torch.no_grad():
        for i in range(args.val_batches):
            batch = torch.stack([data[s : s + args.tokens] for s in starts[i * args.batch : (i + 1) * args.batch]])
            losses.append(float(_loss(model, batch)))
    model.train()
    return statistics.fmean(losses)


def _bar(total: int, desc: str, args: argparse.Namespace) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=args.no_progress)


def pretrain(args: argparse.Namespace, text: dict[str, Any]) -> dict[str, Any]:
    import torch

    model = build_gpt2(args.embd, args.n_layer, args.tokens, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3 * args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    with _bar(args.pretrain_steps, "pretrain", args) as bar:
        for _ in range(args.pretrain_steps):
            loss = _loss(model, random_windows(text["pretrain"], args.batch, args.tokens, generator))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def finetune(args: argparse.Namespace, text: dict[str, Any], state: dict[str, Any], way: str, eps: float | None) -> dict[str, Any]:
    import torch

    from ._census import SavedCensus

    model = build_gpt2(args.embd, args.n_layer, args.tokens, seed=args.seed)
    model.load_state_dict(state)
    if way.startswith("lora"):
        model = with_lora(model, args.lora_r)
        model.train()
    ctx = compression(model, way, eps)
    census: SavedCensus | None = None
    if way == "checkpoint":
        checkpoint_blocks(model, lambda: census)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed + 1)
    torch.manual_seed(args.seed + 2)  # the same dropout masks in every way
    held, seconds = [], []
    with _bar(args.steps, way if eps is None else f"{way} eps={eps}", args) as bar:
        for step in range(args.steps):
            batch = random_windows(text["finetune"], args.batch, args.tokens, generator)
            start = time.perf_counter()
            if ctx is None and step == 0:
                # Plain autograd keeps the same tensors at every step: counted once, in the step left out of the
                # times, so that the census's own hooks never slow a timed step.
                census = SavedCensus(model)
                with census:
                    loss = _loss(model, batch)
                held.append(census.nbytes)
                census = None
            elif ctx is None:
                loss = _loss(model, batch)
            else:
                with ctx:
                    loss = _loss(model, batch)
                held.append(ctx.stats.held_bytes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - start)
            if not math.isfinite(float(loss.detach())):
                raise RuntimeError(f"{way}: the training loss became {float(loss.detach())}")
            bar.update()
    val = validation_loss(model, text["validation"], args)
    return {"val_loss": val, "held_bytes": max(held), "step_s": statistics.median(seconds[1:] or seconds)}  # the first is warm-up


def ways(eps_values: Sequence[float]) -> list[tuple[str, float | None]]:
    """Every way to fine-tune, in the order run and reported."""
    out: list[tuple[str, float | None]] = [("vanilla", None), ("exact", None), ("checkpoint", None), ("quant8_all", None)]
    out += [(m, e) for e in eps_values for m in ("hosvd", "svd", "hosvd+all")]
    out += [("lora", None)] + [(m, e) for e in eps_values for m in ("lora+hosvd", "lora+hosvd+all")]
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each ``(held, loss)``, whether no other point holds no more and has no higher loss, one of them strictly less."""
    return [
        not any(h2 <= h and l2 <= l and (h2 < h or l2 < l) for h2, l2 in points)
        for h, l in points
    ]


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Validation loss against held memory (log scale), a point per way, the Pareto front joined."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator

    from ._report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    points = [(r["held_MiB"], r["val_loss"]) for r in rows]
    front = pareto_front(points)
    families = {"vanilla": "#333333", "exact": "#8172B2", "checkpoint": "#937860", "quant8_all": "#DD8452"}

    def colour(way: str) -> str:
        base = way.removeprefix("lora+")
        if way == "lora":
            return "#64B5CD"
        if base.endswith("+all"):
            return "#C44E52"
        return families.get(base) or ("#55A868" if base == "svd" else "#4C72B0")

    for r, on_front in zip(rows, front):
        way = r["way"]
        ax.scatter(r["held_MiB"], r["val_loss"], color=colour(way), marker="s" if way.startswith("lora") else "o",
                   s=70 if on_front else 35, edgecolors="black" if on_front else "none", zorder=3)
        label = way if r["eps"] in (None, "") else f"{way} {r['eps']:g}"
        ax.annotate(label, (r["held_MiB"], r["val_loss"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    on = sorted(p for p, f in zip(points, front) if f)
    ax.plot([p[0] for p in on], [p[1] for p in on], color="black", linewidth=0.8, linestyle="--", zorder=2)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel("held for backward per step, peak over steps (MiB, log scale)")
    ax.set_ylabel("validation loss (nats per byte; lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles = [
        Line2D([], [], marker="o", linestyle="none", color="#777777", label="every parameter trained"),
        Line2D([], [], marker="s", linestyle="none", color="#777777", label="LoRA (r 8) adapters trained"),
        Line2D([], [], marker="o", linestyle="none", color="#C44E52", label="+all: norm, activation, attention inputs too"),
        Line2D([], [], marker="o", linestyle="none", markerfacecolor="white", markeredgecolor="black", label="on the Pareto front"),
        Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="Pareto front"),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    save_figure(fig, path)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_eps(args.eps)
    check_positive(embd=args.embd, n_layer=args.n_layer, batch=args.batch, tokens=args.tokens, steps=args.steps,
                   lora_r=args.lora_r, val_batches=args.val_batches)
    if args.pretrain_steps < 0:
        raise UsageError(f"--pretrain-steps must be non-negative; got {args.pretrain_steps}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError(f"--lr must be a positive number; got {args.lr}")
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise UsageError(f"needs transformers and peft ({error}); install the hf extra: pip install -e '.[hf]'") from None

    from ._report import machine_description, text_table, write_table

    text = split_text()
    state = pretrain(args, text)
    pretrained = build_gpt2(args.embd, args.n_layer, args.tokens, seed=args.seed)
    pretrained.load_state_dict(state)
    before = validation_loss(pretrained, text["validation"], args)
    print(f"pretrained: val loss {before:.4f} on the fine-tuning half's held-out text", flush=True)
    results = {}
    for way, eps in ways(args.eps):
        r = finetune(args, text, state, way, eps)
        results[(way, eps)] = r
        print(f"{way}{'' if eps is None else f' eps={eps}'}: val loss {r['val_loss']:.4f}, held {r['held_bytes'] / 2**20:.2f} MiB", flush=True)
    vanilla, checkpointed = results[("vanilla", None)], results[("checkpoint", None)]
    rows = [
        {
            "way": way,
            "eps": eps,
            "val_loss": round(r["val_loss"], 4),
            "perplexity": round(math.exp(r["val_loss"]), 3),
            "val_loss_vs_vanilla_pct": round(100 * (r["val_loss"] / vanilla["val_loss"] - 1), 2),
            "held_MiB": round(r["held_bytes"] / 2**20, 3),
            "held_vs_vanilla": round(vanilla["held_bytes"] / r["held_bytes"], 2),
            "step_ms": round(1e3 * r["step_s"], 1),
            "step_vs_vanilla": round(r["step_s"] / vanilla["step_s"], 2),
            "step_vs_checkpoint": round(r["step_s"] / checkpointed["step_s"], 2),
            "held_vs_checkpoint": round(checkpointed["held_bytes"] / r["held_bytes"], 2),
        }
        for (way, eps), r in results.items()
    ]
    columns = list(rows[0])
    print(text_table(columns, [["-" if r[c] is None else str(r[c]) for c in columns] for r in rows], left=(0,)))
    meta = machine_description("cpu", argv=argv)
    first, second = topic_halves()
    meta.update(
        data=f"pydoc_data.topics: pretraining on {len(first)} topics ({len(text['pretrain']):,} bytes), fine-tuning on the other "
        f"{len(second)} without the paragraphs they repeat from the first ({len(text['finetune']):,} bytes), validation on the last 10% of those ({len(text['validation']):,} bytes)",
        model=f"GPT-2 from a config: n_embd {args.embd}, {args.n_layer} layers, byte vocabulary, dropout 0.1, random init",
        held="peak over fine-tuning steps; plain runs: an independent census of the saved tensors (first step); others: the adapters' ledger",
        step="median wall time of forward + backward + optimizer step after the first step (step_ms), and over vanilla's "
        "(and checkpoint's), same process",
        checkpoint="transformers' activation checkpointing (non-reentrant) on every block; held counts each block's inputs",
        quant8_all="compress_activations(model, 'quant8', norm_inputs/activation_inputs/attention_inputs='compress')",
        all_inputs="'+all': norm_inputs, activation_inputs and attention_inputs set to 'compress'",
        pretrained_val_loss=round(before, 4),
    )
    if hasattr(os, "getloadavg"):
        # Step times compare only on an otherwise idle machine: record how busy it was.
        meta["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    write_table(args.out / "results", rows, meta)
    plot(rows, args.out / "pareto.png",
         f"GPT-2 (n_embd {args.embd}, {args.n_layer} layers) fine-tuned {args.steps} steps on pydoc text, setup B")
    print(f"wrote {args.out}/results.csv, results.json, pareto.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
