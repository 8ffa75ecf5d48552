"""The method comparison (python -m benchmarks.compare): a tiny end-to-end run and its argument errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

import tensorcomp  # noqa: E402
from benchmarks import compare  # noqa: E402

TINY = [
    "--limit-train", "96", "--limit-test", "64", "--epochs", "1", "--pretrain-epochs", "1",
    "--batch-size", "32", "--eps", "0.9", "--layers", "2", "--no-progress",
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORCOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TENSORCOMP_DATA_ROOT", raising=False)


def _rows(csv_path):
    with open(csv_path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_tiny_comparison_writes_every_output(tmp_path, capsys):
    methods = ["vanilla", "svd", "hosvd", "gradfilter_r2"]
    argv = [*TINY, "--methods", *methods, "--out", str(tmp_path), "--run-name", "tiny"]
    assert compare.main(argv) == 0
    out_dir = tmp_path / "tiny"
    rows = _rows(out_dir / "results.csv")
    assert [r["method"] for r in rows] == methods
    assert all(r["layers"] == "2" for r in rows)
    by_method = {r["method"]: r for r in rows}
    # Vanilla stores the activations as they are; HOSVD stores less.
    assert float(by_method["vanilla"]["compression_ratio"]) == 1.0
    assert int(by_method["hosvd"]["peak_bytes"]) < int(by_method["vanilla"]["peak_bytes"])
    assert by_method["hosvd"]["eps"] == "0.9" and by_method["vanilla"]["eps"] == ""
    assert 0.0 <= float(by_method["hosvd"]["top1"]) <= 100.0

    report = json.loads((out_dir / "results.json").read_text())
    meta = report["meta"]
    for key in ("cpu", "cpu_cores", "torch", "device", "date", "command", "split_rule", "pretrained_top1"):
        assert key in meta
    assert "--run-name tiny" in meta["command"]
    assert len(report["rows"]) == 4
    assert (out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The paper's questions, for the one (layers, eps) pair that has vanilla, svd and hosvd.
    paper = json.loads((out_dir / "paper.json").read_text())
    assert [(r["layers"], r["eps"]) for r in paper["rows"]] == [(2, 0.9)]
    assert paper["rows"][0]["hosvd_top1"] == report["rows"][2]["top1"]
    assert paper["rows"][0]["paper_hosvd_vs_vanilla"] is None  # smallcnn on digits is not in the paper

    printed = capsys.readouterr().out
    assert "gradfilter_r2" in printed and "top-1 %" in printed
    assert "the paper's questions" in printed

    # Same settings again: the pretrained checkpoint is reused, and identical
    # seeds and data order give identical vanilla results.
    assert compare.main([*argv[:-1], "again", "--methods", "vanilla"]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["meta"]["pretrain_reused"] is True
    assert again["rows"][0]["top1"] == report["rows"][0]["top1"]
    assert again["rows"][0]["final_loss"] == report["rows"][0]["final_loss"]


def test_a_registered_method_is_compared_by_name(tmp_path):
    def stored_as_is(x, eps=0.9, **kwargs):
        return tensorcomp.svd(x, eps=1.0)

    tensorcomp.register("test_compare_exact_svd", stored_as_is)
    try:
        argv = [*TINY, "--methods", "test_compare_exact_svd", "--out", str(tmp_path), "--run-name", "mine"]
        assert compare.main(argv) == 0
    finally:
        tensorcomp.registry._METHODS.pop("test_compare_exact_svd", None)
    (row,) = _rows(tmp_path / "mine" / "results.csv")
    assert row["method"] == "test_compare_exact_svd" and row["top1"] != ""


def test_a_failing_method_gets_a_row_and_does_not_stop_the_run(tmp_path):
    def broken(x, eps=0.9, **kwargs):
        raise ValueError("this method always fails")

    tensorcomp.register("test_compare_broken", broken)
    try:
        argv = [*TINY, "--methods", "test_compare_broken", "vanilla", "--out", str(tmp_path), "--run-name", "broken"]
        assert compare.main(argv) == 0
    finally:
        tensorcomp.registry._METHODS.pop("test_compare_broken", None)
    rows = _rows(tmp_path / "broken" / "results.csv")
    assert [r["method"] for r in rows] == ["test_compare_broken", "vanilla"]
    assert rows[0]["top1"] == "" and "always fails" in rows[0]["warnings"]
    assert rows[1]["top1"] != ""


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--model", "vgg11"], ["vgg11", "smallcnn", "resnet18", "mobilenet_v2"]),
        (["--dataset", "imagenet"], ["imagenet", "digits", "cifar10"]),
        (["--methods", "hosvd,nope"], ["nope", "hosvd", "gradfilter_r2"]),
        (["--dataset", "cifar10"], ["--data-root", "cifar-10-batches-py"]),
        (["--dataset", "cifar10", "--data-root", "{tmp}/missing"], ["missing", "not a folder"]),
        (["--dataset", "cifar10", "--data-root", "{tmp}"], ["cifar-10-batches-py", "train/<class>"]),
        (["--eps", "1.5"], ["--eps", "1.5"]),
        (["--layers", "99"], ["--layers 99", "6"]),
        (["--layers", "two"], ["--layers", "'two'"]),
        (["--epochs", "0"], ["--epochs"]),
        (["--epochs", "x"], ["--epochs", "'x'"]),
        (["--device", "tpu"], ["tpu", "cpu"]),
        (["--no-such-flag"], ["--no-such-flag"]),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(argv, names, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert compare.main([*argv, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("python -m benchmarks.compare: error:")
    assert "Traceback" not in captured.err
    for name in names:
        assert name in lines[0]
    assert not (tmp_path / "compare-digits-smallcnn-32").exists()


def test_help_states_the_default_grid(capsys):
    assert compare.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--eps 0.8 0.9, --layers 2 4" in text
    assert "all methods but cp" in text


def _row(method, eps, layers, top1, peak):
    return {"method": method, "eps": eps, "layers": layers, "top1": top1, "peak_bytes": peak}


def test_paper_comparison_answers_the_three_questions():
    rows = [
        _row("vanilla", "", 2, 70.0, 1000),
        _row("svd", 0.8, 2, 69.0, 500),
        _row("hosvd", 0.8, 2, 69.5, 40),
        _row("gradfilter_r2", "", 2, 69.9, 250),   # stores more than HOSVD, more accurate
        _row("gradfilter_r4", "", 2, 68.0, 60),    # stores more than HOSVD, less accurate
        _row("gradfilter_r7", "", 2, 75.0, 20),    # stores less: not a fair comparison, ignored
        _row("vanilla", "", 4, 71.0, 2000),
        _row("svd", 0.9, 4, 70.0, 1000),
        _row("hosvd", 0.9, 4, 70.5, 400),
        _row("gradfilter_r2", "", 4, 60.0, 100),   # stores less than HOSVD
        _row("hosvd", 0.8, 4, None, None),         # a failed run has no row in the comparison
    ]
    first, second = compare.paper_comparison(rows, "resnet18")
    assert (first["layers"], first["eps"]) == (2, 0.8)
    assert first["svd_vs_vanilla"] == 2.0 and first["hosvd_vs_vanilla"] == 25.0 and first["hosvd_vs_svd"] == 12.5
    assert first["hosvd_10x_less_than_svd"] is True
    assert first["svd_minus_hosvd_top1"] == -0.5
    assert (first["paper_hosvd_vs_vanilla"], first["paper_svd_vs_vanilla"]) == (12.6, 1.6)
    assert first["gradfilter"] == "gradfilter_r2" and first["gradfilter_minus_hosvd_top1"] == 0.4
    assert (second["layers"], second["eps"]) == (4, 0.9)
    assert second["hosvd_10x_less_than_svd"] is False
    assert second["paper_hosvd_vs_vanilla"] is None  # the paper's table is at eps 0.8 only
    assert second["gradfilter"] is None and second["gradfilter_minus_hosvd_top1"] is None
    assert compare.paper_comparison(rows, "smallcnn")[0]["paper_hosvd_vs_vanilla"] is None
    text = compare.format_paper_table([first, second])
    assert "12.6" in text and "+0.40" in text


def test_run_title_wraps_a_long_note():
    meta = {"dataset": "cifar10", "model": "resnet18", "image_size": 224, "finetune_schedule": {"epochs": 1},
            "note": "a long note " * 30}
    lines = compare.run_title(meta).splitlines()
    assert lines[0] == "cifar10, resnet18 224px, setup B, 1 fine-tuning epochs"
    assert len(lines) > 2 and all(len(line) <= 100 for line in lines)
    assert compare.run_title({**meta, "note": None}) == lines[0]


def test_rank_summary_and_table():
    per_layer = {
        "conv": {"ranks": [(4, 2, 3, 3), (6, 2, 3, 3)]},
        "fc": {"ranks": [5, 7]},
        "kept": {"ranks": [None, None]},
    }
    short, detail = compare.summarize_ranks(per_layer)
    assert short == "5x2x3x3 6"
    assert detail["conv"] == {"mean": [5.0, 2.0, 3.0, 3.0], "min": [4, 2, 3, 3], "max": [6, 2, 3, 3]}
    assert "kept" not in detail
    row = {
        "method": "hosvd", "eps": 0.8, "layers": 2, "top1": 90.0, "peak_bytes": 2048, "mean_bytes": 1024.0,
        "std_bytes": 0.0, "compression_ratio": 8.0, "ranks": short, "forward_ms": 1.0, "backward_ms": 2.0,
    }
    table = compare.format_table([dict(row, method="vanilla", eps="", top1=91.5), row])
    assert "-1.50" in table and "2.00 KiB" in table and "8.0x" in table


def test_eps_free_methods_are_registered():
    import tensorcomp.adapters  # noqa: F401

    assert compare.EPS_FREE <= set(tensorcomp.available_methods())
    assert set(compare.METHODS) <= set(tensorcomp.available_methods())
    assert set(compare.DEFAULT_METHODS) == set(compare.METHODS) - {"cp"}
    assert np.all([m in compare.METHODS for m in compare.EPS_FREE])


def test_gradient_snr_grows_with_eps_and_input_gradients_are_exact(tmp_path):
    from benchmarks import gradient_snr

    argv = [
        "--limit-train", "96", "--pretrain-epochs", "1", "--batch-size", "16", "--batches", "1",
        "--methods", "hosvd", "--eps", "0.5", "0.95", "--out", str(tmp_path),
    ]
    assert gradient_snr.main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    layers = {r["layer"] for r in rows}
    assert len(rows) == 2 * len(layers) == 12
    for layer in layers:
        low, high = (next(r for r in rows if r["layer"] == layer and r["eps"] == e) for e in (0.5, 0.95))
        # HOSVD keeps eps of each mode's energy, so of the whole it keeps less; but more at a higher eps.
        assert 0.5 ** 4 <= low["kept_energy"] <= high["kept_energy"]
        assert high["snr_measured"] >= low["snr_measured"]
        assert low["snr_predicted"] == 4.0
    assert max(r["input_grad_max_rel_diff"] for r in rows) < 1e-5
    assert (tmp_path / "snr.png").is_file()


def test_rank_evolution_records_every_step(tmp_path):
    from benchmarks import rank_evolution

    argv = [
        "--limit-train", "96", "--pretrain-epochs", "1", "--epochs", "2", "--batch-size", "16",
        "--eps", "0.5", "0.95", "--layers", "2", "--out", str(tmp_path), "--no-progress",
    ]
    assert rank_evolution.main(argv) == 0
    rows = _rows(tmp_path / "results.csv")
    steps = {int(r["step"]) for r in rows}
    assert steps == set(range(1, max(steps) + 1)) and len(steps) >= 4
    # Step 1 sees the same model and batch at both eps: HOSVD keeps at least as many directions per mode at 0.95.
    first = {(r["eps"], r["layer"], r["mode"]): int(r["rank"]) for r in rows if r["step"] == "1"}
    for (eps, layer, mode), rank in first.items():
        if eps == "0.5":
            assert first[("0.95", layer, mode)] >= rank
    assert {r["layer"] for r in rows} == {"features.12", "classifier"}
    assert (tmp_path / "ranks.png").is_file()
