import math
import warnings

import pytest
torch = pytest.importorskip("torch")  # a core-only install skips the adapter tests
from torch import nn  # noqa: E402

import tensorcomp  # noqa: E402
from tensorcomp.adapters import ActivationMemory, compress_activations  # noqa: E402

EXACT_METHODS = ["hosvd", "svd", "tucker", "tt", "subspace"]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6 * 5 * 5, 7)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(x.flatten(1))


class Block(nn.Module):
    """Token embedding, then a pre-norm attention + MLP block on B x T x D tokens."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, tokens):
        x = self.embed(tokens)
        h = self.norm1(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + self.out(attn @ v)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


def _cnn(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return SmallCNN().to(dtype), torch.randn(4, 3, 10, 10, dtype=dtype, requires_grad=True)


def _block(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return Block().to(dtype), torch.randint(0, 11, (3, 6))


def _grads(model, x, ctx=None):
    model.zero_grad(set_to_none=True)
    if isinstance(x, torch.Tensor) and x.requires_grad:
        x.grad = None
    if ctx is None:
        out = model(x)
    else:
        with ctx:
            out = model(x)
    out.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    if x.is_floating_point() and x.requires_grad:
        grads["<input>"] = x.grad.clone()
    return grads


def _assert_same(a, b, **tol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=lambda m: f"{name}: {m}", **tol)


class Spy:
    """Wraps a Compressor and records what it is asked to compress."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __call__(self, x, key=None, *, matrix_view=False):
        self.calls.append(
            {"shape": tuple(x.shape), "dtype": x.dtype, "ptr": x.untyped_storage().data_ptr(), "key": key, "matrix_view": matrix_view}
        )
        return self.inner(x, key=key, matrix_view=matrix_view)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _spy(ctx):
    ctx.compressor = Spy(ctx.compressor)
    return ctx.compressor


# -- exactness ---------------------------------------------------------------


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_eps_one_gives_vanilla_gradients_on_a_cnn(method):
    model, x = _cnn()
    reference = _grads(model, x)
    ctx = compress_activations(model, method, eps=1.0, min_numel=1)
    got = _grads(model, x, ctx)
    _assert_same(got, reference, atol=1e-9, rtol=1e-7)
    assert set(ctx.stats.per_layer) == {"stem", "conv1", "conv2", "head"}


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_eps_one_gives_vanilla_gradients_on_a_transformer_block(method):
    model, tokens = _block()
    reference = _grads(model, tokens)
    ctx = compress_activations(model, method, eps=1.0, min_numel=1)
    got = _grads(model, tokens, ctx)
    _assert_same(got, reference, atol=1e-9, rtol=1e-7)
    # q, k and v read the same normalised tokens: one record for the three.
    assert set(ctx.stats.per_layer) == {"q", "out", "fc1", "fc2"}


@pytest.mark.parametrize("method", ["hosvd", "tt"])
def test_eps_one_without_a_model_gives_vanilla_gradients(method):
    # Without a model every linear call's input is decomposed, named in call order.
    model, tokens = _block()
    reference = _grads(model, tokens)
    ctx = compress_activations(None, method, eps=1.0, min_numel=1)
    spy = _spy(ctx)
    got = _grads(model, tokens, ctx)
    _assert_same(got, reference, atol=1e-9, rtol=1e-7)
    names = list(ctx.stats.per_layer)
    # q, k and v (calls 0-2) read one tensor, recorded once for the first of them. They and fc1 (call 4) read a
    # LayerNorm's output: kept raw, for the norm to read its input back from (decomposing it would make the norm keep
    # its input too). The attention's output projection (call 3) is decomposed. fc2 (call 5) reads the GELU's output:
    # recomputed in backward from the GELU's input, which the GELU keeps anyway; no bytes.
    assert names == ["linear_0", "linear_3", "linear_4", "linear_5"]
    assert {c["key"] for c in spy.calls} == {("linear_3", 0)}
    layers = ctx.stats.per_layer
    assert all(layers[n]["ranks"] == [None] for n in ("linear_0", "linear_4", "linear_5"))
    assert layers["linear_5"]["peak_bytes"] == 0 < layers["linear_5"]["original_bytes"]


