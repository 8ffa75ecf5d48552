"""Command-line conventions shared by every benchmark script.

One parser style and one error convention: ``--help`` states each option's
default once, and bad input (an unknown method, an ``eps`` out of range, a
missing data folder) ends the run with a single ``prog: error: ...`` line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "HelpFormatter",
    "Parser",
    "UsageError",
    "check_eps",
    "check_methods",
    "check_positive",
    "load_images",
    "run_main",
    "split_names",
]


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` only where it says something: not for ``None``/``False``, not twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in help_text:
            return help_text
        if isinstance(action.default, (list, tuple)):
            return f"{help_text} (default: {' '.join(map(str, action.default))})".strip()
        return super()._get_help_string(action) or ""


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that raises :class:`UsageError` instead of exiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def run_main(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a benchmark's ``body(argv)``; bad input ends with a one-line ``prog: error: ...`` and exit status 2.

    ``--help`` (argparse's ``SystemExit``) returns its exit status instead of
    leaving the interpreter, so ``main([...])`` can be called from Python.
    """
    try:
        return body(argv)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as done:
        return int(done.code or 0)


def split_names(values: Iterable[str]) -> list[str]:
    """The names of an ``nargs="+"`` option, each value split at commas: ``a b,c`` and ``a,b c`` alike."""
    return [name for value in values for name in value.split(",") if name]


def check_methods(names: Iterable[str]) -> None:
    """Every name must be a method registered with :func:`tensorcomp.register`."""
    import tensorcomp
    import tensorcomp.adapters  # noqa: F401  (registers the baselines)

    available = tensorcomp.available_methods()
    unknown = [name for name in names if name not in available]
    if unknown:
        raise UsageError(f"unknown method {', '.join(map(repr, unknown))}; available: {', '.join(available)}")


def check_eps(values: Iterable[float], *, allow_one: bool = True) -> None:
    """Energy fractions must lie in (0, 1] (or (0, 1) with ``allow_one=False``)."""
    values = list(values)
    for eps in values:
        if math.isnan(eps) or not 0.0 < eps <= 1.0 or (eps == 1.0 and not allow_one):
            interval = "(0, 1]" if allow_one else "(0, 1)"
            raise UsageError(f"--eps values must be in {interval}; got {' '.join(map(str, values))}")


def check_positive(**flags: int | None) -> None:
    """Each given option (``None`` = not set) must be a positive integer; keyword ``batch_size`` is ``--batch-size``."""
    for name, value in flags.items():
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")


def check_device(device: str) -> None:
    """``--device`` must be cpu, cuda or cuda:N, and a CUDA device must exist for the latter."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}; choose cpu or cuda")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")


def load_images(dataset: str, data_root: str | None, *, use_cache: bool = True) -> Any:
    """:func:`benchmarks._data.load_dataset`, with a missing or malformed data folder as a :class:`UsageError`."""
    from ._data import DataError, load_dataset

    try:
        return load_dataset(dataset, data_root, use_cache=use_cache)
    except DataError as error:
        raise UsageError(str(error)) from None
