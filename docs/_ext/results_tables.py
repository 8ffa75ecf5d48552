"""``.. results-table::``: a committed benchmark table, read from ``benchmarks/results/`` at build time.

The benchmarks write each table as ``<stem>.json`` (``{"meta": {...}, "rows":
[{...}, ...]}``) next to a CSV copy. This directive renders the rows as a
table and the metadata (machine, versions, command, date) as a caption line,
so the documentation shows exactly the committed numbers and never a copy
typed by hand::

    .. results-table:: compare
       :columns: method, eps, peak_mib, accuracy
       :where: model=mobilenet_v2, setup=B
       :caption: Fine-tuning the last two layers

``:columns:`` picks and orders columns (default: all); ``:where:`` keeps rows
whose columns equal the given values (compared as text; ``a|b`` accepts
either); ``:bytes:`` lists
columns holding byte counts, shown in KiB/MiB/GiB; ``:digits:`` is the
number of significant digits of floats (default 4); ``:meta:`` names
metadata entries to show before the machine description.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

_META_SHOWN = ("command", "date", "device", "gpu", "cpu", "cpu_cores", "torch", "tensorly", "numpy")


def _format(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        if abs(value) >= 10 ** (digits - 1):  # no exponent for large values: round to units
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    text = str(value).replace("|", "\\|")
    if not text or text.strip() in ("-", "–"):
        return "–"  # a bare "-" would start a bullet list inside the cell
    if text[0] in "-*+" and (len(text) == 1 or text[1] == " "):
        return "\\" + text
    return text


def _format_bytes(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return _format(value, 4)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _literal(text: str) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return "``" + text + "``" if text else "–"


class ResultsTable(SphinxDirective):
    required_arguments = 1
    has_content = False
    option_spec = {
        "columns": directives.unchanged,
        "where": directives.unchanged,
        "caption": directives.unchanged,
        "digits": directives.positive_int,
        "bytes": directives.unchanged,
        "meta": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        stem = self.arguments[0]
        path = RESULTS_DIR / f"{stem}.json"
        if not path.is_file():
            raise self.error(f"results-table: {path} does not exist (run the benchmark that writes it)")
        self.env.note_dependency(str(path))
        data = json.loads(path.read_text())
        rows: list[dict[str, Any]] = data.get("rows", [])
        meta: dict[str, Any] = data.get("meta", {})

        for clause in filter(None, (c.strip() for c in self.options.get("where", "").split(","))):
            key, _, wanted = clause.partition("=")
            key, wanted = key.strip(), wanted.strip()
            if rows and key not in rows[0]:
                raise self.error(f"results-table: {stem} has no column {key!r}; columns: {list(rows[0])}")
            accepted = {w.strip() for w in wanted.split("|")}
            rows = [r for r in rows if str(r.get(key)) in accepted]
        if not rows:
            raise self.error(f"results-table: no rows of {stem} match {self.options.get('where')!r}")

        columns = [c.strip() for c in self.options.get("columns", "").split(",") if c.strip()] or list(rows[0])
        missing = [c for c in columns if c not in rows[0]]
        if missing:
            raise self.error(f"results-table: {stem} has no column(s) {missing}; columns: {list(rows[0])}")
        digits = self.options.get("digits", 4)
        byte_columns = {c.strip() for c in self.options.get("bytes", "").split(",") if c.strip()}

        lines = [".. list-table::", "   :header-rows: 1", ""]
        for i, row in enumerate([{c: c for c in columns}, *rows]):
            for j, column in enumerate(columns):
                if i == 0:
                    cell = _literal(column)
                elif column in byte_columns:
                    cell = _format_bytes(row[column])
                else:
                    cell = _format(row[column], digits)
                lines.append(("   * - " if j == 0 else "     - ") + cell)
        extra = [k.strip() for k in self.options.get("meta", "").split(",") if k.strip()]
        unknown = [k for k in extra if k not in meta]
        if unknown:
            raise self.error(f"results-table: the metadata of {stem} has no {unknown}; keys: {list(meta)}")
        shown = [f"{k}: {_literal(str(meta[k])) if k == 'command' else meta[k]}" for k in (*extra, *_META_SHOWN) if k in meta]
        caption = self.options.get("caption")
        lines += ["", f"*Source:* ``benchmarks/results/{stem}.json``" + ("; " + "; ".join(shown) if shown else ".")]

        container = nodes.container(classes=["results-table"])
        if caption:
            container += nodes.rubric(text=caption)
        self.state.nested_parse(StringList(lines, source=str(path)), self.content_offset, container)
        return [container]


def setup(app):
    app.add_directive("results-table", ResultsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
