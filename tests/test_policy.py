"""The whole-graph policy: exact compact forms, layer inputs recognised by identity, held bytes, both styles."""

import math
import warnings

import pytest
torch = pytest.importorskip("torch")  # a core-only install skips the adapter tests
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tensorcomp.adapters import BitMask, compress_activations, convert, memory_stats, narrow_index_dtype  # noqa: E402

DOUBLE = torch.float64


def _leaf(*shape, seed=0, dtype=DOUBLE, zeros=False):
    x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    if zeros:  # exact zeros and values on the clamp bounds, where masks must still be right
        x = x.round()
    return x.requires_grad_(True)


# -- masks ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5, 7), (2, 3, 64)])
def test_bit_mask_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5
    packed = BitMask(mask)
    assert packed.bits.dtype == torch.uint8 and packed.nbytes == math.ceil(mask.numel() / 8)
    assert torch.equal(packed.unpack(), mask)


def test_bit_mask_lane_arithmetic_used_off_the_cpu_matches_packbits():
    from tensorcomp.adapters.masks import _pack_lanes, _unpack_lanes

    mask = torch.rand(1001, generator=torch.Generator().manual_seed(2)) > 0.3
    bits = _pack_lanes(mask)
    assert torch.equal(bits, BitMask(mask).bits)
    assert torch.equal(_unpack_lanes(bits, mask.numel()), mask)


def test_bit_mask_rejects_non_boolean_input():
    with pytest.raises(TypeError, match="boolean tensor; got torch.float32"):
        BitMask(torch.ones(3))


def test_narrow_index_dtype():
    assert narrow_index_dtype(1) == torch.uint8
    assert narrow_index_dtype(32768) == torch.int16 and narrow_index_dtype(32769) == torch.int32
    assert narrow_index_dtype(2**31 + 1) == torch.int64
    with pytest.raises(ValueError, match="non-negative"):
        narrow_index_dtype(-1)


MASK_OPS = {
    "nn.ReLU": lambda x: nn.ReLU()(x),
    "nn.ReLU(inplace)": lambda x: nn.ReLU(inplace=True)(x * 1.0),
    "F.relu": lambda x: F.relu(x),
    "torch.relu": lambda x: torch.relu(x),
    "Tensor.relu": lambda x: x.relu(),
    "Tensor.relu_": lambda x: (x * 1.0).relu_(),
    "nn.ReLU6": lambda x: nn.ReLU6()(x * 4),
    "nn.ReLU6(inplace)": lambda x: nn.ReLU6(inplace=True)(x * 4),
    "nn.Hardtanh": lambda x: nn.Hardtanh(-0.5, 1.0)(x),
    "clamp": lambda x: x.clamp(-1.0, 1.0),
    "clamp(min)": lambda x: torch.clamp(x, min=0.0),
    "clamp(max)": lambda x: x.clamp(max=0.0),
    "clamp_": lambda x: (x * 1.0).clamp_(-1.0, 1.0),
    "clip": lambda x: x.clip(-1.0, 2.0),
    "nn.LeakyReLU": lambda x: nn.LeakyReLU(0.1)(x),
    "F.leaky_relu_": lambda x: F.leaky_relu_(x * 1.0, 0.2),
    "nn.Threshold": lambda x: nn.Threshold(0.5, -2.0)(x),
    "F.threshold_": lambda x: F.threshold_(x * 1.0, 0.0, 3.0),
    "nn.MaxPool2d": lambda x: nn.MaxPool2d(2)(x),
    "max_pool2d(3, 2, 1)": lambda x: F.max_pool2d(x, 3, 2, 1),
    "max_pool2d(ceil, dilation)": lambda x: F.max_pool2d(x, 2, 1, 0, 2, True),
}


@pytest.mark.parametrize("name", list(MASK_OPS))
def test_mask_ops_give_vanilla_gradients_bit_for_bit_and_hold_a_compact_form(name):
    op = MASK_OPS[name]
    x = _leaf(4, 6, 10, 10, zeros=True)
    upstream = torch.randn(op(x.detach()).shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(3))
    (expected,) = torch.autograd.grad((op(x) * upstream).sum(), x)
    with compress_activations(None) as ctx:
        out = op(x)
    (got,) = torch.autograd.grad((out * upstream).sum(), x)
    assert torch.equal(got, expected)
    masks = ctx.stats.held_breakdown["masks"]
    # One bit per element (or narrow indices), against 8 bytes per float64 element.
    assert 0 < masks["held_bytes"] <= out.numel() * 2
    assert masks["original_bytes"] >= out.numel() * 8


@pytest.mark.parametrize("inplace", [False, True])
def test_dropout_keeps_its_mask_as_bits_and_the_gradient_is_the_mask_times_the_scale(inplace):
    x = _leaf(8, 64)
    torch.manual_seed(0)
    with compress_activations(None) as ctx:
        out = F.dropout(x * 1.0, 0.25, training=True, inplace=inplace)
    upstream = torch.randn(out.shape, dtype=DOUBLE)
    (got,) = torch.autograd.grad((out * upstream).sum(), x)
    kept = out.detach() != 0
    assert 0.6 < kept.double().mean() < 0.9
    scale = 1.0 / 0.75
    assert torch.equal(out.detach(), torch.where(kept, x.detach() * scale, 0.0))
    assert torch.equal(got, torch.where(kept, upstream * scale, 0.0))
    assert ctx.stats.held_breakdown["masks"]["held_bytes"] == 8 * 64 // 8


