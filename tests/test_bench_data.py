"""Data of the fine-tuning benchmarks: the setup-B split, both CIFAR-10 layouts, device batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks._data import (  # noqa: E402
    DataError,
    DeviceImages,
    channel_stats,
    cifar10_layout,
    load_cifar10,
    load_digits_set,
    split_non_iid,
)

SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


# -- the setup-B split -----------------------------------------------------------------


def test_split_is_disjoint_and_covering():
    labels = np.repeat(np.arange(10), 50)
    first, second = split_non_iid(labels, seed=3)
    assert np.intersect1d(first, second).size == 0
    assert np.array_equal(np.sort(np.concatenate([first, second])), np.arange(len(labels)))


def test_split_is_class_skewed_by_the_documented_rule():
    labels = np.repeat(np.arange(10), 100)
    first, _ = split_non_iid(labels, seed=0)
    fractions = np.bincount(labels[first], minlength=10) / 100
    # Each class sends one of 0.2, 0.267, ..., 0.8 of its images to the first half.
    assert np.allclose(np.sort(fractions), np.linspace(0.2, 0.8, 10), atol=0.006)
    # Non-iid: the label distributions of the two halves differ.
    assert fractions.max() / fractions.min() == pytest.approx(4.0, rel=0.05)


def test_split_depends_on_the_seed_only():
    labels = np.repeat(np.arange(5), 40)
    a = split_non_iid(labels, seed=1)
    b = split_non_iid(labels, seed=1)
    c = split_non_iid(labels, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_digits_are_embedded_and_split_into_train_and_test():
    data = load_digits_set()
    assert data.train_images.dtype == np.uint8 and data.train_images.shape[1:] == (1, 8, 8)
    assert len(data.train_labels) + len(data.test_labels) == 1797
    assert set(np.unique(data.test_labels)) == set(range(10))
    assert data.train_images.max() == 255


def test_limited_takes_a_seeded_subset():
    data = load_digits_set()
    small = data.limited(100, 20, seed=0)
    assert small.train_images.shape[0] == 100 and small.test_images.shape[0] == 20
    assert np.array_equal(small.train_labels, data.limited(100, 20, seed=0).train_labels)
    assert small.fingerprint() != data.fingerprint()


# -- CIFAR-10 layouts ------------------------------------------------------------------


def _fake_image_folder(root: Path, classes=("cat", "dog"), per_class=2) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:04d}.png")


def _fake_pickles(folder: Path, per_batch=3) -> np.ndarray:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(range(per_batch))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird"]}, f)
    return first


def test_image_folder_layout_is_detected_and_decoded(tmp_path):
    _fake_image_folder(tmp_path / "data")
    layout, folder = cifar10_layout(tmp_path / "data")
    assert layout == "imagefolder" and folder == tmp_path / "data"
    data = load_cifar10(tmp_path / "data")
    assert data.classes == ("cat", "dog")
    assert data.train_images.shape == (4, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.train_labels.tolist() == [0, 0, 1, 1]
    # Decoded once: the second load reads the cache, with the same pixels.
    cached = list((tmp_path / "cache" / "data").glob("cifar10-imagefolder-*.npz"))
    assert len(cached) == 1
    again = load_cifar10(tmp_path / "data")
    assert np.array_equal(again.test_images, data.test_images)


def test_pickle_layout_is_detected_and_read(tmp_path):
    first = _fake_pickles(tmp_path / "root" / "cifar-10-batches-py")
    layout, folder = cifar10_layout(tmp_path / "root")
    assert layout == "pickle" and folder.name == "cifar-10-batches-py"
    data = load_cifar10(tmp_path / "root")
    assert data.train_images.shape == (15, 3, 32, 32) and data.test_images.shape == (3, 3, 32, 32)
    assert data.classes == ("airplane", "automobile", "bird")
    # A row is 1024 red, then green, then blue values, row-major.
    assert np.array_equal(data.train_images[0, 1].reshape(-1), first[0, 1024:2048])
    # The batches folder itself is accepted too.
    assert cifar10_layout(folder)[0] == "pickle"


def test_neither_layout_names_both(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cifar-10-batches-py.*ImageFolder"):
        cifar10_layout(tmp_path / "empty")
    with pytest.raises(DataError, match="not a folder"):
        load_cifar10(tmp_path / "missing")
    with pytest.raises(DataError, match="--data-root"):
        load_cifar10(None)


@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason=f"CIFAR-10 not found at {SHARED_CIFAR10}")
def test_shared_cifar10_is_an_image_folder():
    from PIL import Image

    layout, folder = cifar10_layout(SHARED_CIFAR10)
    assert layout == "imagefolder"
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    assert classes[0] == "airplane" and len(classes) == 10
    sample = sorted((folder / "test" / "frog").iterdir())[0]
    with Image.open(sample) as image:
        assert image.size == (32, 32)


# -- batches on the device ------------------------------------------------------------


def test_device_batches_are_resized_normalised_and_flipped():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 1, 8, 8), dtype=np.uint8)
    mean, std = channel_stats(images)
    data = DeviceImages(images, np.arange(6), 16, mean, std, "cpu", channels=3)
    x, y = data.batch([0, 2, 4])
    assert x.shape == (3, 3, 16, 16) and y.tolist() == [0, 2, 4]
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated to three channels
    # At the stored size (no smoothing by the resize) the set is standardised exactly.
    same_size = DeviceImages(images, np.arange(6), 8, mean, std, "cpu")
    full, _ = same_size.batch(range(6))
    assert abs(float(full.mean())) < 1e-5 and float(full.std(unbiased=False)) == pytest.approx(1.0, rel=1e-4)
    flipped, _ = data.batch([0, 2, 4], flip=torch.tensor([True, False, False]))
    assert torch.allclose(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
