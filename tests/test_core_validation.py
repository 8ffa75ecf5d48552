"""Bad input is rejected at the public boundary with messages naming the argument and value;
degenerate but valid input (all zeros, integers, booleans) gives valid results."""

import math
import warnings

import numpy as np
import pytest

import tensorcomp

torch = pytest.importorskip("torch")

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


def test_bad_method_options_name_the_option():
    with pytest.raises(ValueError, match="max_rank=0"):
        tensorcomp.cp(X, max_rank=0)
    with pytest.raises(ValueError, match="n_iter_max=-1"):
        tensorcomp.tucker(X, n_iter_max=-1)
    with pytest.raises(ValueError, match="tol=-0.1"):
        tensorcomp.tucker(X, tol=-0.1)
    with pytest.raises(ValueError, match="n_iter=0"):
        tensorcomp.subspace_iteration(X, init=tensorcomp.hosvd(X), n_iter=0)


# ------------------------------------------------------------------------- values


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_a_value_error(method, bad):
    x = X.copy()
    x[1, 2, 0] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN arithmetic warnings on the way to the error
        with pytest.raises(ValueError, match="NaN or Inf"):
            tensorcomp.decompose(x, method)
        with pytest.raises(ValueError, match="NaN or Inf"):
            tensorcomp.decompose(torch.as_tensor(x), method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [np.zeros, torch.zeros], ids=["numpy", "torch"])
def test_all_zero_tensor_gives_a_zero_result_without_warnings(method, make):
    x = make((5, 4, 3))
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


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("default", [torch.float32, torch.float64])
def test_integer_and_boolean_torch_tensors_become_the_default_dtype(dtype, default):
    x = (torch.arange(60).reshape(5, 4, 3) % 7 > 2).to(dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        res = tensorcomp.hosvd(x, eps=1.0)
    finally:
        torch.set_default_dtype(previous)
    assert res.core.dtype == default
    np.testing.assert_allclose(res.to_tensor().numpy(), x.numpy().astype(np.float64), atol=1e-5)


def test_complex_input_is_a_type_error():
    with pytest.raises(TypeError, match="real tensors only.*complex"):
        tensorcomp.hosvd(X.astype(np.complex128))


@pytest.mark.parametrize("x", [[[1.0, 2.0], [3.0, 4.0]], 3.0, "abc"], ids=["list", "float", "str"])
def test_non_array_input_is_a_type_error(x):
    with pytest.raises(TypeError, match="x must be an array of a TensorLy backend"):
        tensorcomp.svd(x)


# -------------------------------------------------------------------------- shape


@pytest.mark.parametrize("method", ["hosvd", "tucker", "cp", "tt", "subspace"])
def test_a_vector_is_too_low_an_order_for_tensor_methods(method):
    with pytest.raises(ValueError, match=r"order >= 2.*order 1 with shape \(5,\)"):
        tensorcomp.decompose(np.arange(5.0), method)


@pytest.mark.parametrize("x", [np.array(3.0), torch.tensor(3.0)], ids=["numpy", "torch"])
def test_svd_of_a_scalar_is_a_value_error(x):
    with pytest.raises(ValueError, match=r"svd needs a tensor of order >= 1.*order 0"):
        tensorcomp.svd(x)


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
