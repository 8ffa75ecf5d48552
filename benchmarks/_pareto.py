"""The comparison's figure: top-1 accuracy against what a step holds for backward, one point per run.

Colour by method family (a colormap per family, a shade per member), line
style by ``eps``, marker by number of fine-tuned layers, the top-1 error bars
drawn; a ``<method>+all`` run (every saved tensor decomposed) is a member of
its method's family with its own shade, drawn with hollow markers and a
thicker line; points at identical values are spread a few percent apart so that none
hides another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._finetune import GRADFILTERS, base_method, is_compress_all
from ._report import pyplot, save_figure

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
    plt = pyplot()
    colors: dict[str, Any] = {}
    for _, cmap, members in FAMILIES:
        # A method's +all variant follows it in its family: a shade of its own, never the method's.
        present = [m for m in methods if m in members or (is_compress_all(m) and base_method(m) in members)]
        present.sort(key=lambda m: (members.index(base_method(m)) if base_method(m) in members else members.index(m),
                                    is_compress_all(m)))
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
    keys = [(round(math.log10(max(x, 1e-30)) / 0.002), round(y / 0.01)) for x, y in points]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    offsets = [1.0] * len(points)
    for members in groups.values():
        for j, i in enumerate(members):
            offsets[i] = factor ** (j - (len(members) - 1) / 2)
    return offsets


def _mem_unit(rows: Sequence[dict[str, Any]]) -> tuple[str, float]:
    """The unit of the held-bytes axis and its size: MiB from a peak of 1 MiB on, else KiB."""
    peak = max((r["held_bytes"] or 0 for r in rows), default=0)
    return ("MiB", 2.0**20) if peak >= 2**20 else ("KiB", 2.0**10)


def pareto_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Top-1 accuracy (± error bar) against held bytes (log x): colour by method family, line style by eps, marker by #layers.

    Points at identical values are spread a few percent apart horizontally so
    that none hides another (the title says so when it happens).
    """
    plt = pyplot()
    from matplotlib.lines import Line2D

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
        hollow = is_compress_all(method)
        if hollow:
            label += " (all saved tensors)"
            width = 2.0
        ax.plot(xs, ys, styles.get(eps, "-"), color=colors[method], alpha=0.85, label=label, zorder=z, linewidth=width)
        for x, y, r in zip(xs, ys, points):
            ax.errorbar(x, y, yerr=r.get("top1_err") or 0.0, fmt=markers[r["layers"]], color=colors[method],
                        markersize=7 if hollow else 6, capsize=2, elinewidth=0.8, zorder=z,
                        markerfacecolor="white" if hollow else colors[method], markeredgewidth=1.5 if hollow else 1.0)
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