def test_dropout_draws_the_masks_vanilla_draws():
    x = _leaf(16, 64)
    upstream = torch.randn(16, 64, dtype=DOUBLE, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(7)
    expected_out = F.dropout(x, 0.3, training=True)
    (expected,) = torch.autograd.grad((expected_out * upstream).sum(), x)
    torch.manual_seed(7)
    with compress_activations(None):
        out = F.dropout(x, 0.3, training=True)
    (got,) = torch.autograd.grad((out * upstream).sum(), x)
    assert torch.equal(out, expected_out) and torch.equal(got, expected)


def test_eval_dropout_and_p_zero_are_vanilla():
    x = _leaf(4, 32)
    with compress_activations(None):
        assert torch.equal(F.dropout(x, 0.5, training=False), x)
        assert torch.equal(F.dropout(x, 0.0, training=True), x)


def test_max_pool_indices_are_kept_narrow():
    x = _leaf(2, 3, 16, 16)
    with compress_activations(None) as ctx:
        out = F.max_pool2d(x, 2)
    # 16 * 16 = 256 positions per plane: one byte per output element.
    assert ctx.stats.held_breakdown["masks"]["held_bytes"] == out.numel()
    out.sum().backward()


def test_masks_false_keeps_what_vanilla_keeps():
    x = _leaf(4, 6, 10, 10)
    with compress_activations(None, masks=False) as ctx:
        torch.relu(x)
    assert ctx.stats.held_breakdown["masks"]["held_bytes"] == x.numel() * 8


# -- one storage, several savers ---------------------------------------------


def _chain(dtype=DOUBLE):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).to(dtype)


def test_conv_relu_conv_holds_fewer_bytes_than_the_raw_intermediate():
    model = _chain(torch.float32)
    x = torch.randn(8, 3, 16, 16)
    with compress_activations(model, "hosvd", eps=0.8) as ctx:
        model(x).sum().backward()
    intermediate = 8 * 8 * 16 * 16 * 4
    assert ctx.stats.held_bytes < intermediate
    # What vanilla keeps: the input (for the first conv) and the ReLU's output (for the ReLU and the second conv), once.
    assert ctx.stats.held_original_bytes == x.numel() * 4 + intermediate


def _vanilla_census(model, x):
    """Bytes of every storage vanilla autograd saves, parameters, buffers and leaves excluded (an independent count)."""
    storages = {}
    buffers = {b.untyped_storage().data_ptr() for b in model.buffers()}

    def pack(t):
        base = t._base if t._base is not None else t
        ptr = t.untyped_storage().data_ptr()
        if not isinstance(base, nn.Parameter) and not (base.is_leaf and base.requires_grad) and ptr not in buffers:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return sum(storages.values()), out


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
@pytest.mark.parametrize("bn_eval", [False, True])
def test_held_original_bytes_are_what_vanilla_saves_with_in_place_activations(bn_eval, act):
    # In-place ReLU6 keeps a copy of its input in vanilla autograd, in-place ReLU its output.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), act(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), act(inplace=True), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(8, 4),
    )
    if bn_eval:
        model[1].eval(), model[4].eval(), model[8].eval()
    x = torch.randn(8, 3, 16, 16)
    torch.manual_seed(1)
    expected, _ = _vanilla_census(model, x)
    torch.manual_seed(1)
    with compress_activations(model, "hosvd", eps=0.8) as ctx:
        model(x)
    assert ctx.stats.held_original_bytes == expected
    assert ctx.stats.held_bytes < expected / (8 if bn_eval else 1.5)


def test_a_storage_kept_raw_by_another_op_is_not_decomposed_as_well():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3).double()
    x = _leaf(2, 4, 12, 12)
    with compress_activations(conv, "hosvd", eps=0.5, min_numel=1) as ctx:
        y = torch.tanh(x)  # tanh keeps its output raw
        out = conv(y)
    assert ctx.stats.per_layer[""]["ranks"] == [None]  # stored raw, not decomposed
    assert ctx.stats.held_bytes == y.numel() * 8  # once, although two ops keep it
    got = torch.autograd.grad(out.sum(), conv.weight)[0]
    expected = torch.autograd.grad(conv(torch.tanh(x)).sum(), conv.weight)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)  # exact


def test_a_decomposition_is_dropped_when_a_later_op_keeps_the_storage_raw():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3).double()
    x = _leaf(2, 4, 12, 12)
    with compress_activations(conv, "hosvd", eps=0.5, min_numel=1) as ctx:
        y = x * 2.0
        out = conv(y)
        z = y * y  # mul keeps y raw after the conv decomposed it
    held = ctx.stats.held_bytes
    assert held == y.numel() * 8 + ctx.stats.held_breakdown["other"]["held_bytes"] - y.numel() * 8
    assert ctx.stats.held_breakdown["layer_inputs"]["held_bytes"] == 0
    got = torch.autograd.grad(out.sum() + z.sum(), conv.weight)[0]
    expected = torch.autograd.grad(conv(x * 2.0).sum(), conv.weight)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)  # the raw tensor was used


