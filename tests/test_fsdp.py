"""compress_activations under FSDP2 (``fully_shard``): gradients as without sharding, replicas identical.

Two processes on CPU with the gloo backend shard a small pre-norm MLP stack
(each block and the root wrapped with ``fully_shard``). The context is
entered once per step around the forward; the backward runs outside it,
where FSDP re-gathers the parameters it freed after the forward and
reduce-scatters the gradients.
"""

import copy
import socket

import pytest
torch = pytest.importorskip("torch")  # a core-only install skips the adapter tests
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from tensorcomp.adapters import compress_activations  # noqa: E402

try:
    from torch.distributed.fsdp import fully_shard  # FSDP2
except ImportError:
    fully_shard = None

WORLD_SIZE = 2
STEPS = 3
BATCH, TOKENS, D_IN, D, D_OUT = 4, 8, 16, 32, 8
# float64: fully_shard all-gathers and reduce-scatters float64 parameters and
# gradients over gloo on CPU, so the sharded gradients can be held to 1e-10.
DTYPE = torch.float64
TOL = 1e-10

# The fc2 layers read a ReLU's output and are decomposed (inputs of at least
# min_numel, 1024, elements). fc1 and head read a LayerNorm's output: kept raw,
# for the norm to read its input back from (decomposing it would make the norm
# keep its input too), so their gradients stay exact. The 4 x 8 x 16 input of
# "inp" is smaller than min_numel and kept as is.
DECOMPOSED = ["blocks.0.fc2", "blocks.1.fc2"]
KEPT_RAW = ["blocks.0.fc1", "blocks.1.fc1", "head"]
LAYERS = sorted(DECOMPOSED + KEPT_RAW)  # every layer the stats name

pytestmark = [
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with the gloo backend is unavailable"
    ),
    pytest.mark.skipif(fully_shard is None, reason="torch.distributed.fsdp.fully_shard (FSDP2) is unavailable"),
]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, 4 * D)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(D_IN, D)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, D_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s batch at ``step``: inputs of low rank plus noise (so HOSVD at eps 0.8 truncates), and targets."""
    g = torch.Generator().manual_seed(1000 * step + 100 + rank)
    signal = torch.randn(BATCH * TOKENS, 3, generator=g, dtype=DTYPE) @ torch.randn(3, D_IN, generator=g, dtype=DTYPE)
    x = (signal + 0.05 * torch.randn(BATCH * TOKENS, D_IN, generator=g, dtype=DTYPE)).reshape(BATCH, TOKENS, D_IN)
    target = torch.randn(BATCH, TOKENS, D_OUT, generator=g, dtype=DTYPE)
    return x, target


def _loss(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), target)


def _build() -> tuple[nn.Module, nn.Module]:
    """The same initial model on every rank: a plain copy, and the sharded one."""
    torch.manual_seed(0)
    model = Net().to(DTYPE)
    plain = copy.deepcopy(model)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return plain, model


def _full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.full_tensor().clone() for name, p in model.named_parameters()}


def _fsdp_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward (inside ``ctx`` if given) and backward; the loss and the full, rank-averaged gradients."""
    model.zero_grad(set_to_none=True)
    if ctx is None:
        loss = _loss(model, x, target)
    else:
        with ctx:
            loss = _loss(model, x, target)
    loss.backward()
    return loss.detach().clone(), _full_grads(model)