def test_truncation_only_changes_the_compressed_layers_weight_gradients():
    model, x = _cnn()
    reference = _grads(model, x)
    # Leave the stem alone: it is upstream of every compressed layer.
    ctx = compress_activations(model, "hosvd", eps=0.5, modules=lambda name, m: name in ("conv1", "conv2", "head"), min_numel=1)
    got = _grads(model, x, ctx)
    compressed = {"conv1.weight", "conv2.weight", "head.weight"}
    exact = {k: v for k, v in got.items() if k not in compressed}
    assert {"<input>", "stem.weight", "stem.bias", "bn.weight", "bn.bias", "conv1.bias", "head.bias"} <= exact.keys()
    _assert_same(exact, {k: reference[k] for k in exact}, atol=1e-12, rtol=1e-10)
    assert any(not torch.allclose(got[k], reference[k], atol=1e-6) for k in compressed)
    for k in compressed:  # still an approximation of the right gradient
        cosine = torch.nn.functional.cosine_similarity(got[k].flatten(), reference[k].flatten(), dim=0)
        assert cosine > 0.5


def test_default_selection_compresses_conv_and_linear_inputs_only():
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "hosvd", eps=0.9)  # default min_numel
    spy = _spy(ctx)
    _grads(model, x, ctx)
    # stem input 4*3*10*10 = 1200, conv1 and conv2 inputs 1600 >= 1024; the head's 4*150 is below.
    assert {c["key"][0] for c in spy.calls} == {"stem", "conv1", "conv2"}
    assert {c["shape"] for c in spy.calls} == {(4, 3, 10, 10), (4, 4, 10, 10), (4, 6, 10, 10)}


# -- what is never compressed ------------------------------------------------


@pytest.mark.parametrize("with_model", [True, False])
def test_parameters_buffers_integers_and_small_tensors_are_never_compressed(with_model):
    for model, inp in (_cnn(torch.float32), _block(torch.float32)):
        protected = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        weight_shapes = {tuple(p.shape) for p in model.parameters()}
        ctx = compress_activations(model if with_model else None, "hosvd", eps=0.9, min_numel=64)
        spy = _spy(ctx)
        _grads(model, inp, ctx)
        assert spy.calls
        for call in spy.calls:
            assert call["ptr"] not in protected
            assert call["shape"] not in weight_shapes
            assert call["dtype"].is_floating_point
            assert math.prod(call["shape"]) >= 64


def test_min_numel_is_validated_and_applied():
    with pytest.raises(ValueError, match="min_numel"):
        compress_activations(None, min_numel=-1)
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "hosvd", min_numel=10**6)
    _grads(model, x, ctx)
    assert ctx.stats.num_steps == 0


# -- duplicates and address reuse -------------------------------------------


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.a(x) * self.b(x)


def test_a_tensor_saved_twice_is_compressed_once():
    torch.manual_seed(0)
    model = TwoBranches().double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    reference = _grads(model, x)
    ctx = compress_activations(model, "hosvd", eps=1.0, min_numel=1)
    spy = _spy(ctx)
    got = _grads(model, x, ctx)
    _assert_same(got, reference, atol=1e-9, rtol=1e-7)
    assert len(spy.calls) == 1
    step = ctx.stats.steps[-1]
    assert sum(r.count for r in step.values()) == 1


def test_reused_memory_is_not_mistaken_for_an_earlier_tensor():
    torch.manual_seed(0)
    weight = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
    inputs = [torch.randn(32, 64, dtype=torch.float64) for _ in range(6)]
    reference = torch.autograd.grad(sum(((x * 1.0) @ weight).square().sum() for x in inputs), weight)[0]
    ctx = compress_activations(None, "svd", eps=1.0)
    spy = _spy(ctx)
    loss = 0.0
    with ctx:
        for x in inputs:
            # A fresh temporary each time: once compressed and dropped, its
            # memory is free for the next one.
            loss = loss + torch.nn.functional.linear(x * 1.0, weight.t()).square().sum()
    (got,) = torch.autograd.grad(loss, weight)
    torch.testing.assert_close(got, reference)
    assert len(spy.calls) == len(inputs)
    assert ctx.stats.steps[-1]["linear_0"].count == 1 and len(ctx.stats.steps[-1]) == len(inputs)


def test_nothing_is_kept_alive_after_exit():
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "hosvd", eps=0.9)
    with ctx:
        out = model(x)
    assert ctx._session is None
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    out.sum().backward()


# -- selection -------------------------------------------------------------