def test_an_in_place_change_never_reuses_the_stale_decomposition():
    torch.manual_seed(0)
    a, b = nn.Conv2d(4, 4, 3).double(), nn.Conv2d(4, 4, 3).double()
    model = nn.ModuleDict({"a": a, "b": b})
    # A positive rank-one input: its exact decomposition is small, so it is decomposed.
    g = torch.Generator().manual_seed(0)
    x = torch.einsum("i,j,k,l->ijkl", *(torch.rand(n, dtype=DOUBLE, generator=g) + 0.5 for n in (2, 4, 10, 10)))
    x.requires_grad_(True)
    # eps just below 1 drops only the round-off components: rank one, exact to round-off.
    with compress_activations(model, "hosvd", eps=1 - 1e-9, min_numel=1) as ctx:
        y = torch.relu(x)
        out_a = a(y)
        y.add_(1.0)  # same storage, new version
        out_b = b(y)
    (out_a.sum() + out_b.sum()).backward()
    ya = torch.relu(x.detach())
    ga = torch.autograd.grad(a(ya).sum(), a.weight)[0]
    gb = torch.autograd.grad(b(ya + 1.0).sum(), b.weight)[0]
    torch.testing.assert_close(a.weight.grad, ga * 1, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(b.weight.grad, gb * 1, rtol=1e-9, atol=1e-10)
    assert set(ctx.stats.per_layer) == {"a", "b"}  # two decompositions, not one reused
    assert all(r[0] is not None for r in (ctx.stats.per_layer["a"]["ranks"], ctx.stats.per_layer["b"]["ranks"]))


def test_an_in_place_change_of_a_tensor_kept_raw_raises_as_vanilla_does():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3).double()
    x = _leaf(2, 4, 10, 10)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y = torch.tanh(x)
        out = conv(y)
        y.mul_(2.0)
        out.sum().backward()
    with compress_activations(conv, "hosvd", eps=0.5, min_numel=1):
        y = torch.tanh(x)
        out = conv(y)
        y.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# -- layer inputs recognised by identity (regressions) -------------------------


def test_autocast_with_tokens_equal_to_out_features_compresses_only_the_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 12))
    x = torch.randn(3, 4, 8, requires_grad=True)  # 3 x 4 = 12 tokens = out_features

    def run(ctx):
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if ctx is None:
                out = model(x)
            else:
                with ctx:
                    out = model(x)
        out.float().square().sum().backward()
        return x.grad.clone()

    expected = run(None)
    got = run(compress_activations(model, "hosvd", eps=0.5))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("parametrize", ["weight_norm", "spectral_norm", "orthogonal"])
def test_parametrized_linear_with_batch_equal_to_out_features_keeps_input_gradients_exact(parametrize):
    torch.manual_seed(0)
    layer = nn.Linear(6, 6).double()
    getattr(torch.nn.utils.parametrizations, parametrize)(layer)
    model = nn.Sequential(nn.Linear(6, 6).double(), nn.Tanh(), layer)
    x = _leaf(6, 6)  # batch 6 = out_features

    def run(ctx):
        x.grad = None
        model.zero_grad()
        torch.manual_seed(1)
        if ctx is None:
            out = model(x)
        else:
            with ctx:
                out = model(x)
        out.square().sum().backward()
        return x.grad.clone(), model[0].weight.grad.clone()

    expected = run(None)
    got = run(compress_activations(model, "svd", eps=0.5, min_numel=1, modules=lambda n, m: n == "2"))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_a_composite_module_compresses_the_linear_inputs_inside_it_only():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).double()
    x = _leaf(3, 5, 16)

    def run(ctx):
        x.grad = None
        layer.zero_grad()
        if ctx is None:
            out = layer(x)
        else:
            with ctx:
                out = layer(x)
        out.square().sum().backward()
        return {"<input>": x.grad.clone(), **{n: p.grad.clone() for n, p in layer.named_parameters()}}

    expected = run(None)
    ctx = compress_activations(layer, "hosvd", eps=0.5, min_numel=1, modules=(nn.TransformerEncoderLayer,))
    got = run(ctx)
    # Inside it: the feed-forward layers and the attention's two projections (their calls, run through the policy).
    assert set(ctx.stats.per_layer) == {"linear1", "linear2", "self_attn"}
    approximate = {"linear1.weight", "linear2.weight", "self_attn.in_proj_weight", "self_attn.out_proj.weight"}
    for name in expected:
        if name not in approximate:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert any(not torch.allclose(got[n], expected[n]) for n in approximate)


# -- normalisation ------------------------------------------------------------


def _norm_net(kind, side=6):
    torch.manual_seed(0)
    norm = {
        "batch": nn.BatchNorm2d(8), "layer": nn.LayerNorm([8, side, side]), "group": nn.GroupNorm(2, 8), "rms": nn.RMSNorm([8, side, side]),
    }[kind]
    return nn.Sequential(nn.Conv2d(3, 8, 3), norm, nn.ReLU(), nn.Conv2d(8, 4, 3)).double()


