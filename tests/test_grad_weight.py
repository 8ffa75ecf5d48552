"""Weight gradients from stored factors equal the dense gradients of the rebuilt activation."""

import zlib

import pytest
torch = pytest.importorskip("torch")  # a core-only install skips the adapter tests
import torch.nn.functional as F  # noqa: E402

import tensorcomp  # noqa: E402
from tensorcomp import SVDResult, TuckerResult  # noqa: E402
from tensorcomp.adapters import conv2d_weight_from_factors, linear_weight_from_factors  # noqa: E402

DOUBLE = torch.float64

# (in_channels, out_channels, groups): dense, grouped, depthwise, depthwise with a multiplier.
CHANNELS = [(4, 6, 1), (4, 6, 2), (4, 4, 4), (4, 8, 4)]
PADDINGS = [0, 1, (1, 2), "same", (0, 1, 2, 1)]
KERNELS = [(1, 1), (3, 3), (2, 4)]


def _pad_like_conv(x, kernel, padding, dilation):
    """``x`` zero-padded as conv2d pads it, written out independently of the code under test."""
    kh, kw = kernel
    if padding == "same":
        th, tw = dilation * (kh - 1), dilation * (kw - 1)
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    elif isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        pads = (left, right, top, bottom)
    else:
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        pads = (pw, pw, ph, ph)
    return F.pad(x, pads)


@pytest.mark.parametrize("method", ["hosvd", "svd"])
@pytest.mark.parametrize("channels", CHANNELS, ids=lambda c: f"C{c[0]}-O{c[1]}-g{c[2]}")
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_conv2d_weight_matches_dense_gradient_of_rebuilt_input(method, channels, padding):
    in_channels, out_channels, groups = channels
    gen = torch.Generator().manual_seed(zlib.crc32(f"{method}{channels}{padding}".encode()))
    x = torch.randn(6, in_channels, 7, 8, generator=gen, dtype=DOUBLE)
    result = tensorcomp.decompose(x, method, eps=0.6)
    rebuilt = result.to_tensor()
    assert not torch.allclose(rebuilt, x)  # truncation happened: the test is not on an exact copy
    checked = 0
    for kernel in KERNELS:
        for stride in (1, 2):
            for dilation in (1, 2):
                if padding == "same" and stride != 1:
                    continue
                weight_shape = (out_channels, in_channels // groups, *kernel)
                padded = _pad_like_conv(rebuilt, kernel, padding, dilation)
                out = F.conv2d(padded, torch.zeros(weight_shape, dtype=DOUBLE), None, stride, 0, dilation, groups)
                dy = torch.randn(out.shape, generator=gen, dtype=DOUBLE)
                expected = torch.nn.grad.conv2d_weight(padded, weight_shape, dy, stride, 0, dilation, groups)
                got = conv2d_weight_from_factors(result, weight_shape, dy, stride, padding, dilation, groups)
                assert got.shape == weight_shape
                torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
                checked += 1
    assert checked >= 6


@pytest.mark.parametrize("method", ["tucker", "subspace"])
def test_conv2d_weight_for_other_tucker_methods(method):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 6, 6, generator=gen, dtype=DOUBLE)
    result = tensorcomp.decompose(x, method, eps=0.8)
    assert isinstance(result, TuckerResult)
    dy = torch.randn(4, 6, 3, 3, generator=gen, dtype=DOUBLE)
    expected = torch.nn.grad.conv2d_weight(result.to_tensor(), (6, 3, 3, 3), dy, 2, 1, 1, 2)
    got = conv2d_weight_from_factors(result, (6, 3, 3, 3), dy, stride=2, padding=1, groups=2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["hosvd", "svd"])
