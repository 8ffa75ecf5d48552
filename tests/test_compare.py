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
from benchmarks import _finetune, _paper, _pareto, compare  # noqa: E402

TINY = [
    "--limit-train", "96", "--limit-test", "64", "--epochs", "1", "--pretrain-epochs", "1",
    "--batch-size", "32", "--eps", "0.9", "--layers", "2", "--no-progress",
]


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


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
    # Vanilla (plain autograd) holds the most; HOSVD holds less, in held bytes and in the layers' own accounting.
    assert float(by_method["vanilla"]["held_vs_vanilla"]) == 1.0
    assert by_method["vanilla"]["layers_peak_bytes"] == ""  # plain autograd: no converted layers
    assert int(by_method["hosvd"]["held_bytes"]) < int(by_method["vanilla"]["held_bytes"])
    assert float(by_method["hosvd"]["held_vs_vanilla"]) > 1.0
    assert 0 < int(by_method["hosvd"]["layers_peak_bytes"]) < int(by_method["hosvd"]["held_bytes"])
    assert by_method["hosvd"]["eps"] == "0.9" and by_method["vanilla"]["eps"] == ""
    assert 0.0 <= float(by_method["hosvd"]["top1"]) <= 100.0
    assert all(r["bn"] == "eval" for r in rows)
    # One seed: the error bar is the binomial standard deviation on the 64 test images.
    p = float(by_method["vanilla"]["top1"]) / 100
    assert float(by_method["vanilla"]["top1_err"]) == pytest.approx(100 * (p * (1 - p) / 64) ** 0.5, abs=0.01)

    report = json.loads((out_dir / "results.json").read_text())
    meta = report["meta"]
    for key in ("cpu", "cpu_cores", "torch", "device", "date", "command", "split_rule", "pretrained_top1", "bn", "seeds"):
        assert key in meta
    assert "eval" in meta["bn"] and {"held_bytes", "layers_peak_bytes"} <= set(meta["memory"])
    assert "--run-name tiny" in meta["command"]
    assert len(report["rows"]) == 4
    assert (out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The paper's questions, for the one (layers, eps) pair that has vanilla, svd and hosvd.
    paper = json.loads((out_dir / "paper.json").read_text())
    assert [(r["layers"], r["eps"]) for r in paper["rows"]] == [(2, 0.9)]
    assert paper["rows"][0]["hosvd_top1"] == report["rows"][2]["top1"]
    assert paper["rows"][0]["paper_hosvd_vs_vanilla"] is None  # smallcnn on digits is not in the paper

    printed = capsys.readouterr().out
    assert "gradfilter_r2" in printed and "top-1 %" in printed and "held peak" in printed
    assert "the paper's questions" in printed
    # --no-progress still prints one line per finished run.
    assert [line.split("]")[0] for line in printed.splitlines() if line.startswith("[")] == ["[1/4", "[2/4", "[3/4", "[4/4"]

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


def test_baselines_hold_what_they_should_and_bn_mode_and_seeds_are_recorded(tmp_path):
    argv = [*TINY, "--methods", "vanilla", "checkpoint", "quant8_all", "save_on_cpu", "--bn", "train", "--seeds", "2",
            "--out", str(tmp_path), "--run-name", "base"]
    assert compare.main(argv) == 0
    report = json.loads((tmp_path / "base" / "results.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert report["meta"]["bn"].startswith("trainable BatchNorm layers in train mode") and report["meta"]["seeds"] == 2
    assert all(r["bn"] == "train" for r in rows.values())
    vanilla = rows["vanilla"]
    # Checkpointing keeps only its regions' inputs; quantising everything holds less than vanilla too.
    assert 0 < rows["checkpoint"]["held_bytes"] < vanilla["held_bytes"]
    assert 0 < rows["quant8_all"]["held_bytes"] < vanilla["held_bytes"]
    assert rows["save_on_cpu"]["host_bytes"] == rows["save_on_cpu"]["layers_peak_bytes"] > 0
    assert rows["save_on_cpu"]["held_device_bytes"] is None  # a CPU run: host and device are one memory
    # Two seeds: two accuracies, their mean and their sample standard deviation.
    runs = [float(t) for t in vanilla["top1_seeds"].split()]
    assert len(runs) == 2 and vanilla["top1"] == pytest.approx(sum(runs) / 2, abs=0.01)
    assert vanilla["top1_err"] == pytest.approx(abs(runs[0] - runs[1]) / 2 ** 0.5, abs=0.01)


def test_bn_eval_and_train_fine_tune_differently(tmp_path):
    finals = {}
    for bn in ("eval", "train"):
        argv = [*TINY, "--methods", "vanilla", "--bn", bn, "--out", str(tmp_path), "--run-name", bn]
        assert compare.main(argv) == 0
        finals[bn] = json.loads((tmp_path / bn / "results.json").read_text())["rows"][0]["final_loss"]
    assert finals["eval"] != finals["train"]


def test_checkpointing_the_trainable_part_gives_vanillas_gradients():
    from benchmarks._models import build_model
    from conftest import plain_and_checkpointed_step

    for name, k in (("smallcnn", 2), ("resnet18", 4)):
        base, _ = build_model(name, 3, 10)
        regions, grads, held, _ = plain_and_checkpointed_step(base, k)
        assert regions and regions[-1] in ("classifier", "fc")
        assert len(grads[0]) == len(grads[1]) > 0
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert 0 < held[1] < held[0]


def test_the_census_counts_what_the_adapters_say_vanilla_holds():
    import copy

    import torch.nn.functional as F

    from benchmarks._census import StepCensus
    from benchmarks._models import FineTuneSetting, build_model
    from tensorcomp.adapters import convert, memory_stats

    base, _ = build_model("smallcnn", 1, 10)
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8)
    for k in (2, 4):
        plain, converted = copy.deepcopy(base), copy.deepcopy(base)
        FineTuneSetting(plain, k).train()
        FineTuneSetting(converted, k).train()
        census = StepCensus(plain)
        F.cross_entropy(plain(x), y).backward()
        convert(converted, "hosvd", 0.9, last=k)
        F.cross_entropy(converted(x), y).backward()
        assert census.steps == [memory_stats(converted).held_original_bytes]


def test_tied_and_identical_points_are_spread():
    a = {"top1": 90.0, "top1_err": 1.0}
    assert _finetune.tied(a, {"top1": 90.9, "top1_err": 0.5})
    assert not _finetune.tied(a, {"top1": 91.5, "top1_err": 0.5})
    offsets = _pareto.spread_identical([(1.0, 90.0), (1.001, 90.0), (5.0, 90.0), (1.0, 80.0)])
    assert offsets[2] == offsets[3] == 1.0
    assert offsets[0] < 1.0 < offsets[1] and offsets[0] * offsets[1] == pytest.approx(1.0)


def _row(method, eps, layers, top1, held, err=0.1, step=10.0):
    return {"method": method, "eps": eps, "layers": layers, "top1": top1, "held_bytes": held, "top1_err": err,
            "forward_ms": step / 2, "backward_ms": step / 2, "layers_peak_bytes": held and held // 2, "layers_ratio": 1.0}


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
        _row("checkpoint", "", 2, 70.0, 300, step=13.0),  # holds more than HOSVD, more accurate: HOSVD stays on the front
        _row("quant8_all", "", 4, 72.0, 300),      # holds less than HOSVD and is more accurate: HOSVD is dominated
    ]
    first, second = _paper.paper_comparison(rows, "resnet18")
    assert (first["layers"], first["eps"]) == (2, 0.8)
    assert first["svd_vs_vanilla"] == 2.0 and first["hosvd_vs_vanilla"] == 25.0 and first["hosvd_vs_svd"] == 12.5
    assert first["hosvd_10x_less_than_svd"] is True
    assert first["svd_minus_hosvd_top1"] == -0.5
    assert (first["paper_hosvd_vs_vanilla"], first["paper_svd_vs_vanilla"]) == (12.6, 1.6)
    assert first["gradfilter"] == "gradfilter_r2" and first["gradfilter_minus_hosvd_top1"] == 0.4
    assert first["svd_hosvd_tied"] is False
    assert first["checkpoint_vs_hosvd"] == 7.5 and first["checkpoint_minus_hosvd_top1"] == 0.5
    assert first["checkpoint_step_vs_vanilla"] == 1.3 and first["quant8_all_vs_hosvd"] is None
    # gradfilter_r7 holds less and is more accurate: HOSVD is not on the front at k=2 either.
    assert first["hosvd_on_front"] is False and first["dominated_by"] == "gradfilter_r7"
    assert second["hosvd_on_front"] is False and second["dominated_by"] == "quant8_all"
    # At tied accuracy, a run that holds less dominates HOSVD; one that holds as much does not.
    tie = [_row("vanilla", "", 2, 70.0, 1000, err=1.0), _row("svd", 0.8, 2, 69.5, 500, err=1.0),
           _row("hosvd", 0.8, 2, 69.6, 40, err=1.0), _row("tucker", 0.8, 2, 69.9, 40, err=1.0),
           _row("quant4_all", "", 2, 69.0, 20, err=1.0)]
    (row,) = _paper.paper_comparison(tie, "resnet18")
    assert row["hosvd_on_front"] is False and row["dominated_by"] == "quant4_all"
    (row,) = _paper.paper_comparison(tie[:-1], "resnet18")
    assert row["hosvd_on_front"] is True and row["dominated_by"] is None
    assert (second["layers"], second["eps"]) == (4, 0.9)
    assert second["hosvd_10x_less_than_svd"] is False
    assert second["paper_hosvd_vs_vanilla"] is None  # the paper's table is at eps 0.8 only
    assert second["gradfilter"] is None and second["gradfilter_minus_hosvd_top1"] is None
    assert _paper.paper_comparison(rows, "smallcnn")[0]["paper_hosvd_vs_vanilla"] is None
    text = _paper.format_paper_table([first, second])
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
    short, detail = _finetune.summarize_ranks(per_layer)
    assert short == "5x2x3x3 6"
    assert detail["conv"] == {"mean": [5.0, 2.0, 3.0, 3.0], "min": [4, 2, 3, 3], "max": [6, 2, 3, 3]}
    assert "kept" not in detail
    row = {
        "method": "hosvd", "eps": 0.8, "layers": 2, "top1": 90.0, "top1_err": 1.0, "held_bytes": 2048,
        "held_mean_bytes": 1024.0, "held_std_bytes": 0.0, "held_vs_vanilla": 4.0, "layers_peak_bytes": 512,
        "layers_ratio": 8.0, "ranks": short, "forward_ms": 1.0, "backward_ms": 2.0, "step_vs_vanilla": 1.5,
    }
    vanilla = dict(row, method="vanilla", eps="", top1=91.5, held_bytes=8192, layers_peak_bytes=None, layers_ratio=None)
    table = compare.format_table([vanilla, row])
    assert "-1.50 tied" not in table and "-1.50" in table and "2.00 KiB" in table and "4.00x" in table
    assert "8.0x" in table and "512 B" in table and "1.50x" in table
    assert "-0.50 tied" in compare.format_table([vanilla, dict(row, top1=91.0)])


def test_the_methods_come_from_the_catalogue():
    import tensorcomp.adapters  # noqa: F401

    registered = set(tensorcomp.available_methods())
    methods = compare.all_methods()
    assert set(methods) == registered | set(compare.BASELINES)
    assert not set(compare.BASELINES) & registered
    assert {spec[0] for spec in compare.BASELINES.values() if spec} <= registered
    assert set(compare.default_methods()) == set(methods) - {"cp"}
    eps_free = {m for m in methods if not compare.uses_eps(m)}
    assert eps_free == {"vanilla", "save_on_cpu", "gradfilter_r2", "gradfilter_r4", "gradfilter_r7", "quant8", "quant4",
                        "quant2", *compare.BASELINES}


def test_the_all_suffix_takes_any_method_with_an_eps():
    assert compare.resolve_methods(["hosvd+all", "svd+all,hosvd"]) == ["hosvd+all", "svd+all", "hosvd"]
    assert set(compare.compress_all_bases()) == {m for m in tensorcomp.available_methods()
                                                 if tensorcomp.method_info(m).uses_eps}
    assert compare.uses_eps("hosvd+all") and not compare.uses_eps("quant8_all")
    assert compare.plan_runs(["vanilla", "hosvd+all"], [0.8, 0.9], [2]) == [
        ("vanilla", None, 2), ("hosvd+all", 0.8, 2), ("hosvd+all", 0.9, 2)]
    # Neither the default nor 'all' adds it.
    assert not any(m.endswith("+all") for m in (*compare.default_methods(), *compare.resolve_methods(["all"])))
    assert _finetune.storage_method("hosvd+all") == ("hosvd", _finetune.COMPRESS_ALL)
    assert _finetune.storage_method("quant4_all") == ("quant4", _finetune.COMPRESS_ALL)
    assert _finetune.storage_method("hosvd") == ("hosvd", {})
    with pytest.raises(compare.UsageError, match=r"'vanilla\+all': 'vanilla' has no eps.*takes one of: .*hosvd"):
        compare.resolve_methods(["vanilla+all"])
    with pytest.raises(compare.UsageError, match=r"'nonexistent\+all': unknown method 'nonexistent'"):
        compare.resolve_methods(["hosvd", "nonexistent+all"])
    with pytest.raises(compare.UsageError, match="has no eps"):
        compare.resolve_methods(["quant8_all+all"])


def test_bad_all_suffix_is_one_line_and_help_documents_it(tmp_path, capsys):
    assert compare.main(["--methods", "vanilla+all", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'vanilla+all'" in err[0] and "no eps" in err[0]
    assert compare.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "NAME+all" in text and "hosvd+all" in text and "attention_inputs='compress'" in text


def test_an_all_variant_is_neither_hosvd_in_the_paper_table_nor_in_the_plot():
    rows = [_row("vanilla", "", 2, 70.0, 1000), _row("svd", 0.8, 2, 69.0, 500), _row("hosvd", 0.8, 2, 69.5, 40),
            _row("hosvd+all", 0.8, 2, 60.0, 10)]
    (entry,) = _paper.paper_comparison(rows, "vit_tiny")
    assert entry["hosvd_top1"] == 69.5 and entry["hosvd_vs_vanilla"] == 25.0
    assert entry["dominated_by"] is None  # less accurate beyond the error bars
    assert _paper.paper_comparison([r for r in rows if r["method"] != "hosvd"], "vit_tiny") == []
    colors = _pareto.method_colors(["vanilla", "hosvd", "hosvd+all", "svd", "svd+all", "mine+all"])
    assert len({tuple(np.atleast_1d(colors[m])) for m in ("hosvd", "hosvd+all", "svd", "svd+all")}) == 4
    blues, reds = (_pareto.pyplot().get_cmap(c) for c in ("Blues", "Reds"))
    assert colors["hosvd"] == blues(0.95) and colors["hosvd+all"] == blues(0.45)
    assert colors["svd"] == reds(0.95) and colors["svd+all"] == reds(0.45)


def test_a_registered_method_without_eps_runs_once_per_depth(tmp_path):
    tensorcomp.register("test_compare_fixed", lambda x, eps=0.9, **kw: tensorcomp.svd(x, rank=1), uses_eps=False)
    try:
        plan = compare.plan_runs(["hosvd", "test_compare_fixed"], [0.8, 0.9], [2])
        assert plan == [("hosvd", 0.8, 2), ("hosvd", 0.9, 2), ("test_compare_fixed", None, 2)]
        assert "test_compare_fixed" in compare.all_methods()
    finally:
        tensorcomp.registry._METHODS.pop("test_compare_fixed", None)


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