def _all_grads(model, x, ctx=None):
    model.zero_grad()
    x.grad = None
    if ctx is None:
        out = model(x)
    else:
        with ctx:
            out = model(x)
    out.square().sum().backward()
    return {"<input>": x.grad.clone(), **{n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}


def test_eval_batch_norm_keeps_nothing_when_frozen_and_a_decomposition_when_trained():
    model = _norm_net("batch")
    model[1].eval()
    model[1].running_var.uniform_(0.5, 2.0)
    x = _leaf(8, 3, 18, 18)
    expected = _all_grads(model, x)
    for trained in (True, False):
        model[1].weight.requires_grad_(trained)
        model[1].bias.requires_grad_(trained)
        ctx = compress_activations(model, "hosvd", eps=0.5, min_numel=1)
        got = _all_grads(model, x, ctx)
        norm = ctx.stats.held_breakdown["norm_inputs"]
        if trained:
            # The ReLU's output, decomposed once for the norm's weight gradient and the next conv.
            assert norm["held_bytes"] > 0 and ctx.stats.held_bytes < ctx.stats.held_original_bytes
            assert ctx.stats.per_layer["3"]["peak_bytes"] <= norm["held_bytes"]
            assert not torch.allclose(got["1.weight"], expected["1.weight"])
            # Read from the ReLU's output: at eps = 1 the weight gradient is vanilla's.
            exact = _all_grads(model, x, compress_activations(model, "hosvd", eps=1.0, min_numel=1))
            torch.testing.assert_close(exact["1.weight"], expected["1.weight"], rtol=1e-9, atol=1e-10)
        else:
            assert norm["held_bytes"] == 0
        exact = ["<input>", "0.bias", "3.bias"] + (["1.bias"] if trained else [])
        for name in exact:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["batch", "layer", "group", "rms"])
def test_training_norms_are_exact_by_default_and_compressible_on_request(kind):
    model = _norm_net(kind)
    x = _leaf(4, 3, 8, 8)
    expected = _all_grads(model, x)
    ctx = compress_activations(model, "hosvd", eps=0.5, min_numel=1)
    got = _all_grads(model, x, ctx)
    for name in expected:
        if name not in ("0.weight", "3.weight"):
            torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    exact_norm = ctx.stats.held_breakdown["norm_inputs"]["held_bytes"]
    assert exact_norm >= 4 * 8 * 6 * 6 * 8

    ctx = compress_activations(model, "hosvd", eps=1.0, min_numel=1, norm_inputs="compress")
    got = _all_grads(model, x, ctx)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")
    ctx = compress_activations(model, "hosvd", eps=0.5, min_numel=1, norm_inputs="compress")
    _all_grads(model, x, ctx)
    assert ctx.stats.held_breakdown["norm_inputs"]["held_bytes"] < exact_norm


def test_rms_norm_keeps_its_input_only_and_is_recomputed_bit_for_bit():
    model = _norm_net("rms")
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
    x = _leaf(4, 3, 8, 8)
    expected = _all_grads(model, x)
    ctx = compress_activations(model, "vanilla")
    got = _all_grads(model, x, ctx)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    norm = ctx.stats.held_breakdown["norm_inputs"]
    x_bytes = 4 * 8 * 6 * 6 * 8
    assert norm["held_bytes"] == x_bytes  # the input; vanilla keeps the normalised input (or the rms) too
    assert norm["original_bytes"] > x_bytes


def test_norm_inputs_is_validated():
    with pytest.raises(ValueError, match="norm_inputs must be one of"):
        compress_activations(None, norm_inputs="approximate")
    with pytest.raises(ValueError, match="norm_inputs must be one of"):
        convert(_chain(), norm_inputs=None)
    with pytest.raises(TypeError, match="masks must be True or False"):
        compress_activations(None, masks="yes")


# -- frozen layers -------------------------------------------------------------


def test_a_frozen_layer_keeps_nothing_of_its_input():
    model = _chain()
    for p in model[2].parameters():
        p.requires_grad_(False)
    x = _leaf(2, 3, 8, 8)
    expected = _all_grads(model, x)
    ctx = compress_activations(model, "hosvd", eps=0.5, min_numel=1, modules=lambda n, m: n == "2")
    got = _all_grads(model, x, ctx)
    assert "2" not in ctx.stats.per_layer
    for name in ("<input>", "0.bias"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12)


# -- whole models, both styles ---------------------------------------------------


class _GPTBlock(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, t, d)))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


def _models():
    torchvision = pytest.importorskip("torchvision")
    return {
        "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), (2, 3, 32, 32)),
        "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=5), (2, 3, 32, 32)),
        "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=5, stochastic_depth_prob=0.0), (2, 3, 32, 32)),
        "vit": (
            lambda: torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=5),
            (2, 3, 32, 32),
        ),
        "encoder_layer": (lambda: nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), (2, 5, 16)),
        "gpt_block": (lambda: _GPTBlock(), (2, 6, 16)),
    }


MODEL_NAMES = ["resnet18", "mobilenet_v2", "efficientnet_b0", "vit", "encoder_layer", "gpt_block"]


