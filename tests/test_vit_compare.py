"""The small vision transformer of the comparison (``--model vit_tiny``): its layers, defaults, checkpointing, a tiny run."""

from __future__ import annotations

import csv

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

from torch import nn  # noqa: E402

from benchmarks import compare  # noqa: E402
from benchmarks._models import FineTuneSetting, build_model, candidate_layers  # noqa: E402
from tensorcomp.adapters import CompressedConv2d, CompressedLinear, convert  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


def _vit(image_size: int = 32) -> nn.Module:
    model, channels = build_model("vit_tiny", 1, 10, image_size=image_size)
    assert channels == 3  # grey digits are repeated, as for the torchvision CNNs
    return model


def test_vit_tiny_layers_are_the_patch_embedding_the_mlps_and_the_head():
    names = candidate_layers(_vit())
    blocks = [f"encoder.layers.encoder_layer_{i}.mlp.{j}" for i in range(6) for j in (0, 3)]
    assert names == ["conv_proj", *blocks, "heads.head"]
    # The attention's output projection is a Linear subclass its module never calls: not a candidate.
    assert not any("self_attention" in name for name in names)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 14])
def test_convert_last_k_converts_exactly_the_trainable_layers_of_the_vit(k):
    model = _vit()
    setting = FineTuneSetting(model, k)
    assert setting.trainable_layers == candidate_layers(model)[-k:]
    convert(model, "hosvd", 0.9, last=k)
    converted = [name for name, m in model.named_modules() if isinstance(m, (CompressedConv2d, CompressedLinear))]
    assert converted == setting.trainable_layers
    # Trainable: the converted layers and the LayerNorms after the first of them, nothing else
    # (the attention weights, class token and position embedding stay frozen).
    trainable_modules = {name.rpartition(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    others = trainable_modules - set(converted)
    assert all(isinstance(model.get_submodule(name), nn.LayerNorm) for name in others)
    assert ("encoder.ln" in others) == (k > 1)  # the final LayerNorm comes before the head
    assert not any(p.requires_grad for name, p in model.named_parameters() if "self_attention" in name)


def test_vit_tiny_needs_an_image_size_its_patches_divide():
    with pytest.raises(ValueError, match="image_size"):
        build_model("vit_tiny", 1, 10)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model("vit_tiny", 1, 10, image_size=30)
    assert _vit(48)(torch.randn(2, 3, 48, 48)).shape == (2, 10)


def test_vit_tiny_defaults_and_bad_image_size(capsys):
    args = compare.parse_args(["--model", "vit_tiny"])
    assert (args.image_size, args.pretrain_epochs, args.epochs) == (32, 60, 6)
    args = compare.parse_args(["--model", "vit_tiny", "--dataset", "cifar10"])
    assert (args.image_size, args.pretrain_epochs, args.epochs) == (32, 30, 5)
    args = compare.parse_args(["--model", "vit_tiny", "--image-size", "48", "--pretrain-epochs", "2"])
    assert (args.image_size, args.pretrain_epochs) == (48, 2)
    # The CNNs keep their dataset's defaults.
    args = compare.parse_args(["--dataset", "cifar10"])
    assert (args.model, args.image_size, args.pretrain_epochs) == ("resnet18", 224, 10)
    assert compare.main(["--model", "vit_tiny", "--image-size", "30"]) == 2
    assert "multiple of 4" in capsys.readouterr().err


def test_checkpointing_the_vit_recomputes_only_its_trainable_blocks_with_vanillas_gradients():
    from conftest import plain_and_checkpointed_step

    regions, grads, held, (plain, wrapped) = plain_and_checkpointed_step(_vit(), 4)
    # The encoder is entered: its frozen blocks stay outside the regions.
    assert regions == ["encoder.layers.encoder_layer_4..encoder_layer_5", "encoder.ln", "heads"]
    assert all(isinstance(wrapped.encoder.layers[i], type(plain.encoder.layers[i])) for i in range(4))
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert 0 < held[1] < held[0]


def test_tiny_vit_comparison(tmp_path):
    methods = ["vanilla", "hosvd", "checkpoint"]
    argv = [
        "--model", "vit_tiny", "--dataset", "digits", "--limit-train", "96", "--limit-test", "64", "--epochs", "1",
        "--pretrain-epochs", "1", "--batch-size", "32", "--eps", "0.8", "--layers", "2", "--methods", *methods,
        "--no-progress", "--no-cache", "--out", str(tmp_path), "--run-name", "vit",
    ]
    assert compare.main(argv) == 0
    with open(tmp_path / "vit" / "results.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert [r["method"] for r in rows] == methods
    by_method = {r["method"]: r for r in rows}
    for r in rows:
        assert r["warnings"] == "" and r["layers"] == "2"
        assert int(r["held_bytes"]) > 0 and float(r["held_mean_bytes"]) > 0
        assert 0.0 <= float(r["top1"]) <= 100.0
    vanilla = int(by_method["vanilla"]["held_bytes"])
    assert int(by_method["hosvd"]["held_bytes"]) < vanilla and float(by_method["hosvd"]["held_vs_vanilla"]) > 1.0
    assert 0 < int(by_method["hosvd"]["layers_peak_bytes"]) < int(by_method["hosvd"]["held_bytes"])
    assert int(by_method["checkpoint"]["held_bytes"]) < vanilla
    assert by_method["vanilla"]["trainable_layers"] == "encoder.layers.encoder_layer_5.mlp.3 heads.head"


def test_tiny_vit_hosvd_all_holds_less_than_hosvd():
    """``hosvd+all`` also decomposes the LayerNorm and GELU inputs and the trainable blocks' q, k, v."""
    import argparse

    from benchmarks._finetune import run_one
    from benchmarks._setup import pretrained_setup

    argv = ["--model", "vit_tiny", "--dataset", "digits", "--limit-train", "96", "--limit-test", "32", "--epochs", "1",
            "--pretrain-epochs", "1", "--batch-size", "32", "--eps", "0.8", "--layers", "4", "--no-progress",
            "--no-cache", "--methods", "hosvd", "hosvd+all"]
    args = compare.parse_args(argv)
    assert isinstance(args, argparse.Namespace)
    assert compare.resolve_methods(args.methods) == ["hosvd", "hosvd+all"]
    setup = pretrained_setup(args, limit_test=args.limit_test, use_cache=False, progress=False)
    plain, everything = (run_one(setup, m, 0.8, 4, args, progress=False) for m in ("hosvd", "hosvd+all"))
    assert everything["method"] == "hosvd+all" and everything["eps"] == 0.8 and everything["layers"] == 4
    assert everything["warnings"] == "" and 0.0 <= everything["top1"] <= 100.0
    assert 0 < everything["held_bytes"] < plain["held_bytes"]
    assert everything["trainable_layers"] == plain["trainable_layers"]
