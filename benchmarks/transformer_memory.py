"""What a transformer's training step holds for backward, plain and under the adapters' policy.

``transformers``' GPT-2 and a Llama-architecture model (RMSNorm, rotary
embeddings, grouped-query attention, ``SiLU(gate) * up``), each built from a
small config (random init, no download; byte-level vocabulary of 256), on
one batch of real text: byte windows of the
English documentation in Python's own ``pydoc_data.topics``. Each way runs the
same step (same weights, same batch) and reports

- ``allocator_MiB``: what the allocator sees in use after the forward, minus
  before, minus the loss (CPU: glibc's bytes in use; CUDA: ``memory_allocated``);
- ``held_MiB``: what the step holds for backward, from an independent census
  of the saved tensors (plain runs) or the adapters' own ledger;
- ``held_vs_vanilla`` and ``held_vs_lora``: vanilla's (full fine-tuning) and
  LoRA alone's held bytes over this way's;
- the held breakdown (layer inputs, masks, norm inputs, activation inputs,
  attention inputs, other);
- ``max_exact_grad_error``: the largest relative error, against the same
  model run as plain autograd, of the gradient with respect to the input
  embeddings and of every parameter gradient the policy must leave exact
  (empty for the ways that change every gradient below the first
  compressed norm, activation or attention);
- the step time against the plain run of the same model and against its
  checkpointed run.

Ways: ``plain`` (vanilla autograd), ``checkpoint`` (``transformers``' own
non-reentrant activation checkpointing of every block; exact), ``exact``
(the policy with nothing decomposed, method ``"vanilla"``: masks,
recomputed activation chains, frozen weights keeping nothing; every
gradient exact), ``hosvd``/``svd`` at
``--eps`` (the linear and Conv1D inputs decomposed), ``hosvd+all`` (also the
LayerNorm, GELU and attention inputs: ``norm_inputs``,
``activation_inputs``, ``attention_inputs="compress"``) and ``quant8_all``
(every saved float tensor quantised to 8 bits), each without and with a
PEFT LoRA adapter (r 8 on GPT-2's c_attn, c_proj and c_fc; on every
projection of Llama).

Run: ``python -m benchmarks.transformer_memory`` (needs the ``hf`` extra).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli import Parser, UsageError, check_device, check_eps, check_positive, run_main
from ._text import build_gpt2, build_llama, checkpoint_blocks, compression, text_batch

PROG = "python -m benchmarks.transformer_memory"
RESULTS = Path(__file__).resolve().parent / "results" / "transformer_memory"
CATEGORIES = ("layer_inputs", "masks", "norm_inputs", "activation_inputs", "attention_inputs", "other")
WAYS = ("plain", "checkpoint", "exact", "hosvd", "svd", "hosvd+all", "quant8_all")
ARCHS = {"gpt2": build_gpt2, "llama": build_llama}
#: Ways whose every gradient below a compressed norm, activation or attention input is approximate.
APPROXIMATE_BELOW = ("hosvd+all", "quant8_all")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Held bytes of a GPT-2 and a Llama training step (with and without LoRA), plain and compressed.")
    add = parser.add_argument
    add("--arch", nargs="+", choices=sorted(ARCHS), default=["gpt2", "llama"], help="architectures (default: both)")
    add("--eps", type=float, default=0.8, help="energy fraction kept by hosvd and svd, in (0, 1]")
    add("--embd", type=int, default=128, help="width (GPT-2's n_embd, Llama's hidden_size)")
    add("--n-layer", type=int, default=2, help="blocks")
    add("--batch", type=int, default=8, help="sequences per batch")
    add("--tokens", type=int, default=128, help="tokens (bytes) per sequence")
    add("--lora-r", type=int, default=8, help="LoRA rank")
    add("--repeats", type=int, default=7, help="timed steps per way (after one warm-up step)")
    add("--seed", type=int, default=0, help="seed of the weights")
    add("--device", default="cpu", help="torch device: cpu or cuda[:N] (default: cpu)")
    add("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results/transformer_memory of this checkout)")
    return parser


def run_way(args: argparse.Namespace, arch: str, lora: bool, way: str, tokens: Any) -> dict[str, Any]:
    import torch

    from ._census import SavedCensus, allocator_in_use

    device = torch.device(args.device)
    model = ARCHS[arch](args.embd, args.n_layer, args.tokens, seed=args.seed, lora_r=args.lora_r if lora else None).to(device)
    tokens = tokens.to(device)
    base = model.get_base_model() if lora else model
    census: SavedCensus | None = None
    if way == "checkpoint":
        checkpoint_blocks(model, lambda: census)
    in_use = allocator_in_use(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ms, allocated, held, stats = [], [], [], None
    plain_held = 0
    for step in range(args.repeats + 1):
        model.zero_grad(set_to_none=True)
        embeds = base.get_input_embeddings()(tokens).detach().requires_grad_(True)
        gc.collect()
        sync()
        before = in_use()
        t0 = time.perf_counter()
        ctx = compression(model, way if way != "plain" else "vanilla", args.eps)
        if ctx is None and step == 0:
            # Plain autograd keeps the same tensors at every step: counted in the warm-up step, so that the
            # census's own hooks never slow a timed one.
            census = SavedCensus(model)
            with census:
                loss = model(inputs_embeds=embeds, labels=tokens).loss
            plain_held = census.nbytes
        elif ctx is None:
            loss = model(inputs_embeds=embeds, labels=tokens).loss
        else:
            with ctx:
                loss = model(inputs_embeds=embeds, labels=tokens).loss
        sync()
        t1 = time.perf_counter()
        gc.collect()
        alloc = in_use() - before - loss.untyped_storage().nbytes()
        t2 = time.perf_counter()
        loss.backward()
        sync()
        t3 = time.perf_counter()
        if step:
            ms.append(1e3 * ((t1 - t0) + (t3 - t2)))  # forward and backward, not the allocator's reading
            allocated.append(alloc)
            held.append(plain_held if ctx is None else ctx.stats.held_bytes)
            stats = None if ctx is None else ctx.stats
        census = None
        # The step ends here: a loss (and its graph) still alive at the next step's first reading of the
        # allocator would be freed during that forward and hide about 1 MiB from the allocator's figure.
        loss_value = float(loss.detach())
        del loss, ctx
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["<input embeddings>"] = embeds.grad.detach().clone()
    decomposed = set()
    if way in ("hosvd", "svd"):
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D") and weight is not None and weight.requires_grad:
                decomposed.add(f"{name}.weight")
    return {
        "loss": loss_value,
        "allocator_bytes": int(statistics.median(allocated)),
        "held_bytes": int(statistics.median(held)),
        "step_ms": statistics.median(ms),
        "breakdown": None if stats is None else stats.held_breakdown,
        "grads": grads,
        "decomposed": decomposed,
    }


def _rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    tokens = text_batch(args.batch, args.tokens)
    results = {(arch, lora, way): run_way(args, arch, lora, way, tokens) for arch in args.arch for lora in (False, True) for way in WAYS}
    rows = []
    for (arch, lora, way), r in results.items():
        vanilla, lora_alone = results[(arch, False, "plain")], results[(arch, True, "plain")]
        plain, checkpointed = results[(arch, lora, "plain")], results[(arch, lora, "checkpoint")]
        errors = [
            float((r["grads"][n] - g).norm() / g.norm().clamp_min(1e-30))
            for n, g in plain["grads"].items()
            if n not in r["decomposed"]
        ]
        row = {
            "model": f"{arch}+lora" if lora else arch,
            "way": way,
            "eps": None if way in ("plain", "checkpoint", "exact", "quant8_all") else args.eps,
            "loss": round(r["loss"], 5),
            "allocator_MiB": round(r["allocator_bytes"] / 2**20, 3),
            "held_MiB": round(r["held_bytes"] / 2**20, 3),
            "held_vs_allocator": round(r["held_bytes"] / r["allocator_bytes"], 3),
            "held_vs_vanilla": round(vanilla["held_bytes"] / r["held_bytes"], 2),
            "held_vs_lora": round(lora_alone["held_bytes"] / r["held_bytes"], 2),
            "allocator_vs_vanilla": round(vanilla["allocator_bytes"] / r["allocator_bytes"], 2),
            "step_ms": round(r["step_ms"], 1),
            "step_vs_plain": round(r["step_ms"] / plain["step_ms"], 2),
            "step_vs_checkpoint": round(r["step_ms"] / checkpointed["step_ms"], 2),
            "held_vs_checkpoint": round(checkpointed["held_bytes"] / r["held_bytes"], 2),
            "max_exact_grad_error": None if way in APPROXIMATE_BELOW else max(errors),
        }
        for category in CATEGORIES:
            part = (r["breakdown"] or {}).get(category)
            row[f"{category}_MiB"] = None if part is None else round(part["held_bytes"] / 2**20, 3)
        rows.append(row)
    return rows


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_eps([args.eps])
    check_positive(embd=args.embd, n_layer=args.n_layer, batch=args.batch, tokens=args.tokens, lora_r=args.lora_r, repeats=args.repeats)
    check_device(args.device)
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise UsageError(f"needs transformers and peft ({error}); install the hf extra: pip install -e '.[hf]'") from None
    import torch

    from ._report import machine_description, text_table, write_table

    rows = _rows(args)
    columns = ["model", "way", "eps", "loss", "allocator_MiB", "held_MiB", "held_vs_allocator", "held_vs_vanilla", "held_vs_lora",
               "held_vs_checkpoint", "step_ms", "step_vs_plain", "step_vs_checkpoint", "max_exact_grad_error"]
    print(text_table(columns, [[("-" if r[c] is None else f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])) for c in columns] for r in rows], left=(0, 1)))
    meta = machine_description(args.device, argv=argv)
    meta.update(
        data="pydoc_data.topics (Python's standard library), byte tokens, evenly spaced windows",
        allocator=("torch.cuda.memory_allocated" if args.device.startswith("cuda") else "glibc mallinfo2 bytes in use")
        + " after the forward minus before, loss excluded",
        held="plain and checkpoint: an independent census of the saved tensors (benchmarks._census.SavedCensus; "
        "checkpoint: plus each block's inputs), taken in the warm-up step; others: the adapters' ledger",
        step="forward + backward wall time (step_ms; the allocator's reading between them left out), median of the "
        "timed steps, and over the plain run of the same model",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_table(args.out / "results", rows, meta)
    print(f"wrote {args.out}/results.csv, results.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
