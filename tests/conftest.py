"""Helpers shared by the test files: the arrays a result stores, relative errors, a private benchmark cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tensorcomp


def stored_arrays(res: Any) -> list[Any]:
    """The arrays a Tucker, TT or CP result stores (what its ``nbytes`` counts)."""
    if isinstance(res, tensorcomp.TuckerResult):
        return [res.core, *res.factors]
    if isinstance(res, tensorcomp.TTResult):
        return list(res.factors)
    return [res.weights, *res.factors]


def relative_error(x: Any, x_hat: Any) -> float:
    """``||x - x_hat|| / ||x||`` in float64; ``x_hat`` is an array or a result with ``to_tensor()``."""
    if hasattr(x_hat, "to_tensor"):
        x_hat = x_hat.to_tensor()
    x, x_hat = (np.asarray(_host(a), dtype=np.float64) for a in (x, x_hat))
    return float(np.linalg.norm(x - x_hat) / np.linalg.norm(x))


def _host(a: Any) -> Any:
    return a.detach().cpu() if hasattr(a, "detach") else a


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A fresh benchmark cache (checkpoints, decoded images) and no data root from the environment."""
    monkeypatch.setenv("TENSORCOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TENSORCOMP_DATA_ROOT", raising=False)
