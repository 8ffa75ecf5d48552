"""Bad input is rejected at the public boundary with messages naming the argument and value;
degenerate but valid input (all zeros, integers, booleans) gives valid results."""

import math
import re
import warnings

import numpy as np
import pytest

import tensorcomp

try:
    import torch
except ImportError:  # a core-only install: the numpy cases still run
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install tensorcomp[torch])")

METHODS = ("svd", "hosvd", "tucker", "cp", "tt", "subspace")
X = np.random.default_rng(0).standard_normal((5, 4, 3))


# ---------------------------------------------------------------------------- eps


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("eps", [0, 0.0, -1, 1.5, 1.0000001, float("nan"), float("inf")])
def test_eps_out_of_range_is_a_value_error_naming_eps(method, eps):
    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\].*eps=") as info:
        tensorcomp.decompose(X, method, eps=eps)
    assert repr(float(eps)) in str(info.value)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("eps", ["0.9", True, None, [0.9], 1j])
def test_eps_of_the_wrong_type_is_a_type_error_naming_eps(method, eps):
    with pytest.raises(TypeError, match="eps must be a real number") as info:
        tensorcomp.decompose(X, method, eps=eps)
    assert repr(eps) in str(info.value)


@pytest.mark.parametrize("eps", [np.float32(0.9), np.float64(0.5), 1, np.int64(1)])
def test_eps_accepts_numpy_scalars_and_the_integer_one(eps):
    assert 0 < tensorcomp.hosvd(X, eps=eps).explained_variance <= 1


# --------------------------------------------------------------------------- rank


@pytest.mark.parametrize(
    ("method", "rank", "message"),
    [
        ("svd", 0, r"rank must be an integer between 1 and 5; got rank=0"),
        ("svd", -1, r"got rank=-1"),
        ("svd", 6, r"between 1 and 5; got rank=6"),  # min(5, 4 * 3)
        ("hosvd", 0, r"got rank=0"),
        ("hosvd", (2, 0, 2), r"rank\[1\] must be an integer between 1 and 4; got rank\[1\]=0"),
        ("hosvd", (6, 2, 2), r"rank\[0\] must be an integer between 1 and 5; got rank\[0\]=6"),
        ("hosvd", 4, r"between 1 and 3; got rank=4"),  # mode 2 has only 3
        ("hosvd", (2, 2), r"one entry per mode \(3\); got rank=\(2, 2\)"),
        ("tucker", (2, 2, 4), r"rank\[2\]=4"),
        ("subspace", (2, -2, 2), r"rank\[1\]=-2"),
        ("tt", 0, r"got rank=0"),
        ("tt", (2, 13), r"rank\[2\] must be an integer between 1 and 3; got rank\[2\]=13"),
        ("tt", (2, 3, 2), r"2 internal ranks.*got rank=\(2, 3, 2\)"),
        ("tt", (2, 2, 2, 2), r"boundary TT ranks must be 1; got rank=\(2, 2, 2, 2\)"),
        ("cp", 0, r"got rank=0"),
        ("cp", 61, r"between 1 and 60; got rank=61"),
    ],
)
def test_bad_rank_is_a_value_error_naming_rank_and_value(method, rank, message):
    with pytest.raises(ValueError, match=message):
        tensorcomp.decompose(X, method, rank=rank)


@pytest.mark.parametrize(("method", "rank"), [("svd", 2.5), ("hosvd", "2"), ("hosvd", (2, 2.0, 2)), ("cp", True), ("tt", 2.0)])
def test_rank_of_the_wrong_type_is_a_type_error(method, rank):
    with pytest.raises(TypeError, match="rank"):
        tensorcomp.decompose(X, method, rank=rank)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank", [2.5, 2.0, "2", True, float("nan")], ids=["2.5", "2.0", "str", "bool", "nan"])
def test_a_non_integer_rank_is_the_same_type_error_for_every_method(method, rank):
    with pytest.raises(TypeError) as info:
        tensorcomp.decompose(X, method, rank=rank)
    # One form everywhere: the name, the range, what else is allowed, the value and its type.
    expected = r"rank must be an integer between 1 and \d+( or a sequence of \d integers)?; got "
    assert re.fullmatch(expected + re.escape(f"{rank!r} of type {type(rank).__name__}"), str(info.value)), str(info.value)