def test_modules_by_type_and_by_predicate():
    model, tokens = _block(torch.float32)
    # modules= selects whose conv/linear inputs are decomposed; a norm has none
    # (its input is governed by norm_inputs=).
    ctx = compress_activations(model, "hosvd", modules=nn.LayerNorm, min_numel=1)
    _grads(model, tokens, ctx)
    assert set(ctx.stats.per_layer) == set()

    ctx = compress_activations(model, "hosvd", modules=(nn.Linear, nn.LayerNorm), min_numel=1)
    _grads(model, tokens, ctx)
    assert set(ctx.stats.per_layer) == {"q", "out", "fc1", "fc2"}

    ctx = compress_activations(model, "hosvd", modules=lambda name, m: name.startswith("fc"), min_numel=1)
    _grads(model, tokens, ctx)
    assert set(ctx.stats.per_layer) == {"fc1", "fc2"}


def test_modules_is_validated():
    model, _ = _cnn()
    with pytest.raises(ValueError, match="model"):
        compress_activations(None, modules=nn.Linear)
    with pytest.raises(TypeError, match="modules"):
        compress_activations(model, modules="Linear")
    with pytest.raises(TypeError, match="modules"):
        compress_activations(model, modules=(int,))
    with pytest.raises(TypeError, match="model"):
        compress_activations("model")
    with pytest.raises(TypeError, match="stats"):
        compress_activations(model, stats={})


def test_svd_sees_linear_inputs_as_tokens_by_features():
    model, tokens = _block(torch.float32)
    ctx = compress_activations(model, "svd", eps=0.9, min_numel=1)
    spy = _spy(ctx)
    _grads(model, tokens, ctx)
    assert spy.calls and all(c["matrix_view"] for c in spy.calls)
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "svd", eps=0.9, modules=nn.Conv2d)
    spy = _spy(ctx)
    _grads(model, x, ctx)
    assert spy.calls and not any(c["matrix_view"] for c in spy.calls)
    ctx = compress_activations(model, "hosvd", eps=0.9, modules=nn.Linear, min_numel=1)
    spy = _spy(ctx)
    _grads(model, x, ctx)
    assert spy.calls and not any(c["matrix_view"] for c in spy.calls)


# -- scope of the context ----------------------------------------------------


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_nothing_is_recorded_without_grad(mode):
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "hosvd", min_numel=1)
    spy = _spy(ctx)
    with mode(), ctx:
        model(x.detach())
    assert spy.calls == [] and ctx.stats.num_steps == 0


def test_hooks_are_removed_on_exit():
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "hosvd", min_numel=1)
    spy = _spy(ctx)
    _grads(model, x, ctx)
    calls = len(spy.calls)
    assert calls > 0
    _grads(model, x)
    assert len(spy.calls) == calls and ctx.stats.num_steps == 1
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_hooks_are_removed_when_the_forward_raises():
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "hosvd", min_numel=1)
    with pytest.raises(RuntimeError):
        with ctx:
            model(x[:, :2])  # wrong number of channels
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    _grads(model, x, ctx)  # and the object is usable again
    assert set(ctx.stats.steps[-1]) == {"stem", "conv1", "conv2", "head"}


def test_the_context_cannot_be_nested_in_itself():
    ctx = compress_activations(None)
    with ctx:
        with pytest.raises(RuntimeError, match="already active"):
            ctx.__enter__()


# -- statistics --------------------------------------------------------------


def test_stats_accumulate_across_contexts_with_peak_mean_std():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    mem = ActivationMemory()
    totals = []
    for batch in (2, 4, 2):
        x = torch.randn(batch, 3, 12, 12)
        with compress_activations(model, "vanilla", stats=mem, min_numel=1) as ctx:
            model(x).sum().backward()
        assert ctx.stats is mem
        totals.append((batch * 3 * 12 * 12 + batch * 4 * 10 * 10) * 4)
    assert mem.num_steps == 3
    mean = sum(totals) / 3
    assert mem.peak_bytes == max(totals)
    assert mem.mean_bytes == pytest.approx(mean)
    assert mem.std_bytes == pytest.approx(math.sqrt(sum((t - mean) ** 2 for t in totals) / 3))
    assert mem.compression_ratio == pytest.approx(1.0)
    assert mem.per_layer["0"]["original_bytes"] == 4 * 3 * 12 * 12 * 4


def test_hosvd_stored_bytes_are_core_plus_factors():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 3, 3)
    model = nn.Sequential(conv)
    b, c, h, w = 6, 5, 9, 8
    x = torch.randn(b, c, h, w)
    with compress_activations(model, "hosvd", eps=0.7) as ctx:
        model(x).sum().backward()
    record = ctx.stats.per_layer["0"]
    k1, k2, k3, k4 = record["ranks"][0]
    assert (k1, k2, k3, k4) != (b, c, h, w)
    assert record["peak_bytes"] == (k1 * k2 * k3 * k4 + b * k1 + c * k2 + h * k3 + w * k4) * 4
    assert record["original_bytes"] == b * c * h * w * 4


