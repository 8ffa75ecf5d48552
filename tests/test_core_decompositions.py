"""Correctness of the core decompositions against independent references.

References: ``numpy.linalg.svd`` of unfoldings (ranks, singular values,
subspaces compared through their projectors ``U U^T``, which do not depend on
signs), and TensorLy's own ``*_to_tensor`` reconstructions.
"""

import math
import warnings

import numpy as np
import pytest
from tensorly.cp_tensor import cp_to_tensor
from tensorly.tt_tensor import tt_to_tensor
from tensorly.tucker_tensor import tucker_to_tensor

import tensorcomp
from conftest import stored_arrays  # shared test helpers

METHODS = ("svd", "hosvd", "tucker", "cp", "tt", "subspace")


def low_rank_tensor(shape, ranks, noise=0.05, seed=0):
    """Random Tucker tensor with a decaying core plus Gaussian noise, in float64."""
    rng = np.random.default_rng(seed)
    core = rng.standard_normal(ranks) * np.exp(-0.5 * np.arange(ranks[0]))[(slice(None),) + (None,) * (len(ranks) - 1)]
    x = core
    for mode, n in enumerate(shape):
        q, _ = np.linalg.qr(rng.standard_normal((n, ranks[mode])))
        x = np.moveaxis(np.tensordot(q, x, axes=([1], [mode])), 0, mode)
    return x + noise * np.linalg.norm(x) / math.sqrt(x.size) * rng.standard_normal(shape)


def unfolding(x, mode):
    return np.moveaxis(x, mode, 0).reshape(x.shape[mode], -1)


def eps_rank(singular_values, eps):
    """Smallest K with sum(s[:K]^2) >= eps * sum(s^2), written out as a loop."""
    energies = singular_values**2
    total = energies.sum()
    kept = 0.0
    for k, e in enumerate(energies, start=1):
        kept += e
        if kept >= eps * total:
            return k
    return len(energies)


def projector(u):
    u = np.asarray(u)
    return u @ u.T


def assert_orthonormal_columns(u, atol=1e-10):
    u = np.asarray(u)
    np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=atol)


def measured_explained(x, x_hat):
    return 1.0 - np.linalg.norm(x - x_hat) ** 2 / np.linalg.norm(x) ** 2


X3 = low_rank_tensor((12, 10, 8), (6, 5, 4))
X4 = low_rank_tensor((10, 6, 5, 4), (5, 4, 3, 3), seed=1)


# --------------------------------------------------------------------------- svd


@pytest.mark.parametrize("eps", [0.5, 0.8, 0.95, 0.999])
@pytest.mark.parametrize("x", [X3, X4, X3[:, :, 0]], ids=["order3", "order4", "matrix"])
def test_svd_matches_numpy_svd_of_the_matrix_view(x, eps):
    matrix = x.reshape(x.shape[0], -1)
    u_ref, s_ref, vt_ref = np.linalg.svd(matrix, full_matrices=False)
    k = eps_rank(s_ref, eps)
    res = tensorcomp.svd(x, eps=eps)
    s, (u, v) = res
    assert res.rank == k
    assert isinstance(res.rank, int)
    np.testing.assert_allclose(s, s_ref[:k], rtol=1e-8)
    np.testing.assert_allclose(projector(u), projector(u_ref[:, :k]), atol=1e-8)
    np.testing.assert_allclose(projector(v), projector(vt_ref[:k].T), atol=1e-8)
    assert_orthonormal_columns(u)
    assert_orthonormal_columns(v)
    assert res.to_tensor().shape == x.shape
    np.testing.assert_allclose(res.to_tensor().reshape(matrix.shape), cp_to_tensor((s, [u, v])), atol=1e-12)
    # K satisfies the energy criterion and K - 1 does not.
    energies = s_ref**2
    assert energies[:k].sum() >= eps * energies.sum()
    assert energies[: k - 1].sum() < eps * energies.sum()


def test_svd_of_a_tall_matrix_and_of_a_vector():
    tall = X3.reshape(-1, 4)  # rows > columns exercises the transposed Gram path
    res = tensorcomp.svd(tall, eps=0.9)
    s_ref = np.linalg.svd(tall, compute_uv=False)
    assert res.rank == eps_rank(s_ref, 0.9)
    np.testing.assert_allclose(res.weights, s_ref[: res.rank], rtol=1e-8)
    vector = np.arange(1.0, 6.0)
    res = tensorcomp.svd(vector, eps=0.9)
    assert res.rank == 1
    np.testing.assert_allclose(res.to_tensor(), vector, atol=1e-12)


