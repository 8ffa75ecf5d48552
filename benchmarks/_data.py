"""Image classification data for the fine-tuning benchmarks: loading, caching, the setup-B split.

Two sources:

- ``digits``: scikit-learn's handwritten digits (1,797 grey 8x8 images shipped
  inside scikit-learn, no download), a fixed stratified 80/20 train/test split;
- ``cifar10``: CIFAR-10 read from disk, either in torchvision's own layout
  (``cifar-10-batches-py/`` pickles) or in the ImageFolder layout
  (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), told apart by what the
  folder contains. JPEGs are decoded once into a uint8 array cached under
  :func:`cache_dir` (keyed by the folder's path and modification times).

Images are kept as uint8 ``(N, C, H, W)`` arrays. :class:`DeviceImages` moves
them to the training device once and does the float conversion, resizing and
normalisation there, batch by batch, so that a GPU run never waits on a data
loader.

The setup-B split (:func:`split_non_iid`) cuts the training set into two
disjoint, class-skewed halves: the model is pretrained on the first and
fine-tuned on the second.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATASETS = ("digits", "cifar10")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_DATA_ROOT_ENV = "TENSORCOMP_DATA_ROOT"
_CACHE_ENV = "TENSORCOMP_CACHE"
#: CIFAR-10 beside the checkout, where the project's shared data lives.
DEFAULT_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


class DataError(ValueError):
    """A dataset that cannot be found or read; the message says what was expected."""


def cache_dir() -> Path:
    """Where decoded datasets and pretrained checkpoints are cached.

    ``$TENSORCOMP_CACHE`` when set, else ``~/.cache/tensorcomp`` (never inside
    the project).
    """
    root = os.environ.get(_CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tensorcomp"


@dataclass
class ImageSet:
    """A train/test pair of uint8 image arrays.

    Attributes
    ----------
    name : str
        Dataset name.
    train_images, test_images : np.ndarray of uint8, shape (N, C, H, W)
    train_labels, test_labels : np.ndarray of int64, shape (N,)
    classes : tuple of str
    source : str
        Where the images came from (for the run's metadata).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    source: str = ""

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def limited(self, limit_train: int | None, limit_test: int | None, seed: int = 0) -> ImageSet:
        """A random (seeded) subset of at most ``limit_train``/``limit_test`` images."""
        rng = np.random.default_rng(seed)

        def take(images: np.ndarray, labels: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
            if limit is None or limit >= len(labels):
                return images, labels
            keep = np.sort(rng.permutation(len(labels))[:limit])
            return images[keep], labels[keep]

        train = take(self.train_images, self.train_labels, limit_train)
        test = take(self.test_images, self.test_labels, limit_test)
        return ImageSet(self.name, *train, *test, self.classes, self.source)

    def fingerprint(self) -> str:
        """A short hash of the training images and labels (keys the pretraining cache)."""
        digest = hashlib.sha1()
        digest.update(np.ascontiguousarray(self.train_labels).tobytes())
        digest.update(np.ascontiguousarray(self.train_images).tobytes())
        return digest.hexdigest()[:12]


# -- digits ------------------------------------------------------------------


def load_digits_set(test_fraction: float = 0.2) -> ImageSet:
    """scikit-learn's 8x8 digits as uint8 ``(N, 1, 8, 8)``, a fixed stratified train/test split.

    The split does not depend on the benchmark's ``--seed``: every run is
    evaluated on the same test images.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test[members[: round(test_fraction * len(members))]] = True
    return ImageSet(
        "digits",
        images[~test],
        labels[~test],
        images[test],
        labels[test],
        tuple(str(c) for c in range(10)),
        source="sklearn.datasets.load_digits",
    )


# -- CIFAR-10 ----------------------------------------------------------------


def _pickle_dir(root: Path) -> Path | None:
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def _image_folder_dir(root: Path) -> Path | None:
    for candidate in (root, root / "cifar10"):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def cifar10_layout(root: str | os.PathLike[str]) -> tuple[str, Path]:
    """Which CIFAR-10 layout ``root`` holds: ``("pickle", dir)`` or ``("imagefolder", dir)``.

    Recognised, in this order:

    - torchvision's layout: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``
      (or ``root`` being that folder itself);
    - the ImageFolder layout: ``root/train/<class>/*`` and ``root/test/<class>/*``
      (or the same under ``root/cifar10/``).

    Raises
    ------
    DataError
        When ``root`` does not exist or holds neither layout.
    """
    path = Path(root).expanduser()
    expected = (
        "expected torchvision's layout (DIR/cifar-10-batches-py/data_batch_1..5, test_batch) "
        "or the ImageFolder layout (DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg)"
    )
    if not path.is_dir():
        raise DataError(f"--data-root {str(root)!r} is not a folder; {expected}")
    found = _pickle_dir(path)
    if found is not None:
        return "pickle", found
    found = _image_folder_dir(path)
    if found is not None:
        return "imagefolder", found
    raise DataError(f"no CIFAR-10 found in --data-root {str(root)!r}; {expected}")


def _read_pickles(folder: Path) -> ImageSet:
    def load(name: str) -> dict[bytes, Any]:
        with open(folder / name, "rb") as f:
            return pickle.load(f, encoding="bytes")

    def arrays(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [load(n) for n in names]
        images = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(b[b"labels"], dtype=np.int64) for b in batches])
        return images, labels

    train_names = sorted(p.name for p in folder.glob("data_batch_*"))
    train = arrays(train_names)
    test = arrays(["test_batch"])
    classes = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        classes = tuple(n.decode() for n in load("batches.meta")[b"label_names"])
    return ImageSet("cifar10", *train, *test, classes, source=str(folder))


def _read_image_folder_split(folder: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    size = None
    for index, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DataError(f"{folder} has no folder for class {name!r} (classes are taken from the train folder)")
        for file in sorted(p for p in class_dir.iterdir() if p.is_file()):
            with Image.open(file) as image:
                image = image.convert("RGB")
                if size is None:
                    size = image.size
                elif image.size != size:
                    image = image.resize(size, Image.BILINEAR)
                images.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
            labels.append(index)
    if not images:
        raise DataError(f"no images found under {folder}/<class>/")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _read_image_folder(folder: Path) -> ImageSet:
    classes = tuple(sorted(p.name for p in (folder / "train").iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{folder / 'train'} holds no class folders; expected train/<class>/*.jpg")
    train = _read_image_folder_split(folder / "train", classes)
    test = _read_image_folder_split(folder / "test", classes)
    return ImageSet("cifar10", *train, *test, classes, source=str(folder))


def _cache_key(layout: str, folder: Path) -> str:
    parts = [layout, str(folder.resolve())]
    watched = [folder / "train", folder / "test"] if layout == "imagefolder" else sorted(folder.glob("*_batch*"))
    parts += [f"{p.name}:{p.stat().st_mtime_ns}" for p in [folder, *watched] if p.exists()]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def load_cifar10(root: str | os.PathLike[str] | None, *, use_cache: bool = True) -> ImageSet:
    """CIFAR-10 from ``root`` (either layout, see :func:`cifar10_layout`), decoded once and cached.

    ``root=None`` reads ``$TENSORCOMP_DATA_ROOT``.

    Raises
    ------
    DataError
        No root given, or no CIFAR-10 found there.
    """
    if root is None:
        root = os.environ.get(_DATA_ROOT_ENV)
    if not root:
        raise DataError(
            "--dataset cifar10 needs --data-root DIR (or $TENSORCOMP_DATA_ROOT): a folder holding "
            "cifar-10-batches-py/ (what torchvision.datasets.CIFAR10(download=True) writes) or train/<class>/*.jpg and test/"
        )
    layout, folder = cifar10_layout(root)
    cached = cache_dir() / "data" / f"cifar10-{layout}-{_cache_key(layout, folder)}.npz"
    if use_cache and cached.is_file():
        with np.load(cached) as z:
            return ImageSet(
                "cifar10",
                z["train_images"],
                z["train_labels"],
                z["test_images"],
                z["test_labels"],
                tuple(str(c) for c in z["classes"]),
                source=str(folder),
            )
    data = _read_pickles(folder) if layout == "pickle" else _read_image_folder(folder)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + f".{os.getpid()}.tmp.npz")
        np.savez(
            partial,
            train_images=data.train_images,
            train_labels=data.train_labels,
            test_images=data.test_images,
            test_labels=data.test_labels,
            classes=np.asarray(data.classes),
        )
        os.replace(partial, cached)
    return data


def cifar10_root(data_root: str | None) -> str | None:
    """``data_root``, else :data:`DEFAULT_CIFAR` when that folder exists, else ``None``."""
    return data_root or (str(DEFAULT_CIFAR) if DEFAULT_CIFAR.is_dir() else None)


def load_dataset(name: str, data_root: str | None = None, *, use_cache: bool = True) -> ImageSet:
    """Load ``name`` (one of :data:`DATASETS`); ``data_root`` and ``use_cache`` concern CIFAR-10."""
    if name == "digits":
        return load_digits_set()
    if name == "cifar10":
        return load_cifar10(data_root, use_cache=use_cache)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# -- setup B: two disjoint non-iid halves ---------------------------------------


def split_non_iid(labels: np.ndarray, seed: int = 0, low: float = 0.2, high: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Cut a labelled set into two disjoint, class-skewed halves (the paper's setup B).

    Rule: the classes are put in a random order (seeded); the ``i``-th of the
    ``C`` classes sends the fraction ``f_i = low + (high - low) * i / (C - 1)``
    of its images (chosen at random, rounded) to the first half and the rest
    to the second. With the default 0.2..0.8 each half holds about half the
    images, but a class can be four times more frequent in one half than in
    the other: the fine-tuning data follow another label distribution than
    the pretraining data.

    Parameters
    ----------
    labels : np.ndarray of int, shape (N,)
    seed : int
        Seeds the class order and the choice of images.
    low, high : float
        Smallest and largest fraction of a class that goes to the first half.

    Returns
    -------
    first, second : np.ndarray of int64
        Sorted indices into ``labels``; disjoint, together all of ``range(N)``.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1; got low={low}, high={high}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    fractions = np.linspace(low, high, len(classes)) if len(classes) > 1 else np.array([(low + high) / 2])
    first, second = [], []
    for c, fraction in zip(classes, fractions):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = int(round(fraction * len(members)))
        first.append(members[:cut])
        second.append(members[cut:])
    return np.sort(np.concatenate(first)).astype(np.int64), np.sort(np.concatenate(second)).astype(np.int64)


# -- batches on the training device ------------------------------------------------


class DeviceImages:
    """uint8 images held on the training device, served as normalised float batches.

    Parameters
    ----------
    images : np.ndarray of uint8, shape (N, C, H, W)
    labels : np.ndarray of int, shape (N,)
    image_size : int
        Side of the square batches returned (bilinear resize on the device).
    mean, std : sequence of float
        Per-channel statistics in [0, 1] units, subtracted and divided.
    device : str or torch.device
    channels : int, optional
        Channels the model expects; a one-channel dataset is repeated to 3.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: Any,
        channels: int | None = None,
    ) -> None:
        import torch

        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.image_size = int(image_size)
        self.channels = channels or self.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: Any, *, flip: Any = None) -> tuple[Any, Any]:
        """Images ``indices`` as a float batch ``(B, channels, S, S)`` and their labels.

        ``flip`` (a bool tensor of shape ``(B,)``) mirrors the chosen images left-right.
        """
        import torch
        import torch.nn.functional as F

        index = torch.as_tensor(indices, device=self.device)
        x = self.images.index_select(0, index).float().div_(255.0)
        if flip is not None:
            flip = torch.as_tensor(flip, device=self.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        return x.contiguous(), self.labels.index_select(0, index)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 ``(N, C, H, W)`` images, in [0, 1] units."""
    channels = images.shape[1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    # In chunks: a float copy of all of CIFAR-10 would take over a gigabyte.
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = len(images) * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


def load_image_batch(data: ImageSet, n: int, size: int, device: Any) -> tuple[Any, Any, str]:
    """``n`` real training images of ``data`` (seeded choice) at ``size`` x ``size``, normalised, on ``device``.

    Returns the images (three channels), their labels and where they came from.
    """
    index = np.random.default_rng(0).permutation(len(data.train_labels))[:n]
    mean, std = channel_stats(data.train_images[index])
    images = DeviceImages(data.train_images[index], data.train_labels[index], size, mean, std, device, channels=3)
    x, y = images.batch(np.arange(len(index)))
    return x, y, f"{data.name} ({data.source})"
