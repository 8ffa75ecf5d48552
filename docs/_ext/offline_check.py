"""Fail the build (a warning, errors under ``-W``) when a built page loads a script or style sheet from the network.

The documentation must read the same offline: MathJax is served from
``_static/mathjax`` (``sphinx-mathjax-offline``), the theme's assets from
``_static``. Links to other sites (``<a href>``) are fine; what a page
*loads* is not.
"""

from __future__ import annotations

import re
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

_REMOTE = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=[\"'](?:https?:)?//[^\"']+[\"']", re.IGNORECASE)


def _check(app, exc) -> None:
    if exc is not None or app.builder.format != "html":
        return
    for page in sorted(Path(app.outdir).rglob("*.html")):
        for match in _REMOTE.finditer(page.read_text(encoding="utf-8", errors="replace")):
            logger.warning("%s loads %s from the network; serve it from _static", page.relative_to(app.outdir), match.group(0))
    mathjax = Path(app.outdir) / "_static" / app.config.mathjax_path
    if not mathjax.is_file():
        logger.warning("MathJax is not at %s: formulas would not render offline", mathjax)


def setup(app):
    # After sphinx-mathjax-offline's own build-finished handler has copied MathJax.
    app.connect("build-finished", _check, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