@pytest.mark.parametrize(
    ("method", "rank", "name"),
    [
        ("hosvd", (2, 2.5, 2), "rank[1]"),
        ("tucker", (2, 2, "2"), "rank[2]"),
        ("subspace", (True, 2, 2), "rank[0]"),
        ("tt", (2, 2.5), "rank[2]"),
        ("tt", (1.0, 2, 2, 1), "rank[0]"),  # a boundary rank of the right value but the wrong type
        ("tt", (1, 2, 2, "1"), "rank[3]"),
    ],
)
def test_a_non_integer_rank_entry_is_a_type_error_naming_the_entry(method, rank, name):
    with pytest.raises(TypeError, match=r"^" + re.escape(name) + r" must be an integer"):
        tensorcomp.decompose(X, method, rank=rank)


@pytest.mark.parametrize("method", METHODS)
def test_numpy_integer_ranks_are_integers(method):
    expected = tensorcomp.decompose(X, method, rank=2).rank
    assert tensorcomp.decompose(X, method, rank=np.int64(2)).rank == expected
    if method in ("hosvd", "tucker", "subspace"):
        assert tensorcomp.decompose(X, method, rank=(np.int64(2), np.int32(2), np.uint8(2))).rank == expected


def test_bad_method_options_name_the_option():
    with pytest.raises(ValueError, match="max_rank=0"):
        tensorcomp.cp(X, max_rank=0)
    with pytest.raises(ValueError, match="n_iter_max=-1"):
        tensorcomp.tucker(X, n_iter_max=-1)
    with pytest.raises(ValueError, match="tol=-0.1"):
        tensorcomp.tucker(X, tol=-0.1)
    with pytest.raises(ValueError, match="n_iter=0"):
        tensorcomp.subspace_iteration(X, init=tensorcomp.hosvd(X), n_iter=0)


# ---------------------------------------------------------------- method options
# (cp's n_iter_max, tol and max_rank are validated by cp itself.)

INTEGER_OPTIONS = [("tucker", "n_iter_max", 0), ("subspace", "n_iter", 1)]
REAL_OPTIONS = [("tucker", "tol", 0.0)]


def with_option(method, name, value):
    options = {name: value}
    if method == "subspace":
        options["init"] = tensorcomp.hosvd(X, eps=0.9)  # n_iter matters for a warm start
    return tensorcomp.decompose(X, method, **options)


@pytest.mark.parametrize(("method", "name", "minimum"), INTEGER_OPTIONS)
@pytest.mark.parametrize("value", [2.5, "3", True, "a", float("nan"), None, 3.0], ids=repr)
def test_an_integer_option_of_the_wrong_type_is_a_type_error_naming_it(method, name, minimum, value):
    with pytest.raises(TypeError, match=rf"^{name} must be an integer >= {minimum}; got ") as info:
        with_option(method, name, value)
    assert f"{value!r} of type {type(value).__name__}" in str(info.value)


@pytest.mark.parametrize(("method", "name", "minimum"), INTEGER_OPTIONS)
def test_an_integer_option_out_of_range_is_a_value_error_naming_it(method, name, minimum):
    for value in (minimum - 1, -5):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer >= {minimum}; got {name}={value}$"):
            with_option(method, name, value)


@pytest.mark.parametrize(("method", "name", "minimum"), REAL_OPTIONS)
@pytest.mark.parametrize("value", ["3", True, "a", None, [0.1]], ids=repr)
def test_a_real_option_of_the_wrong_type_is_a_type_error_naming_it(method, name, minimum, value):
    with pytest.raises(TypeError, match=rf"^{name} must be a real number >= {minimum}; got ") as info:
        with_option(method, name, value)
    assert f"{value!r} of type {type(value).__name__}" in str(info.value)


