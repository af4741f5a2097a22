"""Image classification sets: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN, TinyImageNet.

Downloads go through torchvision, and only when the spec sets ``task.download = true``; reading
uses the files' own on-disk formats (IDX, CIFAR pickles, SVHN .mat, TinyImageNet folders) so a
zoo can be built from files placed under the data root by hand, offline.
"""

from __future__ import annotations

import gzip
import pickle
from functools import partial
from pathlib import Path

import numpy as np

from .base import Task, TaskData, fixed


class DatasetMissing(RuntimeError):
    """A dataset is not under the data root and downloading was not allowed."""


def _idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _read_mnist_like(root: Path, folder: str):
    raw = root / folder / "raw"
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find(raw, n) for n in names]
    if any(p is None for p in paths):
        return None
    xtr, ytr, xte, yte = (_idx(p) for p in paths)
    return xtr[:, None], ytr, xte[:, None], yte


def _read_cifar(root: Path, folder: str, train_files: list[str], test_file: str, label_key: str):
    base = root / folder
    if not all((base / f).exists() for f in [*train_files, test_file]):
        return None

    def read(name):
        with open(base / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        return d[b"data"].reshape(-1, 3, 32, 32), np.asarray(d[label_key.encode()])

    parts = [read(f) for f in train_files]
    xte, yte = read(test_file)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte


def _read_svhn(root: Path):
    from scipy.io import loadmat

    paths = [root / "svhn" / "train_32x32.mat", root / "svhn" / "test_32x32.mat"]
    if not all(p.exists() for p in paths):
        return None
    out = []
    for p in paths:
        m = loadmat(p)
        out += [m["X"].transpose(3, 2, 0, 1), m["y"].reshape(-1).astype(np.int64) % 10]  # label 10 is digit 0
    return tuple(out)


def _read_tinyimagenet(root: Path):
    from PIL import Image

    base = root / "tiny-imagenet-200"
    if not (base / "train").is_dir() or not (base / "val" / "val_annotations.txt").exists():
        return None
    classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}

    def load(path):
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)

    xtr, ytr = [], []
    for c in classes:
        for img in sorted((base / "train" / c / "images").glob("*.JPEG")):
            xtr.append(load(img))
            ytr.append(index[c])
    xte, yte = [], []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        xte.append(load(base / "val" / "images" / name))
        yte.append(index[wnid])
    return np.stack(xtr), np.array(ytr), np.stack(xte), np.array(yte)


READERS = {  # name -> (reader, classes, sample shape)
    "mnist": (lambda r: _read_mnist_like(r, "MNIST"), 10, (1, 28, 28)),
    "fashion_mnist": (lambda r: _read_mnist_like(r, "FashionMNIST"), 10, (1, 28, 28)),
    "cifar10": (lambda r: _read_cifar(r, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                                      "test_batch", "labels"), 10, (3, 32, 32)),
    "cifar100": (lambda r: _read_cifar(r, "cifar-100-python", ["train"], "test", "fine_labels"), 100, (3, 32, 32)),
    "svhn": (_read_svhn, 10, (3, 32, 32)),
    "tinyimagenet": (_read_tinyimagenet, 200, (3, 64, 64)),
}


def _download(name: str, root: Path) -> None:
    from torchvision import datasets

    if name == "tinyimagenet":
        raise DatasetMissing("tinyimagenet is read from a local folder: unpack tiny-imagenet-200 under the data root")
    for train in (True, False):
        if name == "svhn":
            datasets.SVHN(root / "svhn", split="train" if train else "test", download=True)
        else:
            cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
                   "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
            cls(root, train=train, download=True)


def load(name: str, n_train: int, n_test: int, data_seed: int, data_root: Path, download: bool = False,
         **_) -> TaskData:
    """Read (downloading first if allowed) and normalise per channel with training statistics."""
    reader, n_classes, _ = READERS[name]
    arrays = reader(Path(data_root))
    if arrays is None:
        if not download:
            raise DatasetMissing(f"dataset {name} is not under {data_root}; set task.download=true "
                                 "(needs network) or place its files there (see zoo/generators/tasks/vision.py)")
        try:
            _download(name, Path(data_root))
        except (OSError, RuntimeError) as e:
            raise DatasetMissing(f"could not download {name} into {data_root}: {e}") from None
        arrays = reader(Path(data_root))
    xtr, ytr, xte, yte = arrays
    rng = np.random.default_rng(data_seed)
    tr = rng.permutation(len(ytr))[:n_train]
    te = rng.permutation(len(yte))[:n_test]
    xtr, xte = xtr[tr].astype(np.float32) / 255.0, xte[te].astype(np.float32) / 255.0
    mean = xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = xtr.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return TaskData(name, (xtr - mean) / std, ytr[tr].astype(np.int64), (xte - mean) / std,
                    yte[te].astype(np.int64), n_classes=n_classes)


TASKS = tuple(Task(name, "classification", load=partial(load, name), shape=fixed(sample_shape, classes),
                   options=("download",))
              for name, (_, classes, sample_shape) in READERS.items())