# ------------------------------------------------------------------------- hosvd


@pytest.mark.parametrize("eps", [0.6, 0.85, 0.97])
@pytest.mark.parametrize("x", [X3, X4], ids=["order3", "order4"])
def test_hosvd_ranks_and_subspaces_match_svd_of_each_unfolding(x, eps):
    res = tensorcomp.hosvd(x, eps=eps)
    core, factors = res
    assert isinstance(res.rank, tuple) and len(res.rank) == x.ndim
    for mode, factor in enumerate(factors):
        u_ref, s_ref, _ = np.linalg.svd(unfolding(x, mode), full_matrices=False)
        k = eps_rank(s_ref, eps)
        assert res.rank[mode] == k, f"mode {mode}"
        assert factor.shape == (x.shape[mode], k)
        assert_orthonormal_columns(factor)
        np.testing.assert_allclose(projector(factor), projector(u_ref[:, :k]), atol=1e-7)
        energies = s_ref**2
        assert energies[:k].sum() >= eps * energies.sum()
        assert energies[: k - 1].sum() < eps * energies.sum()
    assert core.shape == res.rank
    # The core is x projected on every factor.
    expected_core = x
    for mode, factor in enumerate(factors):
        expected_core = np.moveaxis(np.tensordot(factor.T, expected_core, axes=([1], [mode])), 0, mode)
    np.testing.assert_allclose(core, expected_core, atol=1e-10)
    x_hat = res.to_tensor()
    np.testing.assert_allclose(x_hat, tucker_to_tensor((core, factors)), atol=1e-10)
    # HOSVD bound: each mode discards at most (1 - eps) of the energy.
    assert res.explained_variance >= 1 - x.ndim * (1 - eps) - 1e-12
    assert res.explained_variance == pytest.approx(measured_explained(x, x_hat), abs=1e-10)


def test_hosvd_of_a_matrix_is_the_truncated_svd():
    matrix = X3.reshape(12, -1)
    res = tensorcomp.hosvd(matrix, rank=3)
    u_ref, s_ref, vt_ref = np.linalg.svd(matrix, full_matrices=False)
    np.testing.assert_allclose(res.to_tensor(), (u_ref[:, :3] * s_ref[:3]) @ vt_ref[:3], atol=1e-9)


def test_hosvd_on_a_mode_longer_than_the_rest():
    # Mode 0 (40) is longer than the product of the others (12): the
    # right-Gram path of leading_subspace.
    x = low_rank_tensor((40, 4, 3), (6, 3, 2), seed=3)
    res = tensorcomp.hosvd(x, eps=0.9)
    for mode, factor in enumerate(res.factors):
        u_ref, s_ref, _ = np.linalg.svd(unfolding(x, mode), full_matrices=False)
        k = eps_rank(s_ref, 0.9)
        assert res.rank[mode] == k
        assert_orthonormal_columns(factor)
        np.testing.assert_allclose(projector(factor), projector(u_ref[:, :k]), atol=1e-7)


# ------------------------------------------------------------------------ tucker


@pytest.mark.parametrize("rank", [(2, 2, 2), (4, 3, 2), (6, 5, 4)])
def test_tucker_is_never_worse_than_hosvd_at_the_same_ranks(rank):
    x = low_rank_tensor((12, 10, 8), (8, 7, 6), noise=0.5, seed=2)
    h = tensorcomp.hosvd(x, rank=rank)
    t = tensorcomp.tucker(x, rank=rank)
    assert t.rank == h.rank == rank
    assert t.explained_variance >= h.explained_variance - 1e-12
    for factor in t.factors:
        assert_orthonormal_columns(factor)
    x_hat = t.to_tensor()
    np.testing.assert_allclose(x_hat, tucker_to_tensor((t.core, t.factors)), atol=1e-10)
    assert t.explained_variance == pytest.approx(measured_explained(x, x_hat), abs=1e-10)


def test_tucker_takes_its_ranks_from_hosvd():
    assert tensorcomp.tucker(X4, eps=0.8).rank == tensorcomp.hosvd(X4, eps=0.8).rank


def test_tucker_improves_on_hosvd_when_it_can():
    # With heavy noise HOSVD's factors are not optimal; HOOI must do strictly better.
    x = low_rank_tensor((12, 10, 8), (8, 7, 6), noise=1.0, seed=5)
    assert tensorcomp.tucker(x, rank=2).explained_variance > tensorcomp.hosvd(x, rank=2).explained_variance + 1e-6


