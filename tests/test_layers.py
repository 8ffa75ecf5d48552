"""Compressed Conv2d/Linear layers, convert() and memory_stats()."""

import copy
import math
import weakref

import pytest
torch = pytest.importorskip("torch")  # a core-only install skips the adapter tests
from torch import nn  # noqa: E402

import tensorcomp  # noqa: E402
from tensorcomp import SVDResult, TuckerResult  # noqa: E402
from tensorcomp.adapters import ActivationMemory, CompressedConv2d, CompressedLinear, memory_stats  # noqa: E402
from tensorcomp.adapters import convert as _convert  # noqa: E402


def convert(model, *args, **kwargs):
    # The models here are tiny: decompose every layer input, however small.
    kwargs.setdefault("min_numel", 1)
    return _convert(model, *args, **kwargs)

DOUBLE = torch.float64

# The vanilla reference model uses padding="same" with an even kernel, which torch warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def _cnn(padding_mode="zeros"):
    """Every Conv2d configuration the layers must get right, on an 8x8 input."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 4, padding="same", groups=2, padding_mode=padding_mode),  # even kernel: asymmetric
        nn.Tanh(),
        nn.Conv2d(6, 6, 3, stride=2, dilation=2, groups=6, padding=(1, 2), bias=False),  # depthwise
        nn.ReLU(),
        nn.Conv2d(6, 4, (2, 3), stride=(1, 2), padding=(0, 1), padding_mode=padding_mode),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),
    ).to(DOUBLE)


class _Block(nn.Module):
    """A transformer-like block on B x T x D tokens: attention and an MLP, all Linear."""

    def __init__(self, dim=8, hidden=12):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + self.proj(attention @ v)
        x = x + self.fc2(nn.functional.gelu(self.fc1(x)))
        return self.head(x)


def _block():
    torch.manual_seed(0)
    return _Block().to(DOUBLE)


def _grads(model, x, steps=1):
    """Input and parameter gradients after ``steps`` forward/backward passes (the last one kept)."""
    for _ in range(steps):
        model.zero_grad()
        x = x.detach().requires_grad_(True)
        model(x).square().sum().backward()
    return x.grad, {name: p.grad.clone() for name, p in model.named_parameters()}


def _image(seed=1):
    return torch.randn(4, 3, 8, 8, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


def _tokens(seed=1):
    return torch.randn(3, 5, 8, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


def _assert_grads_equal(got, expected, names=None):
    for name in names if names is not None else expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


# -- exactness at eps = 1 ------------------------------------------------------
@pytest.mark.parametrize("method", ["svd", "hosvd", "tucker", "subspace", "tt"])
def test_eps_one_gives_vanilla_gradients(method):
    x = _image()
    expected_input, expected = _grads(_cnn(), x)
    model = convert(_cnn(), method, eps=1.0)
    assert sum(isinstance(m, (CompressedConv2d, CompressedLinear)) for m in model.modules()) == 5
    got_input, got = _grads(model, x, steps=2)  # the second step warm-starts "subspace"
    torch.testing.assert_close(got_input, expected_input, rtol=1e-9, atol=1e-10)
    _assert_grads_equal(got, expected)
    assert memory_stats(model).num_steps == 2


@pytest.mark.parametrize("method", ["svd", "hosvd", "tt"])
def test_eps_one_gives_vanilla_gradients_for_token_linears(method):
    x = _tokens()
    expected_input, expected = _grads(_block(), x)
    got_input, got = _grads(convert(_block(), method, eps=1.0), x)
    torch.testing.assert_close(got_input, expected_input, rtol=1e-9, atol=1e-10)
    _assert_grads_equal(got, expected)


def test_cp_gives_vanilla_gradients_on_an_exactly_rank_one_input():
    # CP has no exact truncation at eps=1 on generic data (ALS is approximate),
    # so the compressed layer gets an input that is exactly CP rank one.
    gen = torch.Generator().manual_seed(2)
    a, b, c, d = (torch.randn(n, dtype=DOUBLE, generator=gen) for n in (4, 3, 8, 8))
    x = torch.einsum("i,j,k,l->ijkl", a, b, c, d)
    expected_input, expected = _grads(_cnn(), x)
    model = convert(_cnn(), "cp", layers=["0"], rank=1)
    got_input, got = _grads(model, x)
    torch.testing.assert_close(got_input, expected_input, rtol=1e-8, atol=1e-10)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-7, atol=1e-9)
    assert memory_stats(model).per_layer["0"]["ranks"] == [1]


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_non_zero_padding_modes_give_vanilla_gradients(padding_mode):
    x = _image()
    expected_input, expected = _grads(_cnn(padding_mode), x)
    got_input, got = _grads(convert(_cnn(padding_mode), "hosvd", eps=1.0), x)
    torch.testing.assert_close(got_input, expected_input, rtol=1e-9, atol=1e-10)
    _assert_grads_equal(got, expected)


# -- truncation: what stays exact ------------------------------------------------
@pytest.mark.parametrize("method", ["hosvd", "svd"])
def test_truncation_only_touches_the_compressed_weights(method):
    x = _image()
    expected_input, expected = _grads(_cnn(), x)
    model = convert(_cnn(), method, eps=0.5, last=3)  # conv "4", conv "6", linear "8"
    got_input, got = _grads(model, x)
    # The input gradient of every compressed layer is exact, so is everything upstream.
    torch.testing.assert_close(got_input, expected_input, rtol=1e-9, atol=1e-10)
    # Conv "4" reads the Tanh's output, which the Tanh keeps raw for its own
    # backward anyway: that input is not decomposed, and its weight gradient stays exact.
    _assert_grads_equal(got, expected, ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "6.bias", "8.bias"])
    for name in ("6.weight",):
        assert not torch.allclose(got[name], expected[name]), f"{name} should be approximate"


@pytest.mark.parametrize("method", ["hosvd", "svd"])
def test_truncated_token_linears_keep_input_gradient_exact(method):
    x = _tokens()
    expected_input, expected = _grads(_block(), x)
    model = convert(_block(), method, eps=0.5, layers=["proj", "fc1", "fc2", "head"])
    got_input, got = _grads(model, x)
    torch.testing.assert_close(got_input, expected_input, rtol=1e-9, atol=1e-10)
    exact = ["norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj.bias", "fc1.bias", "fc2.bias", "head.bias"]
    _assert_grads_equal(got, expected, exact)
    assert any(not torch.allclose(got[f"{n}.weight"], expected[f"{n}.weight"]) for n in ("fc1", "fc2", "head"))


def _spy_on_compressor(model):
    """Keep (weak references to) the Packed objects each compressed layer stores."""
    stored = []
    for module in model.modules():
        if isinstance(module, (CompressedConv2d, CompressedLinear)):
            compressor = module.compressor

            def spy(x, key=None, *, matrix_view=False, _compressor=compressor):
                packed = _compressor(x, key, matrix_view=matrix_view)
                stored.append((key, packed))
                return packed

            module.compressor = spy
            module.compressor.method = compressor.method
            module.compressor.info = compressor.info  # the catalogue record the policy reads (linear_view)
    return stored


def test_token_linear_uses_matrix_view_for_svd_and_own_shape_otherwise():
    x = _tokens()
    for method, kind, shape in [("svd", SVDResult, (15, 8)), ("hosvd", TuckerResult, (3, 5, 8))]:
        model = convert(_block(), method, eps=0.9, layers=["fc1"])
        stored = _spy_on_compressor(model)
        model(x).sum().backward()
        ((key, packed),) = stored
        assert key == ("fc1", 0) and isinstance(packed.result, kind)
        result_shape = packed.result.original_shape if kind is SVDResult else tuple(packed.result.shape)
        assert result_shape == shape


# -- memory accounting ----------------------------------------------------------
def test_recorded_bytes_are_the_stored_factors_bytes():
    x = _image()
    model = convert(_cnn(), "hosvd", eps=0.8)
    stored = _spy_on_compressor(model)
    model(x).sum().backward()
    per_layer = memory_stats(model).steps[-1]
    # Conv "4" reads the Tanh's output, kept raw by the Tanh: recorded as stored raw, not decomposed.
    assert len(stored) == 4 and len(per_layer) == 5
    assert per_layer["4"].stored_bytes == per_layer["4"].original_bytes and per_layer["4"].ranks == [None]
    for key, packed in stored:
        arrays = [packed.result.core, *packed.result.factors]
        assert per_layer[key[0]].stored_bytes == sum(a.numel() * a.element_size() for a in arrays)

    # HOSVD of the first conv's 4-D input (4, 3, 8, 8): the paper's storage formula.
    k1, k2, k3, k4 = per_layer["0"].ranks[0]
    assert per_layer["0"].stored_bytes == (k1 * k2 * k3 * k4 + 4 * k1 + 3 * k2 + 8 * k3 + 8 * k4) * 8
    assert per_layer["0"].original_bytes == x.numel() * 8


def test_memory_stats_counts_one_step_per_training_forward_and_nothing_otherwise():
    x = _image()
    model = convert(_cnn(), "svd", eps=0.8, last=2)
    stats = memory_stats(model)
    for _ in range(3):
        model(x).sum().backward()
    assert stats.num_steps == 3
    assert sorted(stats.per_layer) == ["6", "8"]
    assert 0 < stats.peak_bytes
    with torch.no_grad():
        model(x)
    model.eval()
    out = model(x)
    out.sum().backward()
    assert stats.num_steps == 3
    # Evaluation runs the plain layers: same output as the unconverted model.
    torch.testing.assert_close(out, _cnn().eval()(x))


def test_memory_stats_rejects_unconverted_models():
    with pytest.raises(ValueError, match="convert"):
        memory_stats(_cnn())


def test_compressed_layers_release_their_factors_after_backward():
    model = convert(_cnn(), "hosvd", eps=0.8)
    stored = _spy_on_compressor(model)
    loss = model(_image()).sum()
    refs = [weakref.ref(packed) for _, packed in stored]
    stored.clear()
    assert all(r() is not None for r in refs)
    loss.backward()
    # The graph (and its ctx objects) is still alive through `loss`, the factors are not.
    assert all(r() is None for r in refs)


# -- drop-in behaviour ----------------------------------------------------------
def test_convert_keeps_parameters_state_dict_and_optimizer():
    model = _cnn()
    reference = _cnn()
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert convert(model, "hosvd", eps=0.9) is model
    assert list(model.state_dict()) == keys
    assert all(p is params[name] for name, p in model.named_parameters())
    model.load_state_dict(reference.state_dict())
    model(_image()).sum().backward()
    optimizer.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_convert_selects_last_layers_in_registration_order_or_by_name():
    model = convert(_cnn(), last=2)
    assert [type(model[i]).__name__ for i in (0, 2, 4, 6, 8)] == ["Conv2d", "Conv2d", "Conv2d", "CompressedConv2d", "CompressedLinear"]
    model = convert(_cnn(), layers=["2", "8"])
    assert [type(model[i]).__name__ for i in (0, 2, 4, 6, 8)] == ["Conv2d", "CompressedConv2d", "Conv2d", "Conv2d", "CompressedLinear"]
    # A second call converts more layers into the same record.
    stats = memory_stats(model)
    convert(model, layers=["0"])
    assert memory_stats(model) is stats


def test_convert_skips_subclasses_such_as_the_attention_output_projection():
    model = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2))
    convert(model)
    assert isinstance(model[0], CompressedLinear)
    assert not isinstance(model[1].out_proj, CompressedLinear)


def test_method_kwargs_reach_the_compressor():
    model = convert(_cnn(), "subspace", eps=0.8, refresh_every=2, last=1)
    assert model[8].compressor.refresh_every == 2
    model = convert(_cnn(), "hosvd", layers=["0"], rank=(2, 2, 3, 3))
    model(_image()).sum().backward()
    assert memory_stats(model).per_layer["0"]["ranks"] == [(2, 2, 3, 3)]


def test_frozen_layers_and_unbatched_inputs():
    model = convert(_cnn(), "hosvd", eps=0.9)
    model[0].weight.requires_grad_(False)
    model(_image()).sum().backward()
    assert "0" not in memory_stats(model).per_layer
    conv = CompressedConv2d(3, 4, 3, padding=1, method="hosvd", eps=1.0).to(DOUBLE)
    plain = nn.Conv2d(3, 4, 3, padding=1).to(DOUBLE)
    plain.load_state_dict(conv.state_dict())
    x = _image()[0]
    conv(x).square().sum().backward()
    plain(x).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=1e-9, atol=1e-10)
    assert conv.activation_memory.num_steps == 1


def test_deepcopy_of_a_converted_model_keeps_its_own_record():
    model = convert(_cnn(), "hosvd", eps=0.8)
    clone = copy.deepcopy(model)
    assert memory_stats(clone) is not memory_stats(model)
    clone(_image()).sum().backward()
    assert memory_stats(clone).num_steps == 1
    assert memory_stats(model).num_steps == 0


# -- precision and non-finite activations ----------------------------------------
def test_autocast_bfloat16_on_cpu():
    x = _image().float()
    vanilla = _cnn().float()
    model = convert(copy.deepcopy(vanilla), "hosvd", eps=1.0)
    grads = []
    for net in (vanilla, model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        grads.append({name: p.grad for name, p in net.named_parameters()})
    for name, grad in grads[1].items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
        reference = grads[0][name]
        assert (grad - reference).norm() <= 0.05 * reference.norm(), name
    assert memory_stats(model).num_steps == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_activation_warns_and_backward_uses_the_raw_tensor(bad):
    x = _image()
    x[0, 0, 0, 0] = bad
    vanilla = _cnn()
    model = convert(_cnn(), "hosvd", eps=0.9, layers=["0"])
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        model(x).sum().backward()
    vanilla(x).sum().backward()
    torch.testing.assert_close(model[0].weight.grad, vanilla[0].weight.grad, equal_nan=True)
    assert memory_stats(model).skipped == 1


# -- validation -------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "no-such-method"}, "available methods"),
        ({"eps": 0.0}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"last": 0}, "last"),
        ({"last": 6}, "last"),
        ({"layers": ["0", "nope"]}, "candidates"),
        ({"layers": ["1"]}, "candidates"),  # a ReLU
        ({"last": 1, "layers": ["0"]}, "at most one"),
        ({"refresh_every": 0}, "refresh_every"),
    ],
)
def test_convert_rejects_bad_arguments_before_swapping(kwargs, match):
    model = _cnn()
    with pytest.raises(ValueError, match=match):
        convert(model, **kwargs)
    assert not any(isinstance(m, (CompressedConv2d, CompressedLinear)) for m in model.modules())


def test_convert_rejects_models_without_layers_and_single_layers():
    with pytest.raises(ValueError, match="no nn.Conv2d, nn.Linear or transformers Conv1D layer"):
        convert(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="wrap it"):
        convert(nn.Linear(3, 3))


def test_memory_record_is_an_activation_memory():
    model = convert(_cnn(), "svd", eps=0.9)
    assert isinstance(memory_stats(model), ActivationMemory)
    assert memory_stats(model[2]) is memory_stats(model)
    assert "svd" in repr(model[2]) and "CompressedConv2d" in repr(model[2])
    assert tensorcomp.available_methods()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gradients_match_vanilla_and_autocast_runs():
    x = _image().cuda()
    expected_input, expected = _grads(_cnn().cuda(), x)
    model = convert(_cnn().cuda(), "hosvd", eps=1.0)
    got_input, got = _grads(model, x)
    torch.testing.assert_close(got_input, expected_input, rtol=1e-9, atol=1e-10)
    _assert_grads_equal(got, expected)
    model = model.float()
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x.float())
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
