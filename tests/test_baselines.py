import math

import pytest
torch = pytest.importorskip("torch")  # a core-only install skips the adapter tests

import tensorcomp  # noqa: E402
from tensorcomp.adapters import offload, patch_mean, quantize  # noqa: E402

BASELINES = ["vanilla", "save_on_cpu", "gradfilter_r2", "gradfilter_r4", "gradfilter_r7", "quant8", "quant4", "quant2"]


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_are_registered_with_the_result_interface(name):
    assert name in tensorcomp.available_methods()
    x = torch.randn(2, 3, 9, 10)
    res = tensorcomp.decompose(x, name, eps=0.5)
    out = res.to_tensor()
    assert out.shape == x.shape and out.dtype == x.dtype
    assert res.rank is None
    assert 0.0 <= res.explained_variance <= 1.0
    assert 0 < res.nbytes <= x.numel() * x.element_size()
    residual = float((out.double() - x.double()).square().sum())
    assert res.explained_variance == pytest.approx(1 - residual / float(x.double().square().sum()), abs=1e-6)


def test_vanilla_and_save_on_cpu_are_exact():
    x = torch.randn(3, 4, 5)
    for name in ("vanilla", "save_on_cpu"):
        res = tensorcomp.decompose(x, name)
        assert torch.equal(res.to_tensor(), x)
        assert res.nbytes == x.numel() * 4
        assert res.explained_variance == 1.0


def test_offload_round_trip_exact_and_on_host():
    x = torch.randn(4, 6, dtype=torch.float64)
    stored = offload(x)
    assert stored.tensor.device.type == "cpu"
    back = stored.to_tensor()
    assert back.device == x.device and torch.equal(back, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_from_cuda_goes_to_pinned_host_memory_and_back():
    x = torch.randn(64, 64, device="cuda")
    stored = offload(x)
    assert stored.tensor.device.type == "cpu" and stored.tensor.is_pinned()
    back = stored.to_tensor()
    assert back.device == x.device and torch.equal(back, x)


def _reference_patch_means(x, r):
    b, c, h, w = x.shape
    out = torch.empty(b, c, math.ceil(h / r), math.ceil(w / r), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, i * r : (i + 1) * r, j * r : (j + 1) * r].mean(dim=(2, 3))
    return out


@pytest.mark.parametrize("shape, r", [((2, 3, 8, 8), 2), ((2, 3, 9, 10), 2), ((1, 2, 11, 5), 4), ((2, 2, 13, 15), 7), ((1, 1, 3, 3), 7)])
def test_patch_mean_matches_direct_means_including_short_edge_patches(shape, r):
    x = torch.randn(*shape, dtype=torch.float64)
    res = patch_mean(x, r)
    expected = _reference_patch_means(x, r)
    torch.testing.assert_close(res.means, expected)
    up = res.to_tensor()
    assert up.shape == x.shape
    for i in range(expected.shape[2]):
        for j in range(expected.shape[3]):
            block = up[:, :, i * r : (i + 1) * r, j * r : (j + 1) * r]
            torch.testing.assert_close(block, expected[:, :, i : i + 1, j : j + 1].expand_as(block))
    assert res.nbytes == expected.numel() * 8
    # Patch averaging is an orthogonal projection: the residual is orthogonal to x_hat.
    assert float(((x - up) * up).sum()) == pytest.approx(0.0, abs=1e-9)


def test_gradfilter_keeps_non_spatial_activations_exact():
    x = torch.randn(16, 32)
    res = tensorcomp.decompose(x, "gradfilter_r4")
    assert torch.equal(res.to_tensor(), x) and res.explained_variance == 1.0


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_patch_mean_rejects_bad_patch(bad):
    with pytest.raises(ValueError, match="patch"):
        patch_mean(torch.randn(1, 1, 4, 4), bad)


def test_patch_mean_rejects_non_4d_and_nonfinite():
    with pytest.raises(ValueError, match="B, C, H, W"):
        patch_mean(torch.randn(4, 4), 2)
    x = torch.randn(1, 1, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        patch_mean(x, 2)


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_quantization_is_unbiased(bits):
    x = torch.randn(1000)
    gen = torch.Generator().manual_seed(0)
    trials = 400
    mean = sum(quantize(x, bits, generator=gen).to_tensor() for _ in range(trials)) / trials
    # Each rounding error is bounded by one step s; the mean of n draws has std <= s / (2 sqrt(n)).
    step = (x.reshape(-1, 250).amax(1) - x.reshape(-1, 250).amin(1)).max() / (2**bits - 1)
    # Ten standard errors, against a bias as large as half a step without stochastic rounding.
    assert float((mean - x).abs().max()) < 10 * float(step) / (2 * math.sqrt(trials))
    assert abs(float((mean - x).mean())) < float(step) / math.sqrt(trials * x.numel()) * 10


def test_quantization_error_shrinks_with_bits():
    x = torch.randn(4, 8, 16, 16)
    errors = []
    for bits in (1, 2, 4, 8):
        q = quantize(x, bits, generator=torch.Generator().manual_seed(1))
        errors.append(float((q.to_tensor() - x).square().mean()))
        group = x.reshape(-1, 256)
        step = (group.amax(1) - group.amin(1)) / (2**bits - 1)
        assert bool(((q.to_tensor() - x).reshape(-1, 256).abs() <= step[:, None] * (1 + 1e-5)).all())
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < errors[0] / 1000


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
@pytest.mark.parametrize("numel, group_size", [(1024, 256), (1000, 256), (37, 64), (4096, 128)])
def test_quantized_bytes_are_the_packed_codes_plus_group_scales(bits, numel, group_size):
    x = torch.randn(numel)
    q = quantize(x, bits, group_size)
    groups = math.ceil(numel / group_size)
    assert q.codes.dtype == torch.uint8
    assert q.codes.numel() == groups * group_size * bits // 8
    assert q.nbytes == groups * group_size * bits // 8 + groups * 2 * 4
    assert q.to_tensor().shape == x.shape


def test_quantization_keeps_dtype_shape_and_constant_groups():
    x = torch.full((3, 100), 2.5, dtype=torch.bfloat16)
    q = quantize(x, 2)
    out = q.to_tensor()
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.equal(out, x)


def test_quantization_does_not_touch_the_global_rng():
    x = torch.randn(3000)
    state = torch.random.get_rng_state()
    for name in ("quant8", "quant4", "quant2"):
        tensorcomp.decompose(x, name)
    quantize(x, 4)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_quantization_draws_fresh_noise_each_call():
    x = torch.randn(2048)
    a, b = quantize(x, 2).to_tensor(), quantize(x, 2).to_tensor()
    assert not torch.equal(a, b)


def test_quantize_validates_arguments():
    x = torch.randn(64)
    with pytest.raises(ValueError, match="bits"):
        quantize(x, 3)
    with pytest.raises(ValueError, match="group_size"):
        quantize(x, 2, group_size=6)
    with pytest.raises(ValueError, match="group_size"):
        quantize(x, 8, group_size=0)
    with pytest.raises(TypeError, match="floating"):
        quantize(torch.arange(64), 8)
    y = x.clone()
    y[3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(y, 8)
