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


def plain_and_checkpointed_step(base: Any, k: int) -> tuple[list[str], list[list[Any]], list[int], tuple[Any, Any]]:
    """One step of two copies of ``base`` (float64), the last ``k`` layers trainable, the second checkpointed.

    Returns the checkpointed regions, each copy's trainable-parameter
    gradients, each copy's held bytes (an independent saved-tensor census)
    and the two copies.
    """
    import copy

    import torch
    import torch.nn.functional as F

    from benchmarks._census import StepCensus
    from benchmarks._models import FineTuneSetting, checkpoint_trainable

    base = base.double()
    plain, wrapped = copy.deepcopy(base), copy.deepcopy(base)
    settings = FineTuneSetting(plain, k), FineTuneSetting(wrapped, k)
    regions = checkpoint_trainable(wrapped)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    held = []
    for model, setting in zip((plain, wrapped), settings):
        setting.train()
        census = StepCensus(model)
        F.cross_entropy(model(x), y).backward()
        held.append(census.peak_bytes)
        census.remove()
    grads = [[p.grad for p in m.parameters() if p.requires_grad] for m in (plain, wrapped)]
    return regions, grads, held, (plain, wrapped)
