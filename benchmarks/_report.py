"""What every benchmark writes beside its numbers (the machine, the command, the date), its tables and its figures.

:func:`write_table` writes the rows (CSV and JSON), :func:`text_table` prints
them in the terminal, :func:`pyplot` is the one way to matplotlib (on the
Agg backend: the benchmarks write PNGs and never open a window) and
:func:`save_figure` writes a figure.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _command(argv: Sequence[str] | None) -> str:
    """``python -m <module> <args>`` as the run was started (``argv`` when called through ``main(argv)``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec is not None else Path(sys.argv[0]).stem
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m", module, *map(shlex.quote, args)])


def machine_description(device: Any = "cpu", argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The machine, software versions, date and exact command of a benchmark run."""
    import numpy
    import tensorly

    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(argv),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "tensorly": tensorly.__version__,
        "device": str(device),
    }
    try:
        import torch

        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
        if str(device).startswith("cuda") and torch.cuda.is_available():
            meta["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return meta


def write_table(stem: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``rows`` as ``stem.csv`` (metadata in leading ``#`` lines) and ``stem.json``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        for key, value in meta.items():
            f.write(f"# {key}: {value}\n")
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")


def text_table(
    header: Sequence[str], lines: Sequence[Sequence[str]], left: Sequence[int] = (0,), min_widths: Sequence[int] = ()
) -> str:
    """Cells as an aligned text table under a ruled header: columns in ``left`` left-aligned, the others right-aligned.

    A column is as wide as its widest cell, and at least ``min_widths[i]``
    (for tables printed in parts, whose columns should line up).
    """
    minimum = [*min_widths, *[0] * (len(header) - len(min_widths))]
    widths = [max(len(h), minimum[i], *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def pyplot() -> Any:
    """``matplotlib.pyplot``, with the non-interactive Agg backend selected (every figure is written to a file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, title: str | None = None, *, tight_layout: bool = True) -> None:
    """Lay out ``fig`` (with ``title`` above its panels), write it as PNG at ``path`` and close it.

    ``tight_layout=False`` for figures whose legends sit outside the axes:
    the layout pass would grow the axes over them, while ``bbox_inches="tight"``
    alone widens the picture to include them.
    """
    plt = pyplot()
    if title is not None:
        fig.suptitle(title, fontsize=10)
    if tight_layout:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.legend import Legend

    # Legends placed outside the axes (and added as extra artists) must widen the picture, not be cut.
    legends = [*fig.legends, *(c for ax in fig.axes for c in ax.get_children() if isinstance(c, Legend))]
    fig.savefig(path, dpi=120, bbox_inches="tight", bbox_extra_artists=legends)
    plt.close(fig)
