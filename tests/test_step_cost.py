import json

import pytest

pytest.importorskip("torchvision")

from benchmarks import step_cost  # noqa: E402


def test_step_cost_writes_tables_and_plot(tmp_path, capsys):
    code = step_cost.main([
        "--models", "resnet18", "--sizes", "32", "--layers", "1", "2", "--batch-size", "4",
        "--repeats", "1", "--methods", "hosvd", "svd", "--eps", "0.8", "--dataset", "digits", "--out", str(tmp_path),
    ])
    assert code == 0
    steps = json.loads((tmp_path / "steps.json").read_text())
    layers = json.loads((tmp_path / "layers.json").read_text())
    assert (tmp_path / "step_cost.png").stat().st_size > 0
    assert {(r["depth"], r["method"]) for r in steps["rows"]} == {
        (d, m) for d in (1, 2) for m in ("vanilla", "hosvd", "svd")
    }
    # Compression stores less than the vanilla row for the same layers, which stores their inputs.
    for row in steps["rows"]:
        assert 0 < row["stored_bytes"] <= row["original_bytes"]
    assert {r["layer"] for r in layers["rows"]} == {"layer4.1.conv1", "layer4.1.conv2"}
    assert steps["meta"]["cpu_cores"] >= 1
    assert "step cost" in capsys.readouterr().out