def _build(name, bn_eval):
    factory, shape = _models()[name]
    torch.manual_seed(0)
    model = factory().double()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # vanilla and compressed runs draw from the RNG differently
    model.train()
    if bn_eval:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    x = torch.randn(shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    return model, x


def _approximate(model, bn_eval):
    """Names of the parameters whose gradient compression may change: layer weights, eval-mode BN weights."""
    names = set()
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if type(m) in (nn.Conv2d, nn.Linear):
            names.add(prefix + "weight")
        if bn_eval and isinstance(m, nn.modules.batchnorm._BatchNorm):
            names.add(prefix + "weight")
    return names


@pytest.mark.parametrize("bn_eval", [False, True], ids=["bn-train", "bn-eval"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_keep_every_gradient_outside_the_compressed_weights_exact_in_both_styles(name, bn_eval):
    model, x = _build(name, bn_eval)
    expected = _all_grads(model, x)
    approximate = _approximate(model, bn_eval)
    held = {}
    for style in ("hooks", "convert"):
        for eps in (1.0, 0.5):
            model, x = _build(name, bn_eval)
            if style == "hooks":
                ctx = compress_activations(model, "hosvd", eps=eps, min_numel=1, modules=lambda n, m: type(m) in (nn.Conv2d, nn.Linear))
                got = _all_grads(model, x, ctx)
                stats = ctx.stats
            else:
                convert(model, "hosvd", eps=eps, min_numel=1)
                got = _all_grads(model, x)
                stats = memory_stats(model)
            held[style, eps] = stats.held_bytes
            assert stats.held_bytes <= stats.held_original_bytes
            if eps < 1:
                assert stats.held_bytes < stats.held_original_bytes
            for pname in expected:
                if eps == 1.0 or pname not in approximate:
                    error = (got[pname] - expected[pname]).norm() / expected[pname].norm().clamp_min(1e-300)
                    assert error <= 1e-9, f"{style} eps={eps} {pname}: relative error {error:.2e}"
    assert held["hooks", 0.5] == held["convert", 0.5]


# -- regressions: warm starts across shapes, a second backward ---------------------


def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).double()


@pytest.mark.parametrize("style", ["hooks", "convert"])
def test_subspace_after_a_short_batch_is_exact_again_on_full_batches(style):
    reference = _small_net()
    model = _small_net()
    ctx = None
    if style == "convert":
        convert(model, "subspace", eps=1.0, min_numel=1)
    else:
        ctx = compress_activations(model, "subspace", eps=1.0, min_numel=1)
    g = torch.Generator().manual_seed(5)
    for n in (8, 8, 3, 8):
        x = torch.randn(n, 3, 8, 8, dtype=DOUBLE, generator=g)
        expected = _all_grads(reference, x.clone().requires_grad_(True))
        got = _all_grads(model, x.clone().requires_grad_(True), ctx)
        for name in expected:
            error = (got[name] - expected[name]).norm() / expected[name].norm()
            assert error < 1e-8, f"batch of {n}, {name}: relative error {error:.2e}"


def test_a_linear_fed_two_and_three_dimensional_inputs_warm_starts_each_shape_apart():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).double()
    convert(model, "subspace", eps=0.9, min_numel=1)
    for shape in ((32, 16), (4, 8, 16), (32, 16), (4, 8, 16)):
        model(torch.randn(*shape, dtype=DOUBLE)).sum().backward()
    assert memory_stats(model).num_steps == 4


@pytest.mark.parametrize("style", ["hooks", "convert"])
def test_a_second_backward_with_retain_graph_gives_the_same_gradients(style):
    model = _chain()
    x = _leaf(2, 3, 8, 8)
    if style == "convert":
        convert(model, "hosvd", eps=0.7, min_numel=1)
        out = model(x)
    else:
        with compress_activations(model, "hosvd", eps=0.7, min_numel=1):
            out = model(x)
    loss = out.square().sum()
    first = torch.autograd.grad(loss, [x, *model.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *model.parameters()])
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="second time|freed"):
        torch.autograd.grad(loss, x)


def test_a_nested_context_warns_once_that_only_the_innermost_applies():
    model = _chain()
    x = _leaf(2, 3, 8, 8)
    inner = compress_activations(model, "hosvd", eps=0.8)
    with compress_activations(model, "svd", eps=0.8):
        with pytest.warns(RuntimeWarning, match="only the innermost"):
            with inner:
                model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with inner:
                model(x)


@pytest.mark.parametrize("method", ["quant8", "gradfilter_r2", "hosvd"])
def test_a_converted_model_can_be_saved_and_loaded(method, tmp_path):
    model = convert(_chain(), method, eps=0.8, min_numel=1)
    x = _leaf(2, 3, 8, 8)
    model(x).sum().backward()
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    loaded(x).sum().backward()
    assert memory_stats(loaded).num_steps == 2


@pytest.mark.parametrize("method", ["hosvd", "subspace"])
@pytest.mark.parametrize("rank", [2, (2, 2, 2, 2)])
def test_a_fixed_rank_is_capped_at_a_smaller_mode(method, rank):
    # The last conv sees 1 x 1 maps: a rank of 2 cannot apply to its spatial modes.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 1)).double()
    x = _leaf(4, 3, 7, 7)
    convert(model, method, rank=rank, min_numel=1)
    model(x).square().sum().backward()
    ranks = memory_stats(model).per_layer["4"]["ranks"][0]
    assert ranks is None or tuple(ranks)[2:] == (1, 1)


def test_a_rank_that_cannot_apply_names_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).double()
    convert(model, "hosvd", rank=(2, 2, 2), min_numel=1)  # three ranks for a four-mode input
    with pytest.raises(ValueError, match=r"layer '0'.*shape \(2, 3, 8, 8\)"):
        model(_leaf(2, 3, 8, 8))


def test_subspace_keeps_only_the_factors_between_steps_and_counts_them():
    model = _chain()
    x = _leaf(4, 3, 8, 8)
    ctx = compress_activations(model, "subspace", eps=0.8, min_numel=1)
    for _ in range(2):
        with ctx:
            model(x).sum().backward()
    states = [state for state, _ in ctx.compressor._previous.values()]
    assert states and all(not hasattr(state, "core") for state in states)
    factor_bytes = sum(f.numel() * f.element_size() for state in states for f in state.factors)
    assert ctx.stats.warm_state_bytes == factor_bytes > 0


