"""The paper's questions, answered from one comparison run's rows, with the paper's Table 1 beside ours.

Nguyen et al. (NeurIPS 2024) ask whether HOSVD holds about ten times less
than SVD at the same ``eps``, at no cost in accuracy, and whether the
gradient filters that store as much are more accurate. :func:`paper_comparison`
answers these (and how HOSVD fares against the baselines users pick instead)
in held memory, what a step really holds for backward, and in the paper's own
accounting, next to the paper's ratios (:data:`PAPER_TABLE1`);
:func:`format_paper_table` prints them and :func:`write_paper_comparison`
writes them beside the run's results (``paper.csv``, ``paper.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._finetune import GRADFILTERS, ratio, step_ms, tied
from ._report import text_table, write_table

#: The paper's Table 1 (Nguyen et al., NeurIPS 2024; ImageNet, setup B, eps 0.8): vanilla's activation
#: memory divided by the method's, at the same number of fine-tuned layers.
PAPER_TABLE1 = {
    ("resnet18", 2): {"hosvd": 12.6, "svd": 1.6},
    ("resnet18", 4): {"hosvd": 10.6, "svd": 1.5},
    ("mobilenet_v2", 2): {"hosvd": 102.0, "svd": 3.1},
    ("mobilenet_v2", 4): {"hosvd": 39.0, "svd": 1.9},
}
PAPER_EPS = 0.8
#: The baselines HOSVD is compared with at equal accuracy in the paper's questions.
RIVALS = ("checkpoint", "quant8_all", "quant4_all")


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is at least as good as ``b`` on both axes and better on one: Pareto dominance, ties counted as equal.

    At least as good: holds no more, and is more accurate or tied (the top-1
    difference is below the error bars). Better: holds less, or is more
    accurate beyond the error bars.
    """
    same_or_better = a["top1"] > b["top1"] or tied(a, b)
    better = a["held_bytes"] < b["held_bytes"] or (a["top1"] > b["top1"] and not tied(a, b))
    return a["held_bytes"] <= b["held_bytes"] and same_or_better and better


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
      that #layers dominates HOSVD (holds no more and is at least as accurate,
      tied within the error bars, and holds less or is more accurate beyond
      the error bars; ``dominated_by`` names those that do);
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
                "svd_vs_vanilla": ratio(vanilla["held_bytes"], svd["held_bytes"]),
                "hosvd_vs_vanilla": ratio(vanilla["held_bytes"], hosvd["held_bytes"]),
                "hosvd_vs_svd": ratio(svd["held_bytes"], hosvd["held_bytes"]),
                "own_svd_vs_vanilla": svd.get("layers_ratio") and round(svd["layers_ratio"], 2),
                "own_hosvd_vs_vanilla": hosvd.get("layers_ratio") and round(hosvd["layers_ratio"], 2),
                "own_hosvd_vs_svd": ratio(own["svd"], own["hosvd"]),
                "paper_svd_vs_vanilla": paper["svd"] if paper else None,
                "paper_hosvd_vs_vanilla": paper["hosvd"] if paper else None,
                "paper_hosvd_vs_svd": ratio(paper["hosvd"], paper["svd"]) if paper else None,
                "hosvd_10x_less_than_svd": svd["held_bytes"] >= 10 * hosvd["held_bytes"],
                "svd_minus_hosvd_top1": round(svd["top1"] - hosvd["top1"], 2),
                "svd_hosvd_tied": tied(svd, hosvd),
            }
            for rival in RIVALS:
                r = at_k.get((rival, ""))
                entry[f"{rival}_vs_hosvd"] = ratio(r["held_bytes"], hosvd["held_bytes"]) if r else None
                entry[f"{rival}_minus_hosvd_top1"] = round(r["top1"] - hosvd["top1"], 2) if r else None
            dominating = [f"{r['method']}" + (f" eps={r['eps']:g}" if r["eps"] != "" else "")
                          for r in at_k.values() if r is not hosvd and _dominates(r, hosvd)]
            entry["hosvd_on_front"] = not dominating
            entry["dominated_by"] = " ".join(dominating) if dominating else None
            entry["hosvd_step_vs_vanilla"] = ratio(step_ms(hosvd), step_ms(vanilla))
            checkpoint = at_k.get(("checkpoint", ""))
            entry["checkpoint_step_vs_vanilla"] = ratio(step_ms(checkpoint), step_ms(vanilla)) if checkpoint else None
            entry.update({
                "gradfilter": best["method"] if best else None,
                "gradfilter_vs_vanilla": ratio(vanilla["held_bytes"], best["held_bytes"]) if best else None,
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
        "top-1 (points; X-HOSVD: X's minus HOSVD's; front: no run holds no more at tied or better accuracy and is better on one",
        "axis; step: forward + backward over vanilla's; GF: the most accurate gradient filter holding >= HOSVD)",
        text_table(["k", "eps", "vanilla", "HOSVD", "SVD-HOSVD", *(f"{rival}-HOSVD" for rival in RIVALS),
                    "HOSVD on front", "HOSVD step", "ckpt step", "GF", "GF-HOSVD"], accuracy, left=(4, 8, 11)),
    ])


def write_paper_comparison(out_dir: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Write ``paper.csv``/``paper.json`` beside a run's results; returns the rows (empty: nothing written)."""
    table = paper_comparison(rows, meta.get("model", ""))
    if table:
        info = {key: meta[key] for key in ("date", "command", "device", "cpu", "gpu", "model", "dataset",
                                            "image_size", "test_images", "note") if key in meta}
        info["paper"] = ("Nguyen et al., NeurIPS 2024, Table 1: ImageNet, setup B, eps 0.8; "
                         "vanilla's activation memory / the method's at the same #layers, in the layers' own accounting")
        info["memory"] = ("*_vs_*: ratios of held bytes (what a step holds for backward, every saved tensor); "
                          "own_*: of the layers' own bytes (the paper's accounting)")
        info["derived_from"] = "results.json beside this file (benchmarks._paper.paper_comparison)"
        info["gradfilter"] = "the most accurate gradient filter holding at least HOSVD's held bytes (empty: none does)"
        info["tied"] = "two top-1 values are tied when they differ by less than the larger of their error bars"
        write_table(Path(out_dir) / "paper", table, info)
    return table