def test_factored_path_never_rebuilds_the_activation(method, monkeypatch):
    x = torch.randn(2, 4, 6, 6, dtype=DOUBLE)
    result = tensorcomp.decompose(x, method, eps=0.8)
    expected = torch.nn.grad.conv2d_weight(result.to_tensor(), (3, 4, 3, 3), torch.ones(2, 3, 4, 4, dtype=DOUBLE))

    def forbidden(self):
        raise AssertionError("the activation was rebuilt")

    monkeypatch.setattr(type(result), "to_tensor", forbidden)
    got = conv2d_weight_from_factors(result, (3, 4, 3, 3), torch.ones(2, 3, 4, 4, dtype=DOUBLE))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def _recorded_weight_sizes(monkeypatch):
    sizes = []
    original = torch.nn.grad.conv2d_weight

    def spy(input, weight_size, grad_output, *args):
        sizes.append((tuple(input.shape), tuple(weight_size)))
        return original(input, weight_size, grad_output, *args)

    monkeypatch.setattr(torch.nn.grad, "conv2d_weight", spy)
    return sizes


def test_tucker_dense_convolution_correlates_in_the_channel_subspace(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 16, 6, 6, generator=gen, dtype=DOUBLE)
    result = tensorcomp.hosvd(x, rank=(2, 3, 4, 4))
    dy = torch.randn(4, 8, 6, 6, generator=gen, dtype=DOUBLE)
    expected = torch.nn.grad.conv2d_weight(result.to_tensor(), (8, 16, 3, 3), dy, padding=1)
    sizes = _recorded_weight_sizes(monkeypatch)
    got = conv2d_weight_from_factors(result, (8, 16, 3, 3), dy, padding=1)
    # Batch K1 = 2 and channels K2 = 3 instead of B = 4 and C = 16.
    assert sizes == [((2, 3, 8, 8), (8, 3, 3, 3))]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_tucker_depthwise_convolution_expands_channels_first(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 16, 6, 6, generator=gen, dtype=DOUBLE)
    result = tensorcomp.hosvd(x, rank=(2, 8, 4, 4))
    dy = torch.randn(4, 16, 6, 6, generator=gen, dtype=DOUBLE)
    expected = torch.nn.grad.conv2d_weight(result.to_tensor(), (16, 1, 3, 3), dy, 1, 1, 1, 16)
    sizes = _recorded_weight_sizes(monkeypatch)
    got = conv2d_weight_from_factors(result, (16, 1, 3, 3), dy, padding=1, groups=16)
    # The grouped correlation skips the K2 x O cross terms a depthwise layer does not have.
    assert sizes == [((2, 16, 8, 8), (16, 1, 3, 3))]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["tt", "cp"])
def test_conv2d_weight_falls_back_to_rebuilding_other_results(method):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=DOUBLE)
    kwargs = {"rank": 2} if method == "cp" else {"eps": 0.8}
    result = tensorcomp.decompose(x, method, **kwargs)
    dy = torch.randn(2, 4, 5, 5, generator=gen, dtype=DOUBLE)
    expected = torch.nn.grad.conv2d_weight(result.to_tensor(), (4, 3, 3, 3), dy, padding=1)
    got = conv2d_weight_from_factors(result, (4, 3, 3, 3), dy, padding=1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_conv2d_weight_promotes_float32_factors():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float32)
    result = tensorcomp.hosvd(x, eps=0.9)
    dy = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    got = conv2d_weight_from_factors(result, (4, 3, 3, 3), dy)
    assert got.dtype == torch.float64
    expected = torch.nn.grad.conv2d_weight(result.to_tensor().double(), (4, 3, 3, 3), dy)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


# -- linear --------------------------------------------------------------------
def _linear_results(x):
    d = x.shape[-1]
    return {
        "svd-matrix-view": tensorcomp.svd(x.reshape(-1, d), eps=0.6),
        "svd-batch-view": tensorcomp.svd(x, eps=0.6),
        "hosvd": tensorcomp.hosvd(x, eps=0.6),
        "hosvd-matrix-view": tensorcomp.hosvd(x.reshape(-1, d), eps=0.6),
        "tt": tensorcomp.tt(x, eps=0.6),
    }