class _Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        return self.head(checkpoint(self.block, x, use_reentrant=False).flatten(1))


@pytest.mark.parametrize("style", ["hooks", "convert"])
def test_a_checkpointed_region_runs_vanilla_inside_and_is_recorded_once(style):
    torch.manual_seed(0)
    reference = _Checkpointed().double()
    torch.manual_seed(0)
    model = _Checkpointed().double()
    x = _leaf(2, 3, 8, 8)
    expected = _all_grads(reference, x)
    if style == "hooks":
        ctx = compress_activations(model, "hosvd", eps=0.6, min_numel=1)
        got = _all_grads(model, x, ctx)
        stats = ctx.stats
    else:
        convert(model, "hosvd", eps=0.6, min_numel=1)
        got = _all_grads(model, x)
        stats = memory_stats(model)
    # The checkpoint keeps nothing of the block and recomputes it: no decomposition there, exact gradients.
    assert set(stats.per_layer) == {"head"} and stats.num_steps == 1
    assert len(stats.steps) == 1
    for name in expected:
        if name != "head.weight":
            torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12)


def _conv_relu_linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


@pytest.mark.parametrize("style", ["hooks", "convert"])
def test_double_backward_raises_one_clear_error_instead_of_a_constant_gradient(style):
    model = _conv_relu_linear()
    x = torch.randn(2, 3, 8, 8)
    if style == "convert":
        convert(model, "hosvd", 0.9)
        out = model(x).sum()
    else:
        with compress_activations(model, "hosvd", 0.9):
            out = model(x).sum()
    with pytest.raises(RuntimeError, match=r"first-order gradients only.*create_graph=True"):
        torch.autograd.grad(out, [model[0].weight], create_graph=True)
    # First-order backward of a fresh step is unaffected.
    with compress_activations(model, "hosvd", 0.9):
        model(x).sum().backward()
    assert model[0].weight.grad is not None


def test_torch_compile_of_a_converted_model_raises_one_clear_error():
    model = _conv_relu_linear()
    convert(model, "hosvd", 0.9)
    compiled = torch.compile(model)
    with pytest.raises(RuntimeError, match=r"eager tensors only: torch.compile"):
        compiled(torch.randn(2, 3, 8, 8)).sum().backward()


def test_torch_func_grad_raises_pytorchs_own_clear_error():
    from torch.func import functional_call, grad

    model = _conv_relu_linear()
    convert(model, "hosvd", 0.9)
    params = {k: v.detach() for k, v in model.named_parameters()}
    with pytest.raises(RuntimeError, match=r"saved tensor hooks"):
        grad(lambda p: functional_call(model, p, (torch.randn(2, 3, 8, 8),)).sum())(params)
    # Nothing of the refused session is left behind: no mode sees later calls, and the next step is a plain one.
    assert not torch._C._is_torch_function_mode_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert len(memory_stats(model).held_steps) == 1 and memory_stats(model).held_bytes > 0


@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish()], ids=["gelu", "gelu_tanh", "silu", "mish"])
def test_activation_inputs_compress_decomposes_the_activation_input(act):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), act, nn.Linear(64, 16)).double()
    x = torch.randn(8, 12, 16, dtype=torch.float64, requires_grad=True)
    ref = _all_grads(model, x)
    # eps 1: the same as vanilla; the input is kept (a full decomposition would be no smaller).
    got = _all_grads(model, x, compress_activations(model, "hosvd", eps=1.0, activation_inputs="compress", min_numel=1))
    assert all(torch.allclose(got[n], ref[n], rtol=1e-10, atol=1e-12) for n in ref)
    # eps 0.5: the activation's input is decomposed; the forward and the last layer's bias gradient stay exact.
    exact = compress_activations(model, "hosvd", eps=0.5, min_numel=1)
    _all_grads(model, x, exact)
    ctx = compress_activations(model, "hosvd", eps=0.5, activation_inputs="compress", min_numel=1)
    with ctx:
        out = model(x)
    with torch.no_grad():
        assert torch.equal(out, model(x))
    got = _all_grads(model, x, ctx)
    part = ctx.stats.held_breakdown["activation_inputs"]
    assert part["held_bytes"] < part["original_bytes"] == 8 * 12 * 64 * 8
    assert exact.stats.held_breakdown["activation_inputs"]["held_bytes"] == 8 * 12 * 64 * 8
    assert torch.allclose(got["2.bias"], ref["2.bias"], rtol=1e-10)
    assert not torch.allclose(got["<input>"], ref["<input>"], rtol=1e-3)  # below the activation: approximate


ALL_INPUTS = {"norm_inputs": "compress", "activation_inputs": "compress", "attention_inputs": "compress"}


