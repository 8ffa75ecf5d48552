"""Data-parallel training inside compress_activations keeps the replicas identical."""

import socket

import pytest
torch = pytest.importorskip("torch")  # a core-only install skips the adapter tests
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from tensorcomp.adapters import compress_activations  # noqa: E402

WORLD_SIZE = 2
STEPS = 3

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with the gloo backend is unavailable"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, result_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)  # same initial weights; DDP also broadcasts them from rank 0
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 5)
        )
        initial = [p.detach().clone() for p in model.parameters()]
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        ctx = compress_activations(ddp, "hosvd", eps=0.8)
        generator = torch.Generator().manual_seed(100 + rank)  # each replica sees its own data
        for _ in range(STEPS):
            x = torch.randn(4, 3, 16, 16, generator=generator)
            target = torch.randint(0, 5, (4,), generator=generator)
            with ctx:
                loss = nn.functional.cross_entropy(ddp(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            moved = any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial))
            torch.save(
                {
                    "max_difference": float((gathered[0] - gathered[1]).abs().max()),
                    "moved": moved,
                    "steps": ctx.stats.num_steps,
                    "layers": sorted(ctx.stats.per_layer),
                    "ratio": ctx.stats.compression_ratio,
                },
                result_path,
            )
        # Both ranks leave together: a rank tearing gloo down while the other still talks aborts its process.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_replicas_stay_identical_under_compression(tmp_path):
    import torch.multiprocessing as mp

    result_path = str(tmp_path / "result.pt")
    mp.spawn(_worker, args=(_free_port(), result_path), nprocs=WORLD_SIZE, join=True)
    result = torch.load(result_path)
    assert result["moved"]
    assert result["max_difference"] == 0.0
    assert result["steps"] == STEPS
    # Layer names seen through the DDP wrapper; the Linear's 4 x 392 input is above min_numel too.
    assert result["layers"] == ["module.0", "module.3", "module.6"]
    assert result["ratio"] > 1.0
