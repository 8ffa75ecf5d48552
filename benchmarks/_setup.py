"""The paper's setup B from the command line: the options every fine-tuning benchmark shares, their checks, the run.

A script adds the options with :func:`add_setup_arguments`, parses its
command line with :func:`parse_setup_arguments` (which checks them and fills
the per-dataset defaults: :func:`check_setup_arguments`), and gets the split
data and the pretrained model from :func:`pretrained_setup`. The
fine-tuning schedule and the ``--layers`` values are read the same way in
every script (:func:`finetune_schedule`, :func:`check_finetune_arguments`,
:func:`resolve_layers`, :func:`resolve_layer`); :func:`setup_arguments`
builds the options for a script that runs setup B on settings of its own,
and :func:`resolve_images` picks the images of the scripts that time single
batches.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from pathlib import Path

from ._cli import Parser, UsageError, check_device, check_positive, load_images, split_names

#: Per-dataset defaults of the options left ``None`` by :func:`add_setup_arguments` (and of ``--epochs``).
DEFAULTS = {
    "digits": {"model": "smallcnn", "image_size": 32, "epochs": 6, "pretrain_epochs": 20},
    "cifar10": {"model": "resnet18", "image_size": 224, "epochs": 5, "pretrain_epochs": 10},
}
#: Where a model departs from :data:`DEFAULTS`, per dataset. ``vit_tiny`` runs at 32x32 on either dataset (its
#: 4x4 patches then give 64 tokens; at 224 it would be 3136 tokens and its attention too costly to be practical on
#: a CPU) and pretrains three times as many epochs as the dataset's CNN: a vision transformer trained from random
#: initialisation has no convolutional prior and needs more steps to fit the first half. Its fine-tuning schedule
#: (``--epochs``, ``--lr``) is the dataset's, the same for every model.
MODEL_DEFAULTS = {
    "vit_tiny": {
        "digits": {"image_size": 32, "pretrain_epochs": 3 * DEFAULTS["digits"]["pretrain_epochs"]},
        "cifar10": {"image_size": 32, "pretrain_epochs": 3 * DEFAULTS["cifar10"]["pretrain_epochs"]},
    },
}
#: The options :func:`check_setup_arguments` fills from :data:`DEFAULTS` when a script does not say which.
SETUP_DEFAULTED = ("model", "image_size", "pretrain_epochs")


def default_value(dataset: str, model: str | None, name: str) -> Any:
    """The default of option ``name`` for ``dataset`` and ``model``: :data:`MODEL_DEFAULTS` where it has one, else :data:`DEFAULTS`."""
    return MODEL_DEFAULTS.get(model or "", {}).get(dataset, {}).get(name, DEFAULTS[dataset][name])


def finetune_parser(
    prog: str, description: str, *, out: Path, eps: Sequence[float], eps_range: str = "(0, 1]", layers: str = "all"
) -> Parser:
    """The parser of a benchmark that fine-tunes trailing layers of a setup-B model at several ``eps``.

    It has ``--eps`` (energy fractions in ``eps_range``), ``--layers`` (k or
    'all', default ``layers``), the setup options of
    :func:`add_setup_arguments` and ``--out`` (default ``out``); the script
    adds its own options after these.
    """
    parser = Parser(prog=prog, description=description)
    add = parser.add_argument
    add("--eps", nargs="+", type=float, default=list(eps), help=f"energy fractions kept, in {eps_range}")
    add("--layers", default=layers, help="number k of trailing conv/linear layers fine-tuned and compressed, or 'all'")
    add_setup_arguments(parser)
    add("--out", type=Path, default=out, help=f"results folder (default: {out.relative_to(out.parents[2])} of this checkout)")
    return parser


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a setup-B run that every fine-tuning benchmark shares: data, model, pretraining, seed, device.

    ``None`` defaults are filled per dataset by :func:`check_setup_arguments`.
    """
    from ._models import MODELS

    add = parser.add_argument
    add("--dataset", default="digits", help="digits (embedded) or cifar10")
    add("--data-root", default=None, metavar="DIR",
        help="CIFAR-10 folder: cifar-10-batches-py/ (torchvision's layout) or train/<class>/*.jpg + test/ "
        "(ImageFolder layout); default $TENSORCOMP_DATA_ROOT")
    add("--model", default=None, help=f"one of {', '.join(MODELS)} (default: smallcnn for digits, resnet18 for cifar10)")
    add("--image-size", type=int, default=None,
        help="side of the square input images (default: 32 for digits, 224 for cifar10; 32 for vit_tiny on either)")
    add("--pretrain-epochs", type=int, default=None,
        help="pretraining epochs on the first half (default: per dataset, three times as many for vit_tiny)")
    add("--batch-size", type=int, default=128, help="batch size of pretraining and fine-tuning")
    add("--seed", type=int, default=0, help="seed of the split, the initialisation and the data order")
    add("--device", default="cpu", help="cpu or cuda")
    add("--limit-train", type=int, default=None, metavar="N", help="use N training images (seeded random subset), for quick runs")


