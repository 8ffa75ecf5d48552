"""Every decomposition on every backend: numpy, PyTorch (CPU float32/float64, CUDA) and JAX.

Results stay on the input's backend, dtype and device; the caller's TensorLy
backend is never changed, not even by another thread decomposing at the same time.
"""

import threading

import numpy as np
import pytest
import tensorly as tl

import tensorcomp
from conftest import relative_error, stored_arrays  # shared test helpers

try:
    import torch
except ImportError:  # a core-only install: the numpy and jax cases still run
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install tensorcomp[torch])")

METHODS = ("svd", "hosvd", "tucker", "cp", "tt", "subspace")


def sample(shape=(6, 5, 4), seed=0):
    rng = np.random.default_rng(seed)
    u = [rng.standard_normal((n, 2)) for n in shape]
    x = np.einsum("ir,jr,kr->ijk", *u) + 0.05 * rng.standard_normal(shape)
    return x


X = sample()


def has_cuda():
    return torch is not None and torch.cuda.is_available()


TORCH_CASES = [
    pytest.param("cpu", "float32", id="cpu-float32", marks=requires_torch),
    pytest.param("cpu", "float64", id="cpu-float64", marks=requires_torch),
    pytest.param(
        "cuda",
        "float32",
        id="cuda-float32",
        marks=[requires_torch, pytest.mark.skipif(not has_cuda(), reason="no CUDA device")],
    ),
]


@pytest.mark.parametrize("method", METHODS)
def test_numpy_results_stay_numpy(method):
    for dtype in (np.float32, np.float64):
        res = tensorcomp.decompose(X.astype(dtype), method, eps=0.9)
        assert all(isinstance(a, np.ndarray) and a.dtype == dtype for a in stored_arrays(res))
        x_hat = res.to_tensor()
        assert isinstance(x_hat, np.ndarray) and x_hat.dtype == dtype and x_hat.shape == X.shape


@pytest.mark.parametrize(("device", "dtype"), TORCH_CASES)
@pytest.mark.parametrize("method", METHODS)
def test_torch_results_stay_torch(method, device, dtype):
    dtype = getattr(torch, dtype)
    x = torch.as_tensor(X, dtype=dtype, device=device)
    res = tensorcomp.decompose(x, method, eps=0.9)
    for a in stored_arrays(res):
        assert isinstance(a, torch.Tensor)
        assert a.dtype == dtype and a.device.type == device
    x_hat = res.to_tensor()
    assert isinstance(x_hat, torch.Tensor)
    assert x_hat.dtype == dtype and x_hat.device.type == device and tuple(x_hat.shape) == X.shape
    assert res.nbytes == sum(a.numel() * a.element_size() for a in stored_arrays(res))
    # Same decomposition as numpy's, up to the dtype's precision.
    reference = tensorcomp.decompose(X, method, eps=0.9)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert res.rank == reference.rank
    assert res.explained_variance == pytest.approx(reference.explained_variance, abs=10 * tol)
    assert relative_error(X, x_hat.cpu()) == pytest.approx(relative_error(X, reference.to_tensor()), abs=10 * tol)
    assert tl.get_backend() == "numpy"


@requires_torch
def test_torch_input_requiring_grad_gives_plain_tensors():
    # Decompositions are not differentiable: their arrays must not join the autograd graph.
    x = torch.as_tensor(X, dtype=torch.float32).requires_grad_(True)
    for method in METHODS:
        res = tensorcomp.decompose(x, method, eps=0.9)
        assert not any(a.requires_grad for a in stored_arrays(res)), method
        x_hat = res.to_tensor()
        assert not x_hat.requires_grad and x_hat.grad_fn is None
        reference = tensorcomp.decompose(X.astype(np.float32), method, eps=0.9)
        np.testing.assert_allclose(x_hat.numpy(), reference.to_tensor(), atol=1e-3)


