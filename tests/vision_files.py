"""Tiny vision datasets written in the real on-disk formats, so loaders are tested offline."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def write_cifar(root: Path, hundred: bool = False, per_file: int = 20) -> None:
    rng = np.random.default_rng(1)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    key = b"fine_labels" if hundred else b"labels"
    names = ["train", "test"] if hundred else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        d = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
             key: list(np.arange(per_file) % (100 if hundred else 10))}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


def write_svhn(root: Path, n: int = 30) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    (root / "svhn").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        savemat(root / "svhn" / f"{split}_32x32.mat",
                {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                 "y": (np.arange(n) % 10 + 1).reshape(-1, 1)})  # SVHN stores digit 0 as label 10


def write_tinyimagenet(root: Path, classes=("n01443537", "n01629819"), per_class: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    base = root / "tiny-imagenet-200"
    for c in classes:
        (base / "train" / c / "images").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                base / "train" / c / "images" / f"{c}_{i}.JPEG")
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(4):
        name = f"val_{i}.JPEG"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" / name)
        lines.append(f"{name}\t{classes[i % len(classes)]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