# -- dtypes and robustness -----------------------------------------------------


def test_autocast_bfloat16_on_cpu():
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "hosvd", eps=0.9, min_numel=1)
    spy = _spy(ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with ctx:
            out = model(x)
    out.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert {c["key"][0] for c in spy.calls} == {"stem", "conv1", "conv2", "head"}
    # The activations (cast copies included), never the cast weights.
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    assert all(c["shape"] not in weight_shapes for c in spy.calls)
    assert any(c["dtype"] == torch.bfloat16 for c in spy.calls)


def test_nonfinite_activation_warns_once_and_backward_completes():
    model, x = _cnn(torch.float32)
    x = x.detach().clone()
    x[0, 0, 0, 0] = float("nan")
    ctx = compress_activations(model, "hosvd", eps=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ctx:
            out = model(x)
        out.sum().backward()
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1 and "NaN" in str(runtime[0].message)
    # NaN spreads to every later activation: the three convolutions' inputs.
    assert ctx.stats.skipped == 3
    assert model.stem.weight.grad is not None


# -- construction ----------------------------------------------------------------


def test_unknown_method_and_bad_eps_fail_at_construction():
    with pytest.raises(ValueError, match="available methods: .*hosvd"):
        compress_activations(None, "hosvdd")
    for eps in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            compress_activations(None, "hosvd", eps=eps)
    with pytest.raises(ValueError, match="refresh_every"):
        compress_activations(None, "subspace", refresh_every=0)


def test_subspace_warm_starts_each_layer_from_its_previous_factors():
    model, x = _cnn(torch.float32)
    ctx = compress_activations(model, "subspace", eps=0.8, refresh_every=3)
    ranks = []
    for step in range(3):
        x_step = x.detach() + 0.01 * step
        _grads(model, x_step, ctx)
        ranks.append(ctx.stats.per_layer["conv1"]["ranks"][-1])
    # Warm state per layer and input shape.
    assert set(ctx.compressor._previous) == {(("stem", 0), (4, 3, 10, 10)), (("conv1", 0), (4, 4, 10, 10)), (("conv2", 0), (4, 6, 10, 10))}
    assert ctx.compressor._previous[(("conv1", 0), (4, 4, 10, 10))][1] == 3
    assert ranks[0] == ranks[1] == ranks[2]


@pytest.mark.parametrize("method", ["vanilla", "save_on_cpu", "gradfilter_r2", "quant8", "quant4", "quant2"])
def test_baselines_train_through_the_hooks(method):
    model, x = _cnn(torch.float32)
    reference = _grads(model, x)
    ctx = compress_activations(model, method)
    got = _grads(model, x, ctx)
    assert ctx.stats.num_steps == 1
    if method in ("vanilla", "save_on_cpu"):
        _assert_same(got, reference, atol=0, rtol=0)
        assert ctx.stats.compression_ratio == 1.0
    else:
        assert ctx.stats.compression_ratio > 1.0
        assert all(torch.isfinite(g).all() for g in got.values())
        torch.testing.assert_close(got["<input>"], reference["<input>"])


def test_method_result_is_what_the_decomposition_returns():
    x = torch.randn(4, 3, 6, 6)
    res = tensorcomp.decompose(x, "hosvd", eps=0.8)
    model = nn.Sequential(nn.Conv2d(3, 2, 3))
    with compress_activations(model, "hosvd", eps=0.8, min_numel=1) as ctx:
        model(x).sum().backward()
    assert ctx.stats.per_layer["0"]["ranks"][0] == res.rank


class _ExactInAnotherLayout:
    """An exact 'decomposition' whose rebuilt tensor has a transposed memory layout."""

    rank = None
    explained_variance = 1.0

    def __init__(self, x):
        self.x = x.clone()
        self.nbytes = x.numel() * x.element_size()

    def to_tensor(self):
        return self.x.transpose(0, -1).contiguous().transpose(0, -1)


def test_rebuilt_tensors_get_the_saved_layout_back():
    # The CPU layer-norm backward reads its saved statistics assuming they are
    # contiguous; a method rebuilding them in another layout must not matter.
    tensorcomp.register("exact_other_layout", lambda x, eps=0.9: _ExactInAnotherLayout(x), overwrite=True)
    model, tokens = _block()
    reference = _grads(model, tokens)
    ctx = compress_activations(None, "exact_other_layout", min_numel=1)
    _assert_same(_grads(model, tokens, ctx), reference, atol=1e-12, rtol=1e-10)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).double().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    reference = _grads(model, x)
    ctx = compress_activations(model, "exact_other_layout", min_numel=1)
    _assert_same(_grads(model, x, ctx), reference, atol=1e-12, rtol=1e-10)


def test_cp_through_the_hooks_on_a_rank_one_activation():
    # CP at eps=1 would search ranks up to the dense size; a rank-one input is found at rank 1, exactly.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 2, 3)).double()
    a, b, c, d = (torch.randn(n, dtype=torch.float64) for n in (3, 2, 6, 5))
    x = torch.einsum("i,j,k,l->ijkl", a, b, c, d)
    reference = _grads(model, x)
    ctx = compress_activations(model, "cp", eps=0.999, min_numel=1)
    _assert_same(_grads(model, x, ctx), reference, atol=1e-9, rtol=1e-7)
    record = ctx.stats.per_layer["0"]
    assert record["ranks"] == [1]
    assert record["peak_bytes"] == (1 + 3 + 2 + 6 + 5) * 8


@pytest.mark.parametrize("method, freed", [("hosvd", True), ("quant4", True), ("vanilla", False)])
def test_compressed_activations_are_not_kept_alive_by_the_graph(method, freed):
    import weakref

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))  # the first output is only saved by the second conv
    refs = []
    model[0].register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o.untyped_storage())))
    x = torch.randn(2, 3, 20, 20)
    with compress_activations(model, method, eps=0.8):
        out = model(x)
    assert (refs[0]() is None) == freed
    out.sum().backward()
    assert model[0].weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_is_recorded_per_step():
    model, x = _cnn(torch.float32)
    model, x = model.cuda(), x.detach().cuda()
    ctx = compress_activations(model, "hosvd", eps=0.8)
    for _ in range(2):
        _grads(model, x, ctx)
    assert len(ctx.stats.cuda_max_allocated) == 2 and min(ctx.stats.cuda_max_allocated) > 0
    assert ctx.stats.num_steps == 2