@pytest.mark.parametrize("name", ["vit", "encoder_layer", "gpt_block"])
def test_transformer_blocks_with_every_input_compressed(name):
    """eps 1 equals vanilla in both styles; at eps 0.5 the forward is unchanged, more is held less, nothing is NaN."""
    model, x = _build(name, False)
    expected = _all_grads(model, x)
    with torch.no_grad():
        expected_out = model(x)
    for style in ("hooks", "convert"):
        model, x = _build(name, False)
        if style == "hooks":
            ctx = compress_activations(model, "hosvd", eps=1.0, min_numel=1, **ALL_INPUTS)
            got = _all_grads(model, x, ctx)
        else:
            convert(model, "hosvd", eps=1.0, min_numel=1, **ALL_INPUTS)
            got = _all_grads(model, x)
        for pname in expected:
            error = (got[pname] - expected[pname]).norm() / expected[pname].norm().clamp_min(1e-300)
            assert error <= 1e-9, f"{style} {pname}: relative error {error:.2e}"
    model, x = _build(name, False)
    default = compress_activations(model, "hosvd", eps=0.5, min_numel=1)
    _all_grads(model, x, default)
    everything = compress_activations(model, "hosvd", eps=0.5, min_numel=1, **ALL_INPUTS)
    with everything:
        out = model(x)
    assert torch.equal(out, expected_out)
    out.square().sum().backward()
    assert everything.stats.held_bytes < default.stats.held_bytes
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- LayerNorm: its output instead of its input when another op keeps the output raw ----------


def _ln_net(weight=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.5)
        model[0].bias.uniform_(-0.5, 0.5)
        if weight is not None:
            model[0].weight.copy_(weight)
    return model


def _ln_input():
    return torch.randn(8, 12, 16, dtype=DOUBLE, generator=torch.Generator().manual_seed(3)).requires_grad_(True)


def test_layer_norm_reads_its_output_when_the_next_layer_keeps_it_raw():
    model, x = _ln_net(), _ln_input()
    expected = _all_grads(model, x)
    h = (x * 1.0).detach().requires_grad_(True)  # not a leaf of the step: its bytes count
    model.zero_grad()
    ctx = compress_activations(model, "hosvd", eps=1.0, min_numel=1)
    with ctx:
        out = model(h * 1.0)
    out.square().sum().backward()
    got = {"<input>": h.grad, **{n: p.grad for n, p in model.named_parameters()}}
    for name, g in expected.items():
        assert torch.allclose(got[name], g, rtol=1e-12, atol=1e-13), name
    norm = ctx.stats.held_breakdown["norm_inputs"]
    stats_bytes = 2 * 8 * 12 * 8  # mean and rstd, float64
    assert norm["held_bytes"] == stats_bytes  # the input is not kept: the linear layer's raw input serves
    assert norm["original_bytes"] == stats_bytes + x.numel() * 8


def test_a_layer_reading_a_layer_norm_output_keeps_it_raw_for_the_norm_to_read():
    """Decomposing the output would make the norm keep its input as well (one more tensor of the same size): the
    layer keeps the output raw instead, the norm keeps only its statistics, and both gradients are exact."""
    x = _ln_input()
    model = _ln_net()
    expected = _all_grads(model, x)
    model.zero_grad()
    ctx = compress_activations(model, "hosvd", eps=0.5, min_numel=1)
    with ctx:
        out = model(x * 1.0)  # not a leaf: the norm's input would count
    out.square().sum().backward()
    got = {n: p.grad for n, p in model.named_parameters()}
    assert ctx.stats.held_breakdown["norm_inputs"]["held_bytes"] == 2 * 8 * 12 * 8  # mean and rstd only
    assert ctx.stats.per_layer["1"]["ranks"] == [None]
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.allclose(got[name], expected[name], rtol=1e-10, atol=1e-12), name


def test_layer_norm_keeps_its_input_where_a_weight_is_zero():
    x = _ln_input()
    for eps in (0.5, 1.0):
        model = _ln_net(torch.cat([torch.zeros(1), torch.ones(15)]))
        expected = _all_grads(model, x)
        model.zero_grad()
        ctx = compress_activations(model, "hosvd", eps=eps, min_numel=1)
        with ctx:
            out = model(x * 1.0)  # not a leaf: the norm's input counts
        out.square().sum().backward()
        got = {n: p.grad for n, p in model.named_parameters()}
        assert ctx.stats.held_breakdown["norm_inputs"]["held_bytes"] == 2 * 8 * 12 * 8 + x.numel() * 8
        for name in ("0.weight", "0.bias", "1.weight"):  # the norm's and the next layer's gradients are exact
            assert torch.allclose(got[name], expected[name], rtol=1e-12, atol=1e-13), name


def test_layer_norm_output_changed_in_place_falls_back_to_the_input():
    model = _ln_net()

    def forward(x):
        y = model[0](x)
        y.mul_(2.0)  # the output kept raw by the next layer is not the norm's output any more
        return model[3](model[2](model[1](y)))

    x = _ln_input()
    y_ref = forward(x)
    y_ref.square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ctx = compress_activations(model, "hosvd", eps=1.0, min_numel=1)
    with ctx:
        out = forward(x * 1.0)  # not a leaf: the norm's input counts
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-12, atol=1e-13), name
    # The norm kept its input (the statistics and x).
    assert ctx.stats.held_breakdown["norm_inputs"]["held_bytes"] == 2 * 8 * 12 * 8 + x.numel() * 8


def test_layer_norm_input_changed_in_place_raises_as_vanilla_does():
    model = _ln_net(torch.cat([torch.zeros(1), torch.ones(15)]))  # a zero weight: the norm keeps its input
    h = _ln_input()
    ctx = compress_activations(model, "hosvd", eps=0.5, min_numel=1)
    x = h * 1.0
    with ctx:
        out = model(x)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# -- nn.MultiheadAttention: its projections and attention go through the policy ----------------