@pytest.mark.parametrize("shape", [(12, 6), (6, 5, 6), (5, 3, 2, 6)], ids=str)
@pytest.mark.parametrize("kind", ["svd-matrix-view", "svd-batch-view", "hosvd", "hosvd-matrix-view", "tt"])
def test_linear_weight_matches_dense_gradient_of_rebuilt_input(shape, kind):
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen, dtype=DOUBLE)
    result = _linear_results(x)[kind]
    dy = torch.randn(*shape[:-1], 4, generator=gen, dtype=DOUBLE)
    rebuilt = result.to_tensor().reshape(shape)
    assert not torch.allclose(rebuilt, x)
    expected = dy.reshape(-1, 4).T @ rebuilt.reshape(-1, shape[-1])
    got = linear_weight_from_factors(result, (4, shape[-1]), dy)
    assert got.shape == (4, shape[-1])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_linear_weight_never_rebuilds_the_activation(monkeypatch):
    x = torch.randn(3, 5, 6, dtype=DOUBLE)
    dy = torch.randn(3, 5, 2, dtype=DOUBLE)
    results = [tensorcomp.hosvd(x, eps=0.8), tensorcomp.svd(x.reshape(-1, 6), eps=0.8)]
    expected = [dy.reshape(-1, 2).T @ r.to_tensor().reshape(-1, 6) for r in results]

    def forbidden(self):
        raise AssertionError("the activation was rebuilt")

    monkeypatch.setattr(TuckerResult, "to_tensor", forbidden)
    monkeypatch.setattr(SVDResult, "to_tensor", forbidden)
    for result, exp in zip(results, expected):
        torch.testing.assert_close(linear_weight_from_factors(result, (2, 6), dy), exp, rtol=1e-10, atol=1e-10)


# -- validation ----------------------------------------------------------------
def test_conv2d_weight_rejects_bad_arguments():
    result = tensorcomp.hosvd(torch.randn(2, 4, 5, 5, dtype=DOUBLE), eps=0.9)
    dy = torch.randn(2, 6, 5, 5, dtype=DOUBLE)
    with pytest.raises(ValueError, match="weight_shape"):
        conv2d_weight_from_factors(result, (6, 4, 3), dy)
    with pytest.raises(ValueError, match="stride"):
        conv2d_weight_from_factors(result, (6, 4, 3, 3), dy, stride=0)
    with pytest.raises(ValueError, match="padding"):
        conv2d_weight_from_factors(result, (6, 4, 3, 3), dy, padding="full")
    with pytest.raises(ValueError, match="padding"):
        conv2d_weight_from_factors(result, (6, 4, 3, 3), dy, padding=(1, -1, 0, 0))
    with pytest.raises(ValueError, match="groups"):
        conv2d_weight_from_factors(result, (6, 4, 3, 3), dy, groups=4)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_weight_from_factors(result, (6, 2, 3, 3), dy, padding=1)
    with pytest.raises(ValueError, match="grad_output"):
        conv2d_weight_from_factors(result, (6, 4, 3, 3), dy[0])


def test_linear_weight_rejects_bad_arguments():
    result = tensorcomp.svd(torch.randn(10, 6, dtype=DOUBLE), eps=0.9)
    with pytest.raises(ValueError, match="weight_shape"):
        linear_weight_from_factors(result, (4, 6, 1), torch.randn(10, 4, dtype=DOUBLE))
    with pytest.raises(ValueError, match="grad_output"):
        linear_weight_from_factors(result, (4, 6), torch.randn(10, 3, dtype=DOUBLE))
    with pytest.raises(ValueError, match="does not fit"):
        linear_weight_from_factors(result, (4, 6), torch.randn(9, 4, dtype=DOUBLE))
    with pytest.raises(ValueError, match="does not fit"):
        linear_weight_from_factors(tensorcomp.hosvd(torch.randn(10, 6, dtype=DOUBLE), eps=0.9), (4, 5), torch.randn(10, 4, dtype=DOUBLE))