# ---------------------------------------------------------------------------- tt


@pytest.mark.parametrize("eps", [0.5, 0.8, 0.95])
@pytest.mark.parametrize("x", [X3, X4], ids=["order3", "order4"])
def test_tt_guarantees_eps_and_matches_tensorly(x, eps):
    res = tensorcomp.tt(x, eps=eps)
    assert isinstance(res.rank, tuple) and len(res.rank) == x.ndim + 1
    assert res.rank[0] == res.rank[-1] == 1
    x_hat = res.to_tensor()
    np.testing.assert_allclose(x_hat, tt_to_tensor(res.factors), atol=1e-10)
    measured = measured_explained(x, x_hat)
    assert res.explained_variance == pytest.approx(measured, abs=1e-10)
    assert measured >= eps - 1e-12
    for k, factor in enumerate(res.factors):
        assert factor.shape == (res.rank[k], x.shape[k], res.rank[k + 1])
        if k < x.ndim - 1:  # left-orthonormal cores
            assert_orthonormal_columns(factor.reshape(-1, factor.shape[-1]))
    # First bond: the fewest singular vectors whose discarded energy fits the budget.
    s_ref = np.linalg.svd(x.reshape(x.shape[0], -1), compute_uv=False)
    budget = (1 - eps) * np.sum(x**2) / (x.ndim - 1)
    tails = np.array([np.sum(s_ref[k:] ** 2) for k in range(len(s_ref) + 1)])
    r1 = res.rank[1]
    assert tails[r1] <= budget * (1 + 1e-12)
    assert tails[r1 - 1] > budget


def test_tt_rank_argument_forms():
    x = X4
    assert tensorcomp.tt(x, rank=2).rank == (1, 2, 2, 2, 1)
    assert tensorcomp.tt(x, rank=(3, 2, 2)).rank == (1, 3, 2, 2, 1)
    assert tensorcomp.tt(x, rank=(1, 3, 2, 2, 1)).rank == (1, 3, 2, 2, 1)
    # An int above a bond's natural bound is capped there (the last bond is at most 4).
    assert tensorcomp.tt(x, rank=10).rank == (1, 10, 10, 4, 1)


# ---------------------------------------------------------------------------- cp


def cp_tensor(weights, shape, seed=0):
    rng = np.random.default_rng(seed)
    factors = [np.linalg.qr(rng.standard_normal((n, len(weights))))[0] for n in shape]
    return cp_to_tensor((np.asarray(weights, dtype=float), factors))


def test_cp_search_reaches_eps_at_a_small_rank():
    x = cp_tensor([10.0, 6.0, 3.0, 1.0], (8, 7, 6))
    res = tensorcomp.cp(x, eps=0.95)
    assert isinstance(res.rank, int)
    assert res.explained_variance >= 0.95
    x_hat = res.to_tensor()
    np.testing.assert_allclose(x_hat, cp_to_tensor((res.weights, res.factors)), atol=1e-10)
    assert res.explained_variance == pytest.approx(measured_explained(x, x_hat), abs=1e-10)
    # Components 1 and 2 hold 136/146 < 0.95 of the energy, so at least 3 are needed;
    # the exact rank-4 tensor must be found at rank <= 4.
    assert 3 <= res.rank <= 4
    for factor in res.factors:
        np.testing.assert_allclose(np.linalg.norm(factor, axis=0), 1.0, atol=1e-10)


def test_cp_with_rank_fits_exactly_that_rank():
    x = cp_tensor([5.0, 2.0], (6, 5, 4))
    res = tensorcomp.cp(x, eps=0.1, rank=2)
    assert res.rank == 2
    assert res.weights.shape == (2,)
    assert [f.shape for f in res.factors] == [(6, 2), (5, 2), (4, 2)]
    assert res.explained_variance > 1 - 1e-8


def test_cp_warns_when_max_rank_cannot_reach_eps():
    x = low_rank_tensor((6, 5, 4), (6, 5, 4), noise=1.0, seed=4)
    with pytest.warns(RuntimeWarning, match="max_rank=2"):
        res = tensorcomp.cp(x, eps=0.99, max_rank=2)
    assert res.rank == 2
    assert res.explained_variance < 0.99