@pytest.mark.parametrize("masked", [False, True], ids=["self-attention", "key-padding-mask"])
def test_multihead_attention_runs_through_the_policy_with_dropout_replayed(masked):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.2, batch_first=True).double().train()
    x = torch.randn(3, 7, 16, dtype=DOUBLE, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, -2:] = True

    def grads(ctx=None):
        layer.zero_grad()
        x.grad = None
        torch.manual_seed(5)  # the same dropout masks in every run
        kwargs = {"src_key_padding_mask": padding} if masked else {}
        if ctx is None:
            out = layer(x, **kwargs)
        else:
            with ctx:
                out = layer(x, **kwargs)
        torch.manual_seed(6)
        out.square().sum().backward()
        return out.detach(), {"<input>": x.grad.clone(), **{n: p.grad.clone() for n, p in layer.named_parameters()}}

    ref_out, ref = grads()
    ctx = compress_activations(layer, "hosvd", eps=1.0, min_numel=1, modules=(nn.MultiheadAttention, nn.Linear))
    out, got = grads(ctx)
    assert torch.equal(out, ref_out)
    for name in ref:
        assert torch.allclose(got[name], ref[name], rtol=1e-10, atol=1e-12), name
    attention = ctx.stats.held_breakdown["attention_inputs"]
    if masked:  # a masked call runs as vanilla autograd: nothing in the attention's own category
        assert attention["original_bytes"] == 0
    else:
        # The attention keeps q, k, v; vanilla's math path also keeps the probabilities and their dropout mask.
        assert 0 < attention["held_bytes"] < attention["original_bytes"]
        assert {"self_attn"} <= {n.split(".")[0] for n in ctx.stats.per_layer}  # the projections' inputs


# -- a gated product (Llama's SiLU(gate) * up) recomputes the activation's output ---------------


class _GatedMLP(nn.Module):
    def __init__(self, act: nn.Module, d: int = 16, hidden: int = 48) -> None:
        super().__init__()
        self.gate, self.up, self.down, self.act = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(hidden, d), act

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU()], ids=["silu", "gelu"])
def test_a_gated_product_keeps_the_gate_and_the_other_factor_only(act):
    torch.manual_seed(0)
    model = _GatedMLP(act).double()
    x = _leaf(4, 10, 16)
    expected = _all_grads(model, x)
    ctx = compress_activations(model, "hosvd", eps=1.0, min_numel=1)
    got = _all_grads(model, x, ctx)
    for name in expected:  # the same ops on the same inputs: bit for bit
        assert torch.equal(got[name], expected[name]), name
    size = 4 * 10 * 48 * 8
    part = ctx.stats.held_breakdown["activation_inputs"]
    # Vanilla: the gate (the activation's), the activation's output and up (the product's); kept: the gate and up.
    assert part["original_bytes"] == 3 * size
    assert part["held_bytes"] == 2 * size


def test_a_gated_product_whose_activation_output_changed_in_place_is_vanilla():
    torch.manual_seed(0)
    model = _GatedMLP(nn.SiLU()).double()

    def forward(x):
        s = model.act(model.gate(x))
        s.mul_(1.5)  # no longer act(gate): the product must keep it as it is
        return model.down(s * model.up(x))

    x = _leaf(4, 10, 16)
    forward(x).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ctx = compress_activations(model, "hosvd", eps=1.0, min_numel=1)
    with ctx:
        out = forward(x)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-12, atol=1e-13), name


def _gelu_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 8)).double()


@pytest.mark.parametrize("method, kwargs", [("vanilla", {}), ("hosvd", {"eps": 0.5})])
def test_a_layer_reading_an_activation_output_recomputes_it_from_the_kept_input(method, kwargs):
    """The GELU keeps its input anyway: the next layer keeps nothing of its own and recomputes the GELU's output
    in backward, so its weight gradient is exact even where the method decomposes the other layers."""
    model = _gelu_mlp()
    x = _leaf(32, 16)
    expected = _all_grads(model, x)
    ctx = compress_activations(model, method, min_numel=1, **kwargs)
    got = _all_grads(model, x, ctx)
    assert torch.equal(got["2.weight"], expected["2.weight"]) and torch.equal(got["<input>"], expected["<input>"])
    layer = ctx.stats.per_layer["2"]
    assert layer["peak_bytes"] == 0 < layer["original_bytes"] and layer["ranks"] == [None]
    # The step holds the GELU's input, what the first layer stores of x, and nothing for the last layer.
    assert ctx.stats.held_bytes == 32 * 64 * 8 + ctx.stats.per_layer["0"]["peak_bytes"]


def test_a_layer_reading_a_compressed_activation_decomposes_its_own_input():
    model = _gelu_mlp()
    x = _leaf(32, 16)
    ctx = compress_activations(model, "hosvd", eps=0.5, min_numel=1, activation_inputs="compress")
    _all_grads(model, x, ctx)
    # The GELU keeps a decomposition of its input, not the input: the last layer decomposes what it reads.
    assert ctx.stats.per_layer["2"]["peak_bytes"] > 0


def test_a_recomputed_layer_input_raises_when_its_source_changed_in_place():
    model = _gelu_mlp()
    x = _leaf(32, 16)
    ctx = compress_activations(model, "vanilla", min_numel=1)
    with ctx:
        h = model[0](x)
        out = model[2](F.gelu(h))
        h.mul_(2.0)  # vanilla raises too: the GELU saved h
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
