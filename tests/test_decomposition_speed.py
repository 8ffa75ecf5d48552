"""The decomposition speed benchmark runs end to end on a tiny shape (no timing assertions)."""

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("threadpoolctl")
torch = pytest.importorskip("torch")

from benchmarks import decomposition_speed  # noqa: E402


def test_benchmark_writes_its_tables_and_chart(tmp_path):
    previous_threads = torch.get_num_threads()
    try:
        code = decomposition_speed.main(
            ["--shapes", "8x6x4x4", "--eps", "0.9", "--repeats", "1", "--backend", "both", "--out", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(previous_threads)
    assert code == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = saved["rows"]
    assert [r["backend"] for r in rows] == ["numpy", "torch"]
    for row in rows:
        assert row["ranks_match"]
        # Same algorithm, same ranks: the same error up to float32 rounding.
        assert row["error_tensorcomp"] == pytest.approx(row["error_plain"], abs=1e-5)
        assert row["error_tensorcomp"] == pytest.approx(row["error_tensorly_hosvd"], abs=1e-5)
        assert row["error_tensorly_tucker"] <= row["error_tensorcomp"] + 1e-5
    assert saved["meta"]["command"].startswith("python -m benchmarks.decomposition_speed --shapes 8x6x4x4")
    assert len(saved["rows"]) == 2
    assert (tmp_path / "results.csv").read_text().startswith("# date:")
    assert (tmp_path / "speedup.png").stat().st_size > 0


def test_activation_data_is_fixed_nonnegative_float32():
    a = decomposition_speed.activation((4, 3, 5, 5))
    b = decomposition_speed.activation((4, 3, 5, 5))
    assert a.dtype.name == "float32" and (a >= 0).all() and (a > 0).any()
    assert (a == b).all()
