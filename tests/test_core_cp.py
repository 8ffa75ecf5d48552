"""CP by compressed ALS: accuracy against TensorLy's parafac, the rank search, robustness, validation, backends.

No timing assertions: speed is measured by ``python -m benchmarks.decomposition_speed --section cp``.
"""

import importlib
import json
import math
import warnings

import numpy as np
import pytest
import tensorly as tl
from tensorly.cp_tensor import cp_to_tensor
from tensorly.decomposition import parafac

import tensorcomp
from conftest import relative_error  # shared test helpers
from benchmarks.decomposition_speed import activation
from tensorcomp import _cp_als
from tensorcomp._backend import backend_for


cp_module = importlib.import_module("tensorcomp.cp")  # the attribute tensorcomp.cp is the function


def measured_explained(x, res):
    return 1.0 - relative_error(x, res) ** 2


def assert_finite(res):
    for a in [res.weights, *res.factors]:
        assert np.isfinite(np.asarray(a)).all()
    assert math.isfinite(res.explained_variance)


# ------------------------------------------------------------ against parafac


@pytest.mark.parametrize("shape", [(32, 16, 8, 8), (16, 32, 6, 6)])
@pytest.mark.parametrize("rank", [4, 8])
def test_fixed_rank_error_is_at_most_parafacs_plus_one_percent(shape, rank):
    x = activation(shape, seed=0)
    res = tensorcomp.cp(x, rank=rank)
    with tl.backend_context("numpy"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its SVD init on a mode shorter than the rank
        # random_state: that init fills such a mode's missing columns at random.
        reference = parafac(x, rank, init="svd", n_iter_max=100, random_state=0)
    reference_error = float(np.linalg.norm(x.astype(np.float64) - tl.cp_to_tensor(reference)) / np.linalg.norm(x))
    assert res.rank == rank
    assert relative_error(x, res) <= 1.01 * reference_error
    assert res.explained_variance == pytest.approx(measured_explained(x, res), abs=1e-5)


def test_fixed_rank_on_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    x = activation((32, 16, 8, 8), seed=1)
    ours = tensorcomp.cp(x, rank=6)
    res = tensorcomp.cp(torch.from_numpy(x), rank=6)
    assert all(isinstance(a, torch.Tensor) and a.dtype == torch.float32 for a in [res.weights, *res.factors])
    assert res.explained_variance == pytest.approx(ours.explained_variance, abs=1e-4)
    np.testing.assert_allclose(res.to_tensor().numpy(), ours.to_tensor(), atol=1e-3 * float(np.abs(x).max()))


def test_an_exact_low_rank_tensor_is_recovered():
    rng = np.random.default_rng(3)
    factors = [rng.standard_normal((n, 3)) for n in (9, 8, 7)]
    x = cp_to_tensor((np.array([3.0, 2.0, 1.0]), factors))
    res = tensorcomp.cp(x, rank=3)
    assert res.explained_variance > 1 - 1e-9
    np.testing.assert_allclose(res.to_tensor(), x, atol=1e-5 * np.abs(x).max())


def test_a_matrix_reaches_the_truncated_svd_optimum():
    x = np.random.default_rng(4).standard_normal((12, 9))
    s = np.linalg.svd(x, compute_uv=False)
    res = tensorcomp.cp(x, rank=3)
    assert res.explained_variance == pytest.approx(float(np.sum(s[:3] ** 2) / np.sum(s**2)), abs=1e-6)


# ------------------------------------------------------------ never singular


@pytest.mark.parametrize(("shape", "eps"), [((8, 8, 4, 4), 0.9), ((16, 8, 8, 8), 0.9)])
def test_search_on_activations_that_made_parafac_singular(shape, eps):
    # The previous implementation raised numpy.linalg.LinAlgError: Singular matrix on these.
    x = activation(shape, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = tensorcomp.cp(x, eps=eps)
    assert_finite(res)
    assert res.explained_variance >= eps
    assert res.explained_variance == pytest.approx(measured_explained(x, res), abs=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "rank2", "relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rank_30_on_a_4x5x6_tensor(kind, dtype):
    rng = np.random.default_rng(5)
    if kind == "rank2":
        x = np.einsum("ir,jr,kr->ijk", *(rng.standard_normal((n, 2)) for n in (4, 5, 6)))
    else:
        x = rng.standard_normal((4, 5, 6))
        if kind == "relu":
            x = np.maximum(x, 0.0)
    x = x.astype(dtype)
    res = tensorcomp.cp(x, rank=30)  # more components than any mode has rows
    assert res.rank == 30
    assert_finite(res)
    # 30 components can represent any 4 x 5 x 6 tensor (its rank is at most 20).
    assert res.explained_variance > 0.999


def test_singular_normal_equations_are_solved():
    # Two identical components make every ALS system exactly singular.
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 5, 4))
    with backend_for(x):
        column = [rng.standard_normal((n, 1)) for n in x.shape]
        factors = [np.concatenate([c, c], axis=1) / np.linalg.norm(c) for c in column]
        state = _cp_als.ALS(x, float(np.sum(x * x)), np.ones(2), factors)
        errors = [state.error]
        for _ in range(5):
            errors.append(state.sweep())
    assert all(math.isfinite(e) for e in errors)
    assert errors[-1] <= errors[0]


def test_a_zero_slice_and_a_constant_tensor_decompose():
    x = np.random.default_rng(7).standard_normal((6, 5, 4))
    x[2] = 0.0
    for tensor in (x, np.ones((6, 5, 4))):
        for options in ({"rank": 4}, {"eps": 0.9}):
            res = tensorcomp.cp(tensor, **options)
            assert_finite(res)
            assert res.explained_variance == pytest.approx(measured_explained(tensor, res), abs=1e-9)
    assert tensorcomp.cp(np.ones((6, 5, 4)), eps=0.99).rank == 1


# --------------------------------------------------------------- the search


def test_search_reaches_eps_on_an_activation_tensor():
    x = activation((16, 8, 6, 6), seed=2)
    res = tensorcomp.cp(x, eps=0.8)
    assert res.explained_variance >= 0.8
    assert res.explained_variance == pytest.approx(measured_explained(x, res), abs=1e-5)
    # One rank fewer does not reach eps by a margin this fit's own quality explains.
    below = tensorcomp.cp(x, rank=res.rank - 1)
    assert below.explained_variance < 0.8 + 5e-3


def test_search_compresses_once(monkeypatch):
    calls = []
    original = cp_module.compress

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(cp_module, "compress", counting)
    res = tensorcomp.cp(activation((16, 8, 6, 6), seed=2), eps=0.8)
    assert res.rank > 4  # several ranks were fitted
    assert len(calls) == 1


def test_search_below_eps_warns_and_returns_its_max_rank_fit():
    x = np.random.default_rng(8).standard_normal((8, 7, 6))
    with pytest.warns(RuntimeWarning, match=r"max_rank=3 reaches an explained variance of 0\.\d+ < eps=0\.99"):
        res = tensorcomp.cp(x, eps=0.99, max_rank=3)
    assert res.rank == 3
    assert res.explained_variance < 0.99
    assert res.explained_variance == pytest.approx(measured_explained(x, res), abs=1e-9)
    # The returned fit is as good as a direct fit at that rank.
    assert res.explained_variance >= tensorcomp.cp(x, rank=3).explained_variance - 1e-3


def test_search_does_not_warn_when_eps_is_reached_and_max_rank_is_capped():
    x = np.random.default_rng(9).standard_normal((4, 3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = tensorcomp.cp(x, eps=0.95, max_rank=10**6)  # capped at prod(shape)
    assert res.explained_variance >= 0.95


def test_zero_sweeps_return_the_starting_point():
    x = activation((16, 8, 6, 6), seed=3)
    start = tensorcomp.cp(x, rank=4, n_iter_max=0)
    fitted = tensorcomp.cp(x, rank=4)
    assert 0.0 < start.explained_variance < fitted.explained_variance
    again = tensorcomp.cp(x, rank=4, n_iter_max=0)
    np.testing.assert_array_equal(again.to_tensor(), start.to_tensor())


def test_more_sweeps_do_not_fit_worse():
    x = activation((16, 8, 6, 6), seed=4)
    scores = [tensorcomp.cp(x, rank=5, n_iter_max=n, tol=0.0).explained_variance for n in (1, 5, 50)]
    assert scores[0] <= scores[1] + 1e-6 <= scores[2] + 2e-6


# ---------------------------------------------------------------- the ALS


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_als_error_bookkeeping_matches_the_residual(backend):
    x = activation((12, 8, 5, 5), seed=5).astype(np.float64)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        x = torch.from_numpy(x)
    with backend_for(x):
        total = float(tl.sum(x * x))
        factors = _cp_als.initial_factors(x, 5)
        state = _cp_als.ALS(x, total, tl.ones((5,), **tl.context(x)), factors)
        state.least_squares_weights()
        previous = state.error
        for _ in range(20):
            state.run(3, -1.0)  # three sweeps, each after the first followed by a trial extrapolation
            assert state.error <= previous * (1 + 1e-12)
            previous = state.error
            residual = x - tl.cp_to_tensor((state.weights, state.factors))
            assert state.error == pytest.approx(float(tl.sum(residual * residual)), rel=1e-9)
            norms = tl.to_numpy(tl.sqrt(tl.sum(state.factors[0] * state.factors[0], axis=0)))
            np.testing.assert_allclose(norms, 1.0, atol=1e-12)


def test_an_accepted_extrapolation_keeps_a_correct_partial_product():
    x = activation((12, 8, 5, 5), seed=6).astype(np.float64)
    with backend_for(x):
        state = _cp_als.ALS(x, float(np.sum(x * x)), np.ones(4), _cp_als.initial_factors(x, 4))
        state.least_squares_weights()
        accepted = 0
        for _ in range(30):
            previous = (state.weights, list(state.factors))
            state.sweep()
            if state._extrapolate(previous, 2.0):
                accepted += 1
                cached_factors, cached = state._partial
                assert all(a is b for a, b in zip(cached_factors, state.factors[state.split :]))
                np.testing.assert_allclose(cached, state._leading_partial(state.factors), rtol=1e-10, atol=1e-12)
                np.testing.assert_allclose(np.linalg.norm(state.factors[-1], axis=0), 1.0, atol=1e-12)
    assert accepted > 0


def test_compression_is_a_projection_on_orthonormal_bases_dropping_at_most_what_eps_allows():
    x = activation((16, 8, 6, 6), seed=6).astype(np.float64)
    with backend_for(x):
        core, bases = _cp_als.compress(x, eps=0.95)
        whole, none = _cp_als.compress(x, ranks=list(x.shape))
        small, small_bases = _cp_als.compress(x, ranks=[3, 2, 6, 2])
    assert whole is x and none == [None] * 4
    assert small.shape == (3, 2, 6, 2) and small_bases[2] is None
    for basis in [*bases, *small_bases]:
        if basis is not None:
            np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
    projected = x
    for mode, basis in enumerate(bases):
        if basis is not None:
            projected = np.moveaxis(np.tensordot(basis.T, projected, axes=([1], [mode])), 0, mode)
    np.testing.assert_allclose(core, projected, atol=1e-10)
    assert core.size < x.size
    # Each of the 4 steps drops at most 5% of what is left of the energy.
    assert float(np.sum(core**2)) >= (1 - 0.05) ** 4 * float(np.sum(x**2))


# --------------------------------------------------------------------- jax


def test_jax_goes_through_numpy_and_comes_back():
    jnp = pytest.importorskip("jax.numpy")
    import jax

    x = activation((8, 6, 5, 5), seed=7)
    reference = tensorcomp.cp(x, eps=0.8)
    res = tensorcomp.cp(jnp.asarray(x), eps=0.8)
    assert all(isinstance(a, jax.Array) and a.dtype == jnp.float32 for a in [res.weights, *res.factors])
    assert res.rank == reference.rank
    assert res.explained_variance == reference.explained_variance
    np.testing.assert_allclose(np.asarray(res.to_tensor()), reference.to_tensor(), rtol=0, atol=1e-5)
    assert tl.get_backend() == "numpy"


def test_jax_search_below_eps_warns_from_the_caller():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.asarray(np.random.default_rng(10).standard_normal((6, 5, 4)).astype(np.float32))
    with pytest.warns(RuntimeWarning, match="max_rank=2") as record:
        tensorcomp.cp(x, eps=0.99, max_rank=2)
    assert record[0].filename == __file__


# -------------------------------------------------------------- validation


X = np.random.default_rng(11).standard_normal((5, 4, 3))


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("n_iter_max", 2.5, TypeError),
        ("n_iter_max", "3", TypeError),
        ("n_iter_max", -1, ValueError),
        ("n_iter_max", True, TypeError),
        ("n_iter_max", "a", TypeError),
        ("n_iter_max", float("nan"), TypeError),
        ("n_iter_max", None, TypeError),
        ("tol", "3", TypeError),
        ("tol", -1, ValueError),
        ("tol", -1e-9, ValueError),
        ("tol", True, TypeError),
        ("tol", "a", TypeError),
        ("tol", float("nan"), ValueError),
        ("tol", float("inf"), ValueError),
        ("tol", None, TypeError),
        ("max_rank", 2.5, TypeError),
        ("max_rank", "3", TypeError),
        ("max_rank", 0, ValueError),
        ("max_rank", -1, ValueError),
        ("max_rank", True, TypeError),
        ("max_rank", float("nan"), TypeError),
    ],
)
def test_bad_options_raise_naming_the_option(option, value, error):
    with pytest.raises(error, match=option):
        tensorcomp.cp(X, **{option: value})


@pytest.mark.parametrize(
    "options",
    [
        {"n_iter_max": np.int64(50)},
        {"n_iter_max": 0},
        {"tol": 0},
        {"tol": 2.5},
        {"tol": np.float32(1e-5)},
        {"max_rank": np.int64(3)},
    ],
)
def test_numpy_scalars_and_boundary_values_are_accepted(options):
    res = tensorcomp.cp(X, eps=0.5, **options)
    assert_finite(res)


# --------------------------------------------------------------- benchmark


def test_benchmark_cp_section_writes_its_own_tables(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("threadpoolctl")
    from benchmarks import decomposition_speed

    argv = ["--section", "cp", "--shapes", "8x6x4x4", "--ranks", "2", "--eps", "0.8", "--repeats", "1"]
    assert decomposition_speed.main([*argv, "--backend", "numpy", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "cp.json").read_text())
    rows = saved["rows"]
    assert [(r["backend"], r["task"]) for r in rows] == [("numpy", "rank=2"), ("numpy", "eps=0.8")]
    assert rows[0]["rank"] == 2 and rows[0]["error_ratio"] <= 1.01
    assert rows[1]["explained_variance"] >= 0.8
    assert rows[1]["error_tensorcomp"] == pytest.approx(math.sqrt(1 - rows[1]["explained_variance"]), abs=1e-5)
    assert saved["meta"]["command"].startswith("python -m benchmarks.decomposition_speed --section cp")
    assert "load_average_start" in saved["meta"]
    assert (tmp_path / "cp.csv").read_text().startswith("# date:")
    assert (tmp_path / "cp_speedup.png").stat().st_size > 0
    assert not (tmp_path / "results.json").exists()  # the HOSVD section's tables are left alone


def test_benchmark_rejects_a_zero_rank(tmp_path, capsys):
    from benchmarks import decomposition_speed

    assert decomposition_speed.main(["--section", "cp", "--ranks", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--ranks must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
