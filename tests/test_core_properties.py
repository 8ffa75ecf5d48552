"""Property-based tests: on arbitrary small tensors and eps, the guarantees hold."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tensorcomp  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def tensors(draw, min_order=2, max_order=4):
    order = draw(st.integers(min_order, max_order))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=order, max_size=order)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    # Sometimes nearly low rank, sometimes with a dominant rank-one part.
    kind = draw(st.sampled_from(["noise", "rank_one_plus_noise", "sparse"]))
    if kind == "rank_one_plus_noise":
        x = 0.1 * x + np.einsum(",".join("ijkl"[: len(shape)]) + "->" + "ijkl"[: len(shape)], *(rng.standard_normal(n) for n in shape))
    elif kind == "sparse":
        x = x * (rng.random(shape) < 0.3)
    return x


eps_values = st.floats(0.05, 1.0, allow_nan=False)


def unfolding_energies(x, mode):
    s = np.linalg.svd(np.moveaxis(x, mode, 0).reshape(x.shape[mode], -1), compute_uv=False)
    return s**2


def is_minimal(energies, k, eps):
    """K keeps eps of the energy and K - 1 does not, up to rounding at the boundary."""
    total = energies.sum()
    tol = 1e-9 * total + 1e-300  # the second bound is strict: denormal totals round eps * total to 0
    return energies[:k].sum() >= eps * total - tol and energies[: k - 1].sum() < eps * total + tol


def orthonormal(u):
    return np.allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-8)


def measured(x, x_hat):
    total = np.sum(x**2)
    return 1.0 if total == 0 else 1.0 - np.sum((x - x_hat) ** 2) / total


@SETTINGS
@given(x=tensors(), eps=eps_values)
def test_hosvd_ranks_are_minimal_and_factors_orthonormal(x, eps):
    res = tensorcomp.hosvd(x, eps=eps)
    for mode, factor in enumerate(res.factors):
        energies = unfolding_energies(x, mode)
        if energies.sum() > 0:
            assert is_minimal(energies, res.rank[mode], eps), (mode, res.rank, eps)
        assert orthonormal(factor)
    assert res.explained_variance >= 1 - x.ndim * (1 - eps) - 1e-9
    assert res.explained_variance == pytest.approx(measured(x, res.to_tensor()), abs=1e-9)


@SETTINGS
@given(x=tensors(min_order=1), eps=eps_values)
def test_svd_rank_is_minimal_and_keeps_eps(x, eps):
    res = tensorcomp.svd(x, eps=eps)
    matrix = x.reshape(x.shape[0], -1)
    energies = np.linalg.svd(matrix, compute_uv=False) ** 2
    if energies.sum() > 0:
        assert is_minimal(energies, res.rank, eps)
    assert orthonormal(res.factors[0]) and orthonormal(res.factors[1])
    assert res.explained_variance >= eps - 1e-9
    assert res.explained_variance == pytest.approx(measured(x, res.to_tensor()), abs=1e-9)


@SETTINGS
@given(x=tensors(), eps=eps_values)
def test_tt_keeps_eps(x, eps):
    res = tensorcomp.tt(x, eps=eps)
    achieved = measured(x, res.to_tensor())
    assert achieved >= eps - 1e-9
    assert res.explained_variance == pytest.approx(achieved, abs=1e-9)
    assert res.rank[0] == res.rank[-1] == 1
    for factor in res.factors[:-1]:
        assert orthonormal(factor.reshape(-1, factor.shape[-1]))


@SETTINGS
@given(x=tensors(max_order=3), eps=eps_values)
def test_tucker_is_never_worse_than_hosvd(x, eps):
    h = tensorcomp.hosvd(x, eps=eps)
    t = tensorcomp.tucker(x, eps=eps, n_iter_max=5)
    assert t.rank == h.rank
    assert t.explained_variance >= h.explained_variance - 1e-12
    assert all(orthonormal(f) for f in t.factors)


@SETTINGS
@given(x=tensors(max_order=3), seed=st.integers(0, 1000))
def test_subspace_warm_start_keeps_ranks_and_orthonormality(x, seed):
    first = tensorcomp.hosvd(x, eps=0.8)
    nxt = x + 0.1 * np.random.default_rng(seed).standard_normal(x.shape)
    res = tensorcomp.subspace_iteration(nxt, init=first)
    assert res.rank == first.rank
    assert all(orthonormal(f) for f in res.factors)
    assert res.explained_variance == pytest.approx(measured(nxt, res.to_tensor()), abs=1e-9)


@SETTINGS
@given(
    energies=st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=20).map(
        lambda v: np.sort(np.asarray(v))[::-1]
    ),
    eps=eps_values,
)
def test_rank_for_energy_is_the_smallest_sufficient_prefix(energies, eps):
    k = tensorcomp.rank_for_energy(energies, eps)
    assert 1 <= k <= len(energies)
    if eps >= 1.0:
        assert k == len(energies)
    elif energies.sum() > 0:
        assert is_minimal(energies, k, eps)