@requires_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_precision_is_decomposed_in_float32(dtype):
    x = torch.as_tensor(X).to(getattr(torch, dtype))
    res = tensorcomp.hosvd(x, eps=0.9)
    assert res.core.dtype == torch.float32
    assert res.to_tensor().dtype == torch.float32
    assert res.rank == tensorcomp.hosvd(x.float(), eps=0.9).rank


@pytest.mark.parametrize("method", METHODS)
def test_jax_results_stay_jax(method):
    jnp = pytest.importorskip("jax.numpy")
    import jax

    x = jnp.asarray(X.astype(np.float32))
    res = tensorcomp.decompose(x, method, eps=0.9)
    for a in stored_arrays(res):
        assert isinstance(a, jax.Array) and a.dtype == jnp.float32
    x_hat = res.to_tensor()
    assert isinstance(x_hat, jax.Array) and x_hat.shape == X.shape
    reference = tensorcomp.decompose(X.astype(np.float32), method, eps=0.9)
    assert res.rank == reference.rank
    assert res.explained_variance == pytest.approx(reference.explained_variance, abs=1e-3)
    assert tl.get_backend() == "numpy"


@requires_torch
def test_warm_start_from_a_result_of_another_backend():
    first = tensorcomp.hosvd(X, eps=0.9)  # numpy float64 factors
    x = torch.as_tensor(X, dtype=torch.float32)
    res = tensorcomp.subspace_iteration(x, init=first)
    assert res.rank == first.rank
    assert all(isinstance(f, torch.Tensor) and f.dtype == torch.float32 for f in res.factors)


@pytest.mark.parametrize("global_backend", ["numpy", pytest.param("pytorch", marks=requires_torch)])
def test_the_callers_global_backend_is_unchanged(global_backend):
    previous = tl.get_backend()
    tl.set_backend(global_backend)
    inputs = [X] if torch is None else [X, torch.as_tensor(X)]
    try:
        for x in inputs:
            for method in METHODS:
                res = tensorcomp.decompose(x, method, eps=0.9)
                assert tl.get_backend() == global_backend
                res.to_tensor()
                assert tl.get_backend() == global_backend
    finally:
        tl.set_backend(previous)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=requires_torch)])
def test_a_backend_error_still_restores_the_callers_backend(backend):
    x = np.full((3, 4), np.nan) if backend == "numpy" else torch.full((3, 4), float("nan"))
    with pytest.raises(ValueError):
        tensorcomp.hosvd(x)
    assert tl.get_backend() == "numpy"


def torch_float32(a):
    return torch.as_tensor(a, dtype=torch.float32)


def jax_float32(a):
    jnp = pytest.importorskip("jax.numpy")
    return jnp.asarray(a, dtype=jnp.float32)


@pytest.mark.parametrize(
    "other", [pytest.param(torch_float32, id="torch", marks=requires_torch), pytest.param(jax_float32, id="jax")]
)
def test_threads_decomposing_numpy_and_another_backend_do_not_interfere(other):
    other(X)  # skips here, not in a thread, when the backend is not installed
    assert tl.get_backend() == "numpy"
    barrier = threading.Barrier(2)
    errors = []
    inputs = [sample(seed=i) for i in range(20)]
    expected = [tensorcomp.hosvd(x, eps=0.9).to_tensor() for x in inputs]

    def work(make):
        try:
            barrier.wait(timeout=30)
            for x_np, x_hat_np in zip(inputs, expected):
                x = make(x_np)
                res = tensorcomp.hosvd(x, eps=0.9)
                x_hat = res.to_tensor()
                assert type(x_hat) is type(x), (type(x_hat), type(x))
                assert type(res.core) is type(x)
                np.testing.assert_allclose(np.asarray(x_hat), x_hat_np, atol=1e-4)
        except BaseException as error:  # reported from the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=work, args=(lambda a: a,)),
        threading.Thread(target=work, args=(other,)),
    ]
    for t in threads:
        t.start()
    # Meanwhile the main thread keeps working on numpy's global backend.
    for _ in range(20):
        assert tl.get_backend() == "numpy"
        assert isinstance(tl.tensor([1.0]), np.ndarray)
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert tl.get_backend() == "numpy"