def test_cp_does_not_warn_when_eps_is_reached():
    x = cp_tensor([3.0, 1.0], (5, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tensorcomp.cp(x, eps=0.9).explained_variance >= 0.9


# -------------------------------------------------------------------- subspace


def test_subspace_iteration_without_init_is_hosvd():
    a, b = tensorcomp.subspace_iteration(X4, eps=0.8), tensorcomp.hosvd(X4, eps=0.8)
    assert a.rank == b.rank
    for fa, fb in zip(a.factors, b.factors):
        np.testing.assert_allclose(projector(fa), projector(fb), atol=1e-10)


def test_subspace_iteration_warm_start_keeps_ranks_and_tracks_the_subspace():
    first = tensorcomp.subspace_iteration(X4, eps=0.8)
    rng = np.random.default_rng(7)
    nxt_x = X4 + 0.01 * np.std(X4) * rng.standard_normal(X4.shape)
    nxt = tensorcomp.subspace_iteration(nxt_x, eps=0.99, init=first)
    assert nxt.rank == first.rank  # the warm start's ranks win over eps
    for factor in nxt.factors:
        assert_orthonormal_columns(factor)
    fresh = tensorcomp.hosvd(nxt_x, rank=first.rank)
    assert nxt.explained_variance >= fresh.explained_variance - 1e-3
    x_hat = nxt.to_tensor()
    assert nxt.explained_variance == pytest.approx(measured_explained(nxt_x, x_hat), abs=1e-10)


def test_subspace_iteration_converges_from_a_poor_start():
    rank = (3, 3, 2, 2)
    start = tensorcomp.hosvd(low_rank_tensor(X4.shape, (5, 4, 3, 3), seed=9), rank=rank)
    one = tensorcomp.subspace_iteration(X4, init=start, n_iter=1)
    many = tensorcomp.subspace_iteration(X4, init=start, n_iter=30)
    target = tensorcomp.hosvd(X4, rank=rank)
    assert many.explained_variance >= one.explained_variance - 1e-12
    assert many.explained_variance == pytest.approx(target.explained_variance, abs=1e-4)


@pytest.mark.parametrize("n_iter", [1, 3])
def test_subspace_iteration_step_is_orth_of_the_gram_times_the_factor(n_iter):
    # Ranks near the mode size (modes 0, 2) take the Gram route, small ones
    # (modes 1, 3) the two thin products: both must be U <- orth(X_(n) X_(n)^T U).
    rank = (9, 2, 4, 1)
    start = tensorcomp.hosvd(low_rank_tensor(X4.shape, (9, 4, 4, 3), seed=3), rank=rank)
    res = tensorcomp.subspace_iteration(X4, init=start, n_iter=n_iter)
    assert res.rank == rank
    for mode, (factor, previous) in enumerate(zip(res.factors, start.factors)):
        a = np.moveaxis(X4, mode, 0).reshape(X4.shape[mode], -1)
        expected = previous
        for _ in range(n_iter):
            q, r = np.linalg.qr(a @ (a.T @ expected))
            expected = q * np.sign(np.diag(r))
        np.testing.assert_allclose(factor, expected, atol=1e-9)


def test_subspace_iteration_handles_a_changed_batch_size():
    first = tensorcomp.subspace_iteration(X4, eps=0.8)
    smaller = X4[:3]  # a short last batch: mode 0 shrinks from 10 to 3
    res = tensorcomp.subspace_iteration(smaller, init=first)
    assert res.rank[1:] == first.rank[1:]
    assert res.rank[0] == min(first.rank[0], 3)
    assert res.factors[0].shape == (3, res.rank[0])
    for factor in res.factors:
        assert_orthonormal_columns(factor)
    assert res.to_tensor().shape == smaller.shape


def test_subspace_iteration_rank_overrides_init():
    first = tensorcomp.subspace_iteration(X4, eps=0.8)
    res = tensorcomp.subspace_iteration(X4, init=first, rank=(2, 2, 2, 2))
    assert res.rank == (2, 2, 2, 2)


def test_subspace_iteration_rejects_init_of_another_order():
    with pytest.raises(ValueError, match="init"):
        tensorcomp.subspace_iteration(X4, init=tensorcomp.hosvd(X3, eps=0.8))


# ------------------------------------------------------------------ every method


@pytest.mark.parametrize("method", METHODS)
def test_explained_variance_is_the_measured_one(method):
    x = X3
    res = tensorcomp.decompose(x, method, eps=0.8)
    assert res.explained_variance == pytest.approx(measured_explained(x, res.to_tensor()), abs=1e-9)
    assert 0.0 <= res.explained_variance <= 1.0


@pytest.mark.parametrize("method", METHODS)
def test_nbytes_is_the_bytes_of_the_stored_arrays(method):
    res = tensorcomp.decompose(X3.astype(np.float32), method, eps=0.8)
    arrays = stored_arrays(res)
    assert res.nbytes == sum(a.size * a.itemsize for a in arrays)
    assert all(a.dtype == np.float32 for a in arrays)
    assert res.nbytes < X3.astype(np.float32).nbytes


@pytest.mark.parametrize("method", ["svd", "cp"])
def test_rank_is_an_int_for_svd_and_cp(method):
    res = tensorcomp.decompose(X3, method, eps=0.8)
    assert type(res.rank) is int
    assert res.weights.shape == (res.rank,)


@pytest.mark.parametrize("method", ["hosvd", "tucker", "subspace", "tt"])
def test_rank_is_a_tuple_for_tucker_and_tt(method):
    res = tensorcomp.decompose(X3, method, eps=0.8)
    assert type(res.rank) is tuple
    assert all(type(r) is int for r in res.rank)


@pytest.mark.parametrize("method", ["svd", "hosvd", "tucker", "tt", "subspace"])
@pytest.mark.parametrize("x", [X3, X4], ids=["order3", "order4"])
def test_eps_one_reconstructs_exactly(method, x):
    res = tensorcomp.decompose(x, method, eps=1.0)
    np.testing.assert_allclose(res.to_tensor(), x, atol=1e-9)
    assert res.explained_variance == pytest.approx(1.0, abs=1e-12)


def test_eps_one_cp_reconstructs_an_exact_low_rank_tensor():
    x = cp_tensor([2.0, 1.0], (5, 4, 3))
    res = tensorcomp.cp(x, eps=1.0 - 1e-9)
    np.testing.assert_allclose(res.to_tensor(), x, atol=1e-4)


@pytest.mark.parametrize(
    ("method", "rank", "expected"),
    [
        ("svd", 3, 3),
        ("hosvd", (2, 3, 2), (2, 3, 2)),
        ("hosvd", 2, (2, 2, 2)),
        ("tucker", (2, 3, 2), (2, 3, 2)),
        ("subspace", (2, 3, 2), (2, 3, 2)),
        ("tt", (2, 3), (1, 2, 3, 1)),
        ("cp", 3, 3),
    ],
)
def test_rank_overrides_eps(method, rank, expected):
    for eps in (0.05, 1.0):
        assert tensorcomp.decompose(X3, method, eps=eps, rank=rank).rank == expected


def test_unpacking_follows_tensorly():
    core, factors = tensorcomp.hosvd(X3, eps=0.8)
    assert core.ndim == 3 and len(factors) == 3
    weights, (u, v) = tensorcomp.svd(X3, eps=0.8)
    assert u.shape[1] == v.shape[1] == weights.shape[0]


def test_repr_summarises_the_result():
    text = repr(tensorcomp.hosvd(X3, eps=0.8))
    assert text.startswith("TuckerResult(") and "explained_variance=" in text and "nbytes=" in text


# ---------------------------------------------------------------------- registry


def test_available_methods_lists_the_core_methods():
    assert set(METHODS) <= set(tensorcomp.available_methods())
    assert list(tensorcomp.available_methods()) == sorted(tensorcomp.available_methods())


def test_decompose_dispatches_to_the_named_method():
    res = tensorcomp.decompose(X3, "hosvd", eps=0.8)
    assert res.rank == tensorcomp.hosvd(X3, eps=0.8).rank


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown method 'nope'") as info:
        tensorcomp.decompose(X3, "nope")
    for name in METHODS:
        assert name in str(info.value)


def test_register_a_user_method_and_reject_duplicates():
    from tensorcomp import registry

    calls = []

    def rank_one(x, eps=0.9, **kwargs):
        calls.append((eps, kwargs))
        return tensorcomp.hosvd(x, rank=1)

    try:
        assert tensorcomp.register("test_rank_one", rank_one) is rank_one
        assert "test_rank_one" in tensorcomp.available_methods()
        res = tensorcomp.decompose(X3, "test_rank_one", eps=0.7, flag=True)
        assert res.rank == (1, 1, 1)
        assert calls == [(0.7, {"flag": True})]
        tensorcomp.register("test_rank_one", rank_one)  # the same function again is harmless
        with pytest.raises(ValueError, match="already registered"):
            tensorcomp.register("test_rank_one", lambda x, eps=0.9: None)
        tensorcomp.register("test_rank_one", tensorcomp.svd, overwrite=True)
        assert tensorcomp.decompose(X3, "test_rank_one", eps=0.8).rank == tensorcomp.svd(X3, eps=0.8).rank
        with pytest.raises(ValueError, match="hosvd"):  # core names are protected too
            tensorcomp.register("hosvd", rank_one)
    finally:
        registry._METHODS.pop("test_rank_one", None)


@pytest.mark.parametrize("name, error", [("", ValueError), (None, TypeError), (3, TypeError)])
def test_register_rejects_bad_names(name, error):
    with pytest.raises(error, match="name must be a non-empty string"):
        tensorcomp.register(name, tensorcomp.svd)


def test_register_rejects_a_non_callable():
    with pytest.raises(TypeError, match="fn must be callable"):
        tensorcomp.register("test_not_callable", 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_svd_with_rank_above_the_matrix_rank_keeps_orthonormal_factors(dtype):
    rng = np.random.default_rng(0)
    matrix = (rng.standard_normal((30, 3)) @ rng.standard_normal((3, 50))).astype(dtype)
    res = tensorcomp.svd(matrix, rank=10)
    atol = 1e-5 if dtype == np.float32 else 1e-10
    assert_orthonormal_columns(res.factors[0], atol=atol)
    assert_orthonormal_columns(res.factors[1], atol=atol)
    np.testing.assert_allclose(res.to_tensor(), matrix, atol=100 * atol)


# ------------------------------------------------------------- shared helpers


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (3, 4, 20, 2), (2, 30), (7, 1, 5)])
def test_mode_gram_and_mode_product_match_the_unfolding_definitions(shape):
    from tensorcomp import _algebra

    x = np.random.default_rng(0).standard_normal(shape)
    for mode, n in enumerate(shape):
        matrix = np.random.default_rng(mode).standard_normal((3, n))
        expected = np.moveaxis(np.tensordot(matrix, x, axes=([1], [mode])), 0, mode)
        np.testing.assert_allclose(_algebra.mode_product(x, matrix, mode), expected, atol=1e-12)
        np.testing.assert_allclose(_algebra.mode_gram(x, mode), unfolding(x, mode) @ unfolding(x, mode).T, atol=1e-12)


@pytest.mark.parametrize("energies", [[6.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0]])
@pytest.mark.parametrize("eps", [0.1, 0.5, 0.6, 0.9, 0.99])
def test_rank_for_energy_agrees_with_the_written_out_rule(energies, eps):
    energies = np.asarray(energies)
    assert tensorcomp.rank_for_energy(energies, eps) == eps_rank(np.sqrt(energies), eps)
    # eps = 1 keeps everything, even components of zero energy (exact reconstruction).
    assert tensorcomp.rank_for_energy(energies, 1.0) == len(energies)


def test_svd_result_shape_is_the_tensor_it_stands_for():
    x = np.random.default_rng(0).standard_normal((4, 3, 2))
    res = tensorcomp.svd(x, eps=0.9)
    assert res.shape == (4, 3, 2) == res.to_tensor().shape == res.original_shape
    assert res.matrix_shape == (4, 6)
    assert "shape=(4, 3, 2)" in repr(res)


@pytest.mark.parametrize("method", ["svd", "hosvd", "tt", "tucker", "subspace", "cp"])
@pytest.mark.parametrize("scale, dtype", [(1e-170, np.float64), (1e170, np.float64), (1e-25, np.float32), (1e20, np.float32)])
def test_tiny_and_huge_magnitudes_decompose_like_unit_ones(method, scale, dtype):
    x = np.random.default_rng(0).standard_normal((12, 6, 5)).astype(dtype)
    unit = tensorcomp.decompose(x, method, eps=0.9)
    res = tensorcomp.decompose((x * dtype(scale)).astype(dtype), method, eps=0.9)
    assert res.rank == unit.rank
    assert res.explained_variance == pytest.approx(unit.explained_variance, rel=1e-4)
    rebuilt = np.asarray(res.to_tensor(), dtype=np.float64) / scale
    expected = np.asarray(unit.to_tensor(), dtype=np.float64)
    # x * scale is rounded in its dtype; CP's ALS in float32 moves with such a perturbation more than the others.
    tolerance = 2e-2 if method == "cp" and dtype == np.float32 else 1e-3
    assert np.linalg.norm(rebuilt - expected) <= tolerance * np.linalg.norm(expected)