def check_setup_arguments(args: argparse.Namespace, names: Sequence[str] = SETUP_DEFAULTED) -> None:
    """Check the options of :func:`add_setup_arguments`, filling those in ``names`` left unset from the dataset's defaults."""
    from ._data import DATASETS
    from ._models import MODELS

    if args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    for name in names:
        if getattr(args, name) is None:
            setattr(args, name, default_value(args.dataset, args.model, name))
    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; choose one of {', '.join(MODELS)}")
    check_positive(
        pretrain_epochs=args.pretrain_epochs, batch_size=args.batch_size, image_size=args.image_size,
        limit_train=args.limit_train,
    )
    if args.image_size is not None and args.image_size < 8:
        raise UsageError(f"--image-size must be at least 8; got {args.image_size}")
    if args.model == "vit_tiny" and args.image_size is not None and args.image_size % 4:
        raise UsageError(f"--model vit_tiny cuts images into 4x4 patches: --image-size must be a multiple of 4; got {args.image_size}")
    check_device(args.device)


def parse_setup_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, names: Sequence[str] = SETUP_DEFAULTED
) -> argparse.Namespace:
    """A setup-B script's command line, parsed, with the setup options checked and ``names`` filled (:func:`check_setup_arguments`)."""
    args = parser.parse_args(argv)
    check_setup_arguments(args, names)
    return args


def setup_arguments(**values: Any) -> argparse.Namespace:
    """The setup options as a script's command line would give them: ``values`` set, the rest at their defaults.

    For a script that runs setup B on settings of its own rather than on its
    command line's; the per-dataset defaults are filled as
    :func:`check_setup_arguments` fills them, nothing is checked.
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_setup_arguments(parser)
    args = parser.parse_args([])
    for name, value in values.items():
        if not hasattr(args, name):
            raise TypeError(f"setup_arguments() got an unknown option {name!r}")
        setattr(args, name, value)
    for name in SETUP_DEFAULTED:
        if getattr(args, name) is None:
            setattr(args, name, default_value(args.dataset, args.model, name))
    return args


def pretrained_setup(
    args: argparse.Namespace, *, limit_test: int | None = None, use_cache: bool = True, progress: bool = False
) -> Any:
    """Load the data named by the setup options, split it (setup B) and pretrain on the first half (cached)."""
    from ._training import setup_b

    images = load_images(args.dataset, args.data_root, use_cache=use_cache)
    images = images.limited(args.limit_train, limit_test, seed=args.seed)
    if len(images.train_labels) < 4:
        raise UsageError(f"--limit-train {args.limit_train} leaves too few training images to split")
    return setup_b(
        images, args.model, image_size=args.image_size, pretrain_epochs=args.pretrain_epochs,
        batch_size=args.batch_size, seed=args.seed, device=args.device, use_cache=use_cache, progress=progress,
    )


def finetune_schedule(args: argparse.Namespace, seed: int | None = None) -> Any:
    """The fine-tuning schedule of ``--epochs``, ``--lr`` and ``--batch-size`` (seed: ``--seed`` unless given).

    SGD without momentum, weight decay 1e-4, gradients clipped at L2 norm 2.0;
    images mirrored at random except the digits (mirrored digits are other symbols).
    """
    from ._training import Schedule

    return Schedule(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.0, weight_decay=1e-4, clip=2.0,
        seed=args.seed if seed is None else seed, flip=args.dataset != "digits",
    )


def check_finetune_arguments(args: argparse.Namespace) -> None:
    """``--epochs`` and ``--lr``, the options :func:`finetune_schedule` reads beside the setup's, must be positive."""
    check_positive(epochs=args.epochs)
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive; got {args.lr}")


def _layer_count(value: str, num_candidates: int | None, expected: str) -> int | None:
    if value == "all":
        return num_candidates
    try:
        k = int(value)
    except ValueError:
        raise UsageError(f"--layers takes {expected} or 'all'; got {value!r}") from None
    if num_candidates is not None and not 1 <= k <= num_candidates:
        raise UsageError(f"--layers {k}: the model has {num_candidates} conv/linear layers; choose 1..{num_candidates} or 'all'")
    return k


def resolve_layers(values: Sequence[str], num_candidates: int) -> list[int]:
    """The distinct numbers of trailing conv/linear layers an ``nargs="+"`` ``--layers`` names ('all': every one)."""
    out: list[int] = []
    for value in split_names(values):
        k = _layer_count(value, num_candidates, "positive integers")
        if k not in out:
            out.append(k)
    if not out:
        raise UsageError("--layers needs at least one value")
    return out


def resolve_layer(value: str, num_candidates: int | None = None) -> int | None:
    """The number of trailing conv/linear layers one ``--layers`` value names.

    ``'all'`` is ``num_candidates``; with ``num_candidates=None`` (the model
    not built yet) ``'all'`` is ``None`` and the range is not checked.
    """
    return _layer_count(value, num_candidates, "a positive integer")


def resolve_images(dataset: str, data_root: str | None) -> Any:
    """The dataset single timed batches come from (an :class:`~benchmarks._data.ImageSet`).

    ``dataset="auto"`` takes CIFAR-10 from ``data_root`` or the shared folder
    when there is one (:func:`benchmarks._data.cifar10_root`), else the
    embedded digits.
    """
    from ._data import cifar10_root

    root = cifar10_root(data_root)
    if dataset == "auto":
        dataset = "cifar10" if root else "digits"
    return load_images(dataset, root)
