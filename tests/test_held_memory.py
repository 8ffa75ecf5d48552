"""benchmarks.held_memory: one small run, its table and its checks."""

import json

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")

from benchmarks import _census, held_memory  # noqa: E402


def test_the_main_job_setting_runs_and_agrees_with_the_allocator(tmp_path, capsys):
    if _census.libc_in_use() is None:
        pytest.skip("needs glibc's mallinfo2 for the CPU allocator measure")
    argv = ["--models", "smallcnn", "--layers", "2", "--bn", "train", "--repeats", "1", "--no-progress", "--out", str(tmp_path)]
    assert held_memory.main(argv) == 0
    rows = json.loads((tmp_path / "held_memory.json").read_text())["rows"]
    ways = {r["way"]: r for r in rows}
    assert set(ways) == {"vanilla", "hooks", "convert", "layers-only"}
    for way in ("hooks", "convert"):
        assert ways[way]["held_ratio"] > 2  # BatchNorm inputs exact, everything else compact
        assert 0.9 < ways[way]["held_vs_allocator"] < 1.1
        assert ways[way]["max_exact_grad_error"] < 1e-5
    assert ways["hooks"]["held_MiB"] == ways["convert"]["held_MiB"]
    assert (tmp_path / "held_memory.png").stat().st_size > 0
    assert "hooks" in capsys.readouterr().out
