"""Every benchmark script follows one command-line convention (``benchmarks._cli``)."""

import importlib
import re
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")

SCRIPTS = ["compare", "gradient_snr", "rank_evolution", "step_cost", "decomposition_speed", "held_memory"]


def _main(script):
    return importlib.import_module(f"benchmarks.{script}").main


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_returns_0_and_states_each_default_once(script, capsys):
    assert _main(script)(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: python -m benchmarks.{script}")
    assert "(default: None)" not in text
    assert "(default: False)" not in text
    assert not re.search(r"\(default:[^)]*\)\s*\(default:", text)
    assert str(Path(__file__).resolve().parents[1]) not in text  # no path of this machine in the documented help
    assert "(default: 3)" in text or "(default: 0)" in text or "(default: 128)" in text or script == "compare"


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argv", [["--no-such-option"], ["--eps", "2"], ["--eps", "nan"]])
def test_bad_input_is_one_line_and_status_2(script, argv, capsys, tmp_path):
    _assert_usage_error(script, argv, [], capsys, tmp_path)


def _assert_usage_error(script, argv, names, capsys, tmp_path):
    """``argv`` ends the script with one ``prog: error:`` line naming ``names``, status 2, nothing written."""
    assert _main(script)([*argv, "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"python -m benchmarks.{script}: error:")
    assert "Traceback" not in captured.err
    for name in names:
        assert name in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "script, argv, names",
    [
        ("decomposition_speed", ["--shapes", "3x3"], ["--shapes", "3x3"]),
        ("decomposition_speed", ["--eps", "0"], ["(0, 1]"]),
        ("decomposition_speed", ["--repeats", "0"], ["--repeats"]),
        ("decomposition_speed", ["--threads", "-1"], ["--threads"]),
        ("decomposition_speed", ["--backend", "cupy"], ["cupy", "numpy"]),
        ("step_cost", ["--methods", "nope"], ["nope", "hosvd"]),
        ("step_cost", ["--eps", "1.5"], ["(0, 1]"]),
        ("step_cost", ["--batch-size", "0"], ["--batch-size"]),
        ("step_cost", ["--sizes", "0"], ["--sizes"]),
        ("step_cost", ["--models", "vgg"], ["vgg", "resnet18"]),
        ("step_cost", ["--dataset", "cifar10", "--data-root", "/nonexistent/cifar"], ["/nonexistent/cifar"]),
        ("held_memory", ["--models", "vgg"], ["vgg", "resnet18"]),
        ("held_memory", ["--method", "nope"], ["nope", "hosvd"]),
        ("held_memory", ["--repeats", "0"], ["--repeats"]),
        ("held_memory", ["--bn", "frozen"], ["frozen", "eval"]),
        ("held_memory", ["--device", "tpu"], ["tpu", "cpu"]),
    ],
)
def test_script_specific_bad_input_names_what_is_wrong(script, argv, names, capsys, tmp_path):
    _assert_usage_error(script, argv, names, capsys, tmp_path)


@pytest.mark.parametrize("script", ["compare", "gradient_snr", "rank_evolution"])
@pytest.mark.parametrize(
    "argv, name",
    [(["--batch-size", "0"], "--batch-size"), (["--image-size", "4"], "--image-size"),
     (["--model", "vgg"], "vgg"), (["--device", "tpu"], "tpu"), (["--limit-train", "0"], "--limit-train")],
)
def test_the_shared_setup_options_are_checked_alike(script, argv, name, capsys, tmp_path):
    _assert_usage_error(script, argv, [name], capsys, tmp_path)