@pytest.mark.parametrize(("method", "name", "minimum"), REAL_OPTIONS)
@pytest.mark.parametrize("value", [-1, -0.1, float("nan"), float("inf"), -float("inf")], ids=repr)
def test_a_real_option_out_of_range_or_not_finite_is_a_value_error_naming_it(method, name, minimum, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite real number >= {minimum}; got {name}=") as info:
        with_option(method, name, value)
    assert repr(float(value)) in str(info.value)


@pytest.mark.parametrize(
    ("method", "name", "value"),
    [
        ("tucker", "n_iter_max", np.int64(3)),
        ("tucker", "n_iter_max", 0),
        ("tucker", "tol", np.float32(1e-3)),
        ("tucker", "tol", 2.5),  # any sweep's gain is below it: one sweep
        ("tucker", "tol", 0),
        ("subspace", "n_iter", np.int64(2)),
        ("subspace", "n_iter", np.uint8(1)),
    ],
    ids=repr,
)
def test_numpy_scalars_and_boundary_values_are_accepted(method, name, value):
    res = with_option(method, name, value)
    plain = with_option(method, name, value.item() if isinstance(value, np.generic) else value)
    assert res.rank == plain.rank
    np.testing.assert_allclose(res.to_tensor(), plain.to_tensor(), atol=1e-12)


def test_n_iter_counts_steps_for_a_numpy_integer():
    start = tensorcomp.hosvd(X, rank=2)
    one = tensorcomp.subspace_iteration(X, init=start, n_iter=np.int64(1))
    two = tensorcomp.subspace_iteration(X, init=start, n_iter=np.int64(2))
    assert two.explained_variance >= one.explained_variance - 1e-12
    np.testing.assert_allclose(two.to_tensor(), tensorcomp.subspace_iteration(X, init=start, n_iter=2).to_tensor())


# ------------------------------------------------------------------ init (warm start)


def svd_result():
    return tensorcomp.svd(X, eps=0.9)


def cp_result():
    weights, (u, v) = tensorcomp.svd(X[:, :, 0], rank=2)
    return tensorcomp.CPResult(weights, [u, v, np.ones((3, 2)) / np.sqrt(3)], explained_variance=0.5)


def tt_result():
    return tensorcomp.tt(X, eps=0.9)


def core_and_factors():
    res = tensorcomp.hosvd(X, eps=0.9)
    return res.core, res.factors


class FactorsOfTheWrongOrder:
    factors = [np.ones((5, 2, 1)), np.ones((4, 2)), np.ones((3, 2))]


@pytest.mark.parametrize(
    ("make", "given"),
    [
        pytest.param(lambda: X, "an object of type ndarray", id="ndarray"),
        pytest.param(svd_result, "SVDResult, a CP decomposition, whose factors are not Tucker factors", id="SVDResult"),
        pytest.param(cp_result, "CPResult, a CP decomposition", id="CPResult"),
        pytest.param(tt_result, "TTResult, a tensor-train decomposition", id="TTResult"),
        pytest.param(core_and_factors, "an object of type tuple", id="tuple"),
        pytest.param(lambda: "hosvd", "an object of type str", id="str"),
        pytest.param(lambda: 3, "an object of type int", id="int"),
        pytest.param(FactorsOfTheWrongOrder, r"FactorsOfTheWrongOrder whose factors\[0\] has shape \(5, 2, 1\)", id="3-D factor"),
    ],
)
def test_an_init_that_is_not_a_tucker_decomposition_is_a_type_error_saying_what_init_accepts(make, given):
    with pytest.raises(TypeError, match=r"^init must be a Tucker decomposition of x's order \(a TuckerResult .*\); got " + given):
        tensorcomp.subspace_iteration(X, init=make())


def test_init_of_another_order_is_still_a_value_error():
    with pytest.raises(ValueError, match=r"^init must be of order 3 like x; got a decomposition of order 2"):
        tensorcomp.subspace_iteration(X, init=tensorcomp.hosvd(X[:, :, 0], eps=0.9))


def test_init_factor_without_columns_is_a_value_error():
    class Empty:
        factors = [np.ones((5, 2)), np.ones((4, 0)), np.ones((3, 2))]

    with pytest.raises(ValueError, match=r"^init\.factors\[1\] must have at least one column; got shape \(4, 0\)"):
        tensorcomp.subspace_iteration(X, init=Empty())


def test_init_accepts_tucker_tensors_and_bare_factors():
    from tensorly.tucker_tensor import TuckerTensor

    start = tensorcomp.hosvd(X, rank=(3, 2, 2))
    expected = tensorcomp.subspace_iteration(X, init=start)

    class Factors:  # what the adapters keep between steps: the factors, not the core
        def __init__(self, factors):
            self.factors = list(factors)

    for init in (TuckerTensor((start.core, start.factors)), Factors(start.factors), Factors(tuple(start.factors))):
        res = tensorcomp.subspace_iteration(X, init=init)
        assert res.rank == (3, 2, 2)
        np.testing.assert_allclose(res.to_tensor(), expected.to_tensor(), atol=1e-12)


# ------------------------------------------------------------------------- values


def as_numpy(x):
    return x


def as_torch(x):
    return torch.as_tensor(x)


BACKENDS = [pytest.param(as_numpy, id="numpy"), pytest.param(as_torch, id="torch", marks=requires_torch)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("convert", BACKENDS)
def test_non_finite_input_is_a_value_error(method, bad, convert):
    x = X.copy()
    x[1, 2, 0] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN arithmetic warnings on the way to the error
        with pytest.raises(ValueError, match="NaN or Inf"):
            tensorcomp.decompose(convert(x), method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("convert", BACKENDS)
def test_all_zero_tensor_gives_a_zero_result_without_warnings(method, convert):
    x = convert(np.zeros((5, 4, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = tensorcomp.decompose(x, method, eps=0.9)
        x_hat = res.to_tensor()
    assert res.explained_variance == 1.0
    assert tuple(x_hat.shape) == (5, 4, 3)
    assert float(abs(x_hat).max()) == 0.0
    assert not np.isnan(np.asarray(x_hat)).any()
    ranks = [res.rank] if isinstance(res.rank, int) else list(res.rank)
    assert all(r == 1 for r in ranks)  # nothing to keep: the smallest valid rank


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_boolean_numpy_arrays_become_float64(method, dtype):
    x = (np.arange(60).reshape(5, 4, 3) % 7 > 2).astype(dtype)
    res = tensorcomp.decompose(x, method, eps=1.0 if method != "cp" else 0.9)
    x_hat = res.to_tensor()
    assert x_hat.dtype == np.float64
    if method != "cp":
        np.testing.assert_allclose(x_hat, x.astype(np.float64), atol=1e-9)


@requires_torch
@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "bool"])
@pytest.mark.parametrize("default", ["float32", "float64"])
def test_integer_and_boolean_torch_tensors_become_the_default_dtype(dtype, default):
    dtype, default = getattr(torch, dtype), getattr(torch, default)
    x = (torch.arange(60).reshape(5, 4, 3) % 7 > 2).to(dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        res = tensorcomp.hosvd(x, eps=1.0)
    finally:
        torch.set_default_dtype(previous)
    assert res.core.dtype == default
    np.testing.assert_allclose(res.to_tensor().numpy(), x.numpy().astype(np.float64), atol=1e-5)


@pytest.mark.parametrize("convert", BACKENDS)
def test_complex_input_is_a_type_error(convert):
    with pytest.raises(TypeError, match=r"^x must be a dense real array.*dtype complex128; hosvd supports real tensors only"):
        tensorcomp.hosvd(convert(X.astype(np.complex128)))


@pytest.mark.parametrize(
    ("x", "given"),
    [([[1.0, 2.0], [3.0, 4.0]], "builtins.list"), (3.0, "builtins.float"), ("abc", "builtins.str")],
    ids=["list", "float", "str"],
)
def test_non_array_input_is_a_type_error(x, given):
    with pytest.raises(TypeError, match=rf"^x must be a dense real array of a TensorLy backend .*; got an object of type {given}; the TensorLy backends are "):
        tensorcomp.svd(x)


# -------------------------------------------------------------------------- shape


@pytest.mark.parametrize("method", ["hosvd", "tucker", "cp", "tt", "subspace"])
def test_a_vector_is_too_low_an_order_for_tensor_methods(method):
    with pytest.raises(ValueError, match=r"order >= 2.*order 1 with shape \(5,\)"):
        tensorcomp.decompose(np.arange(5.0), method)


@pytest.mark.parametrize("convert", BACKENDS)
def test_svd_of_a_scalar_is_a_value_error(convert):
    with pytest.raises(ValueError, match=r"svd needs a tensor of order >= 1.*order 0"):
        tensorcomp.svd(convert(np.array(3.0)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(0, 4, 3), (5, 0, 3), (5, 4, 0)])
def test_an_empty_dimension_is_a_value_error(method, shape):
    with pytest.raises(ValueError, match=r"empty dimensions.*" + re_shape(shape)):
        tensorcomp.decompose(np.zeros(shape), method)


def re_shape(shape):
    return r"\(" + r",\s*".join(str(n) for n in shape) + r"\)"


def test_dimensions_of_size_one_are_fine():
    x = X[:, :1, :]
    for method in METHODS:
        options = {"eps": 0.9, "max_rank": 3} if method == "cp" else {"eps": 1.0}
        res = tensorcomp.decompose(x, method, **options)
        assert res.to_tensor().shape == x.shape
        assert math.isfinite(res.explained_variance)


# -------------------------------------------------------------------- input kinds
# Array types a backend would take but that hold no dense real data: rejected before any
# conversion, with one message saying what x is and what is accepted.


def scipy_sparse(kind):
    def make():
        sparse = pytest.importorskip("scipy.sparse")
        return getattr(sparse, kind)(X[:, :, 0])

    return make


def torch_tensor(convert):
    def make():
        return convert(torch.as_tensor(X))

    return make


UNSUPPORTED_INPUTS = [
    pytest.param(scipy_sparse("csr_matrix"), r"a scipy\.sparse csr_matrix \(a sparse matrix\); convert it with x\.toarray\(\)", id="csr_matrix"),
    pytest.param(scipy_sparse("csr_array"), r"a scipy\.sparse csr_array", id="csr_array"),
    pytest.param(scipy_sparse("coo_matrix"), r"a scipy\.sparse coo_matrix", id="coo_matrix"),
    pytest.param(
        lambda: np.matrix(X[:, :, 0]),
        r"a numpy\.matrix; pass np\.asarray\(x\)",
        id="np.matrix",
        marks=pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    ),
    pytest.param(lambda: np.ma.masked_array(X, mask=X > 1), r"a numpy masked array \(its mask would be ignored\)", id="masked"),
    pytest.param(lambda: X.astype(object), r"a numpy\.ndarray of dtype object; \w+ takes float32 and float64", id="object"),
    pytest.param(lambda: X.astype(str), r"a numpy\.ndarray of dtype <U\d+", id="str-dtype"),
    pytest.param(lambda: np.zeros((5, 4, 3), dtype="datetime64[s]"), r"a numpy\.ndarray of dtype datetime64\[s\]", id="datetime"),
    pytest.param(
        lambda: torch.empty((5, 4, 3), device="meta"),
        r"a torch tensor on the meta device \(it holds no data\)",
        id="torch-meta",
        marks=requires_torch,
    ),
    pytest.param(
        torch_tensor(lambda t: t.to_sparse()),
        r"a torch tensor of layout torch\.sparse_coo \(a sparse tensor\); convert it with x\.to_dense\(\)",
        id="torch-sparse-coo",
        marks=requires_torch,
    ),
    pytest.param(
        torch_tensor(lambda t: t[:, :, 0].to_sparse_csr()),
        r"a torch tensor of layout torch\.sparse_csr",
        id="torch-sparse-csr",
        marks=[requires_torch, pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")],
    ),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("make", "given"), UNSUPPORTED_INPUTS)
def test_an_input_that_is_not_a_dense_real_array_is_a_type_error_naming_x(method, make, given):
    x = make()
    with pytest.raises(TypeError, match=r"^x must be a dense real array of a TensorLy backend \(numpy\.ndarray, torch\.Tensor, jax\.Array, \.\.\.\); got " + given):
        tensorcomp.decompose(x, method)


def test_a_jax_sparse_array_is_a_type_error_naming_x():
    pytest.importorskip("jax")
    from jax.experimental import sparse

    x = sparse.BCOO.fromdense(X[:, :, 0])
    with pytest.raises(TypeError, match=r"^x must be a dense real array.*; got a jax sparse BCOO; convert it with x\.todense\(\)"):
        tensorcomp.hosvd(x)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_numpy_matrix_is_rejected_before_the_backend_sees_it(monkeypatch):
    # Not converted with np.asarray first, nor handed to tensorly (whose calls would see a 2-D matrix).
    import tensorly as tl

    seen = []
    shape = tl.shape
    monkeypatch.setattr(tl, "shape", lambda x: seen.append(type(x)) or shape(x))
    with pytest.raises(TypeError, match=r"^x must be a dense real array.*got a numpy\.matrix"):
        tensorcomp.svd(np.matrix(X[:, :, 0]))
    assert seen == []
    tensorcomp.svd(X)
    assert seen  # the probe does see what reaches the backend


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.bool_, np.float16])
def test_dense_real_arrays_are_still_accepted(dtype):
    res = tensorcomp.hosvd((X > 0).astype(dtype) if dtype is np.bool_ else X.astype(dtype), eps=1.0)
    assert res.to_tensor().shape == X.shape


# ---------------------------------------------------------------- rank_for_energy


@pytest.mark.parametrize("energies", [[], (), np.array([]), np.zeros(0, dtype=np.float32)], ids=["list", "tuple", "array", "float32"])
def test_rank_for_energy_of_an_empty_spectrum_is_a_value_error_naming_energies(energies):
    with pytest.raises(ValueError, match=r"^energies must not be empty"):
        tensorcomp.rank_for_energy(energies, 0.9)


@pytest.mark.parametrize(
    ("energies", "eps", "error", "message"),
    [
        (np.ones((2, 2)), 0.9, ValueError, r"^energies must be a 1-D spectrum; got an array of shape \(2, 2\)"),
        (np.float64(3.0), 0.9, ValueError, r"^energies must be a 1-D spectrum; got an array of shape \(\)"),
        (["a", "b"], 0.9, TypeError, r"^energies must be real numbers"),
        (np.array([1.0 + 0j]), 0.9, TypeError, r"^energies must be real numbers.*complex128"),
        ([3.0, 1.0], float("nan"), ValueError, r"^eps must be a finite real number; got eps=nan"),
        ([3.0, 1.0], "0.9", TypeError, r"^eps must be a real number; got '0.9' of type str"),
        ([3.0, 1.0], None, TypeError, r"^eps must be a real number; got None"),
    ],
    ids=["2-D", "scalar", "strings", "complex", "eps-nan", "eps-str", "eps-None"],
)
def test_rank_for_energy_rejects_bad_arguments_naming_them(energies, eps, error, message):
    with pytest.raises(error, match=message):
        tensorcomp.rank_for_energy(energies, eps)


@pytest.mark.parametrize(
    ("energies", "eps", "rank"),
    [([6.0, 3.0, 1.0], 0.9, 2), ((6, 3, 1), np.float32(0.91), 3), ([5.0], 0.5, 1), ([0.0, 0.0], 0.5, 1), ([2.0, 1.0], 0.0, 1), ([2.0, 1.0], 1, 2)],
)
def test_rank_for_energy_takes_sequences_and_numpy_scalars(energies, eps, rank):
    assert tensorcomp.rank_for_energy(energies, eps) == rank


@pytest.mark.parametrize("method", METHODS)
def test_a_size_one_spectrum_still_gives_rank_one(method):
    # Every caller of rank_for_energy passes a non-empty spectrum; the smallest is a single value.
    x = np.full((1, 1, 1), 2.0)
    res = tensorcomp.decompose(x, method, eps=0.9)
    ranks = [res.rank] if isinstance(res.rank, int) else [r for r in res.rank]
    assert set(ranks) == {1}
    np.testing.assert_allclose(res.to_tensor(), x)
