"""``.. benchmark-help:: benchmarks.compare``: a benchmark's ``--help``, captured at build time.

The reproduction guide shows each benchmark's options exactly as its argument
parser states them, so the flags documented are always the flags that exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]


class BenchmarkHelp(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module = self.arguments[0]
        source = ROOT / (module.replace(".", "/") + ".py")
        # The options a script shares with the others (benchmarks._setup, ._cli) live beside it.
        for path in [source, *sorted(source.parent.glob("_*.py"))]:
            if path.is_file():
                self.env.note_dependency(str(path))
        env = dict(os.environ, COLUMNS="96", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        try:
            done = subprocess.run(
                [sys.executable, "-m", module, "--help"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            raise self.error(f"benchmark-help: python -m {module} --help did not finish in 120 s") from None
        if done.returncode != 0:
            raise self.error(f"benchmark-help: python -m {module} --help failed:\n{done.stderr.strip()}")
        block = nodes.literal_block(done.stdout, done.stdout.rstrip())
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("benchmark-help", BenchmarkHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
