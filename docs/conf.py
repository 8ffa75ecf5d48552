"""Sphinx configuration for the tensorcomp documentation.

Build (what CI runs; both must pass with warnings as errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest

The build never touches the network: intersphinx reads the small inventories
in ``_inventories/`` (regenerate them with ``_inventories/make_inventories.py``).
"""

from __future__ import annotations

import doctest
import importlib
import sys
from pathlib import Path

from sphinx.util import logging

import tensorcomp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "tensorcomp"
author = "The tensorcomp developers"
copyright = "the tensorcomp developers"
release = tensorcomp.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    # MathJax served from _static/mathjax, not a CDN: formulas render offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
    "results_tables",
    "benchmark_help",
    "offline_check",
]

exclude_patterns = ["_build", "_inventories", "_ext", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
default_role = "obj"
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# -- HTML ---------------------------------------------------------------------
html_theme = "furo"
html_title = f"tensorcomp {release}"
html_static_path = ["_static"]
html_css_files = ["tables.css"]
html_theme_options = {"navigation_with_keys": True}

# -- autodoc / numpydoc ---------------------------------------------------------
# The numpydoc Parameters sections carry the types (with shapes), so signatures
# stay as short as NumPy's and TensorLy's.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"member-order": "bysource"}

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = True
# Only the names below become links; words such as "tensor", "shape" or
# "optional" stay plain text.
numpydoc_xref_ignore = "all"
numpydoc_xref_aliases = {
    "int": ":class:`python:int`",
    "float": ":class:`python:float`",
    "bool": ":class:`python:bool`",
    "str": ":class:`python:str`",
    "tuple": ":class:`python:tuple`",
    "list": ":class:`python:list`",
    "dict": ":class:`python:dict`",
    "object": ":class:`python:object`",
    "callable": ":func:`python:callable`",
    "sequence": "collections.abc.Sequence",
    "None": ":data:`python:None`",
    "ndarray": "numpy.ndarray",
    "numpy.ndarray": "numpy.ndarray",
    "torch.Tensor": "torch.Tensor",
    "Tensor": "torch.Tensor",
    "torch.dtype": "torch.dtype",
    "torch.device": "torch.device",
    "torch.nn.Module": "torch.nn.Module",
    "nn.Module": "torch.nn.Module",
    "torch.nn.Conv2d": "torch.nn.Conv2d",
    "nn.Conv2d": "torch.nn.Conv2d",
    "torch.nn.Linear": "torch.nn.Linear",
    "nn.Linear": "torch.nn.Linear",
    "jax.Array": "jax.Array",
    "SVDResult": "tensorcomp.SVDResult",
    "TuckerResult": "tensorcomp.TuckerResult",
    "CPResult": "tensorcomp.CPResult",
    "TTResult": "tensorcomp.TTResult",
    "ActivationMemory": "tensorcomp.adapters.ActivationMemory",
    "LayerRecord": "tensorcomp.adapters.LayerRecord",
    "CompressedConv2d": "tensorcomp.adapters.CompressedConv2d",
    "CompressedLinear": "tensorcomp.adapters.CompressedLinear",
    "compress_activations": "tensorcomp.adapters.compress_activations",
}

# -- intersphinx, offline --------------------------------------------------------
intersphinx_mapping = {
    key: (base, f"_inventories/{key}.inv")
    for key, base in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "torch": "https://docs.pytorch.org/docs/stable/",
        "tensorly": "https://tensorly.org/stable/",
        "jax": "https://docs.jax.dev/en/latest/",
    }.items()
}
intersphinx_timeout = 1

# -- doctest -----------------------------------------------------------------------
# Small tensors and one thread: the examples run in CI on a shared CPU.
doctest_global_setup = """
import numpy as np
import torch
import tensorcomp
from tensorcomp import rank_for_energy
torch.manual_seed(0)
torch.set_num_threads(1)
"""
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1

# -- every public name is documented -------------------------------------------------
PUBLIC_MODULES = ("tensorcomp", "tensorcomp.adapters")

logger = logging.getLogger(__name__)


def _check_public_names_documented(app, env) -> None:
    """Warn (an error under ``-W``) for a public name without an API entry."""
    documented = set(env.get_domain("py").objects)
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            if f"{module_name}.{name}" not in documented:
                logger.warning(
                    "%s.%s is public (in __all__) but has no entry in the API reference (docs/api/)",
                    module_name,
                    name,
                )


def _hide_private_bases(app, name, obj, options, bases) -> None:
    """Show only public base classes in "Bases:" lines."""
    bases[:] = [b for b in bases if not b.__name__.startswith("_")]


def setup(app):
    app.connect("env-check-consistency", _check_public_names_documented)
    app.connect("autodoc-process-bases", _hide_private_bases)