def _run(rank: int, port: int, result_path: str, worker) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        result = worker(rank)
        if rank == 0:
            torch.save(result, result_path)
        # Both ranks leave together: a rank tearing gloo down while the other still talks aborts its process.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _gradients_worker(rank: int) -> dict:
    plain, model = _build()
    sharded = all(type(p).__name__ == "DTensor" for p in model.parameters())

    # The unsharded reference: the average of the two ranks' losses, plain autograd, one process.
    batches = [_batch(r, 0) for r in range(WORLD_SIZE)]
    reference_loss = sum(_loss(plain, x, t) for x, t in batches) / WORLD_SIZE
    reference_loss.backward()
    reference = {name: p.grad.detach().clone() for name, p in plain.named_parameters()}

    x, target = batches[rank]
    loss_plain, grads_plain = _fsdp_step(model, x, target)
    ctx_exact = compress_activations(model, "hosvd", eps=1.0)
    loss_exact, grads_exact = _fsdp_step(model, x, target, ctx_exact)
    ctx = compress_activations(model, "hosvd", eps=0.8)
    loss_compressed, grads_compressed = _fsdp_step(model, x, target, ctx)

    def max_diff(grads: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
        return {name: float((grads[name] - other[name]).abs().max()) for name in other}

    return {
        "sharded": sharded,
        "names": sorted(reference),
        "grad_names": sorted(grads_exact),
        "plain_vs_reference": max_diff(grads_plain, reference),
        "exact_vs_reference": max_diff(grads_exact, reference),
        "compressed_vs_plain": max_diff(grads_compressed, grads_plain),
        "loss_exact_equal": torch.equal(loss_exact, loss_plain),
        "loss_compressed_equal": torch.equal(loss_compressed, loss_plain),
        "exact_layers": sorted(ctx_exact.stats.per_layer),
        "layers": sorted(ctx.stats.per_layer),
        "ranks": {name: record["ranks"] for name, record in ctx.stats.per_layer.items()},
        "ratio": ctx.stats.compression_ratio,
    }


def _replicas_worker(rank: int) -> dict:
    plain, model = _build()
    initial = [p.detach().clone() for p in plain.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx = compress_activations(model, "hosvd", eps=0.8)
    # The same training without sharding, in this process: each rank's batch
    # through its own entry of a context (so its layer inputs are decomposed
    # exactly as on that rank), the losses averaged as FSDP averages gradients.
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    plain_ctx = compress_activations(plain, "hosvd", eps=0.8)
    losses_equal = []
    for step in range(STEPS):
        x, target = _batch(rank, step)  # each replica sees its own data
        with torch.no_grad():
            loss_plain = _loss(model, x, target)
        with ctx:
            loss = _loss(model, x, target)
        losses_equal.append(torch.equal(loss.detach(), loss_plain))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        plain_optimizer.zero_grad()
        for r in range(WORLD_SIZE):
            with plain_ctx:
                plain_loss = _loss(plain, *_batch(r, step)) / WORLD_SIZE
            plain_loss.backward()
        plain_optimizer.step()
    # full_tensor() gathers the same shards on every rank: the replicas agree
    # by construction. What sharding could get wrong is the update of each
    # shard, so every rank compares the gathered parameters with the
    # unsharded run, which updates all of them from the averaged gradients.
    final = [p.detach().full_tensor() for p in model.parameters()]
    difference = max(float((p - q.detach()).abs().max()) for p, q in zip(final, plain.parameters()))
    differences = [None] * WORLD_SIZE
    dist.all_gather_object(differences, difference)
    return {
        "differences": differences,
        "moved": all(not torch.equal(p, q) for p, q in zip(final, initial)),
        "losses_equal": losses_equal,
        "steps": ctx.stats.num_steps,
        "layers": sorted(ctx.stats.per_layer),
        "ranks": {name: record["ranks"] for name, record in ctx.stats.per_layer.items()},
        "ratio": ctx.stats.compression_ratio,
    }


def _spawn(tmp_path, worker) -> dict:
    import torch.multiprocessing as mp

    result_path = str(tmp_path / "result.pt")
    mp.spawn(_run, args=(_free_port(), result_path, worker), nprocs=WORLD_SIZE, join=True)
    return torch.load(result_path)


def test_fsdp_gradients_match_the_unsharded_model(tmp_path):
    result = _spawn(tmp_path, _gradients_worker)
    assert result["sharded"]  # every parameter is a DTensor shard
    assert result["grad_names"] == result["names"]
    # FSDP itself against the unsharded model: the reference is the right one.
    assert max(result["plain_vs_reference"].values()) < TOL, result["plain_vs_reference"]
    # eps=1.0 inside the context is plain autograd, through the sharding too.
    assert max(result["exact_vs_reference"].values()) < TOL, result["exact_vs_reference"]
    assert result["loss_exact_equal"]
    assert result["exact_layers"] == LAYERS  # the same layers are seen (at eps=1.0 kept whole)

    # eps=0.8: the forward is the plain forward, bit for bit.
    assert result["loss_compressed_equal"]
    assert result["layers"] == LAYERS
    ranks = result["ranks"]
    assert all(rank is not None for name in DECOMPOSED for rank in ranks[name]), ranks
    assert all(rank is None for name in KEPT_RAW for rank in ranks[name]), ranks
    assert result["ratio"] > 1.0
    diff = result["compressed_vs_plain"]
    # Only the decomposed layers' weight gradients are approximate; every other
    # gradient (biases, norms, the weight of "inp", whose input is kept) is exact.
    approximate = {f"{name}.weight" for name in DECOMPOSED}
    assert all(diff[name] > 1e-6 for name in approximate), diff
    assert all(diff[name] < TOL for name in diff if name not in approximate), diff


def test_fsdp_replicas_follow_the_unsharded_training_under_compression(tmp_path):
    result = _spawn(tmp_path, _replicas_worker)
    assert result["moved"]
    # Both ranks hold the parameters of the unsharded run after the steps.
    assert len(result["differences"]) == WORLD_SIZE
    assert all(d < TOL for d in result["differences"]), result["differences"]
    # The forward inside the context is the plain forward at every step, bit for bit.
    assert result["losses_equal"] == [True] * STEPS
    assert result["steps"] == STEPS
    assert result["layers"] == LAYERS
    ranks = result["ranks"]
    assert all(len(ranks[name]) == STEPS and None not in ranks[name] for name in DECOMPOSED), ranks
    assert all(ranks[name] == [None] * STEPS for name in KEPT_RAW), ranks
    assert result["ratio"] > 1.0


def _llama_worker(rank: int) -> dict:
    """A Llama-architecture model from a config, each decoder layer and the root sharded: its RMSNorm modules are
    recomputed in backward from their inputs, reading the gathered weight of the forward."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=TOKENS,
    )
    model = transformers.LlamaForCausalLM(config).to(DTYPE).train()
    plain = copy.deepcopy(model)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    batches = [torch.randint(0, 64, (BATCH, TOKENS), generator=torch.Generator().manual_seed(10 + r)) for r in range(WORLD_SIZE)]
    reference_loss = sum(plain(input_ids=t, labels=t).loss for t in batches) / WORLD_SIZE
    reference_loss.backward()
    reference = {name: p.grad.detach().clone() for name, p in plain.named_parameters()}

    tokens = batches[rank]
    model.zero_grad(set_to_none=True)
    ctx = compress_activations(model, "vanilla")
    with ctx:
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    grads = _full_grads(model)
    norms = sorted(name for name, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm")
    return {
        "diff": {name: float((grads[name] - reference[name]).abs().max()) for name in reference},
        "norms": norms,
        "norm_held": ctx.stats.held_breakdown["norm_inputs"]["held_bytes"],
        "norm_original": ctx.stats.held_breakdown["norm_inputs"]["original_bytes"],
    }


def test_fsdp_llama_rms_norms_are_recomputed_with_the_gathered_weights(tmp_path):
    pytest.importorskip("transformers", reason="needs the optional 'hf' extra (transformers)")
    result = _spawn(tmp_path, _llama_worker)
    assert len(result["norms"]) == 5
    # The policy with nothing decomposed, sharded, equals plain autograd unsharded (the RMSNorm weights included).
    assert max(result["diff"].values()) < TOL, result["diff"]
    assert 0 < result["norm_held"] < result["norm_original"]