def test_save_on_cpu_entered_inside_compress_activations_warns_that_nothing_there_is_compressed():
    model, x = _cnn()
    ctx = compress_activations(model, "hosvd", eps=0.5)
    with pytest.warns(RuntimeWarning, match="save_on_cpu"):
        with ctx:
            with torch.autograd.graph.save_on_cpu():
                out = model(x)
    out.sum().backward()
    assert ctx.stats.per_layer == {} or all(r["stored_bytes"] == r["original_bytes"] for r in ctx.stats.per_layer.values())


def test_a_checkpoint_inside_compress_activations_does_not_warn():
    from torch.utils.checkpoint import checkpoint

    model, x = _cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with compress_activations(model, "hosvd", eps=0.5):
            out = checkpoint(model, x, use_reentrant=False)
        out.sum().backward()


def _conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).double()


def _weight_grads(model, x, ctx=None):
    model.zero_grad(set_to_none=True)
    if ctx is None:
        model(x).pow(2).sum().backward()
    else:
        with ctx:
            out = model(x)
        out.pow(2).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


def test_subspace_without_a_model_survives_a_short_last_batch():
    model = _conv_net()
    ctx = compress_activations(None, "subspace", eps=1.0)
    for batch in (8, 8, 3, 8):
        x = torch.randn(batch, 3, 6, 6, dtype=torch.float64)
        ref = _weight_grads(model, x)
        got = _weight_grads(model, x, ctx)
        assert all(torch.allclose(g, r, rtol=1e-8, atol=1e-10) for g, r in zip(got, ref)), batch


def test_one_context_without_a_model_shared_by_two_models_starts_cold_where_they_differ():
    a, b = _conv_net(0), nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    ctx = compress_activations(None, "subspace", eps=1.0)
    for step in range(3):
        xa, xb = torch.randn(8, 3, 6, 6, dtype=torch.float64), torch.randn(4, 5, 12, dtype=torch.float64)
        for model, x in ((a, xa), (b, xb)):
            ref = _weight_grads(model, x)
            got = _weight_grads(model, x, ctx)
            assert all(torch.allclose(g, r, rtol=1e-8, atol=1e-10) for g, r in zip(got, ref)), (step, type(model[0]).__name__)
