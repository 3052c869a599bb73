"""Loaders for the two datasets' real on-disk layouts, with Pillow and numpy (no torchvision).

* Kaggle "Covid-19 Image Dataset": ``<dir>/train/`` and ``<dir>/test/``, each holding the image
  folders ``Covid/``, ``Normal/``, ``Viral Pneumonia/`` (PNG/JPEG of any size and mode). Images
  are read as grayscale and resized to ``image_size`` square.
* CIFAR-10 "python version": ``<dir>/cifar-10-batches-py/`` (or ``<dir>`` itself) with the
  pickled ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (``b"data"``: N x 3072 uint8,
  channel-major; ``b"labels"``).

Both decode to uint8 ``N x C x H x W`` and int64 labels (``fl/app/cache.py`` keeps that per
node); :func:`scaled` gives the model's float32 input in [-1, 1]. It travels in the FAB:
no Flower, SSH or project configuration import.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fl.app.errors import AppError

COVID_CLASSES: tuple[str, ...] = ("Covid", "Normal", "Viral Pneumonia")
CIFAR_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                  "horse", "ship", "truck")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Split:
    """One split of a participant's data, ready for the model."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise AppError(f"unknown data split '{split}'.", f"use one of {SPLITS}.")


def load_covid(data_dir: Path, split: str, image_size: int) -> Split:
    """Load one split of the Kaggle Covid-19 layout as grayscale uint8 ``N x 1 x S x S``.

    Raises:
        AppError: The split or a class folder is missing, or an image cannot be read.
    """
    _check_split(split)
    root = Path(data_dir) / split
    if not root.is_dir():
        raise AppError(
            f"{root} does not exist (expected the Kaggle Covid-19 layout: "
            f"{split}/{{{', '.join(COVID_CLASSES)}}}/).",
            "point the participant's dataDir at the dataset root, or generate one with "
            "'python -m fedcloud.local.synth covid DIR'.",
        )
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, name in enumerate(COVID_CLASSES):
        folder = root / name
        if not folder.is_dir():
            raise AppError(f"class folder {folder} is missing.",
                           f"create {folder} with that class's images (it may be empty).")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    gray = img.convert("L").resize((image_size, image_size),
                                                   Image.Resampling.BILINEAR)
                    xs.append(np.asarray(gray, dtype=np.uint8))
            except (OSError, ValueError) as exc:
                raise AppError(f"cannot read image {path}: {exc}.",
                               "remove or replace the corrupt file.") from None
            ys.append(label)
    if not xs:
        return Split(np.zeros((0, 1, image_size, image_size), np.uint8), np.zeros(0, np.int64))
    return Split(np.stack(xs)[:, None, :, :], np.asarray(ys, dtype=np.int64))


def cifar_root(data_dir: Path) -> Path:
    """Return the directory that holds the CIFAR-10 batch files."""
    data_dir = Path(data_dir)
    nested = data_dir / CIFAR_DIR
    return nested if nested.is_dir() else data_dir


def load_cifar(data_dir: Path, split: str) -> Split:
    """Load one split of CIFAR-10's python batches as RGB uint8 ``N x 3 x 32 x 32``.

    Raises:
        AppError: A batch file is missing or is not a CIFAR-10 batch.
    """
    _check_split(split)
    root = cifar_root(data_dir)
    names = CIFAR_TRAIN_BATCHES if split == "train" else (CIFAR_TEST_BATCH,)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for name in names:
        path = root / name
        if not path.exists():
            if split == "train" and name != CIFAR_TRAIN_BATCHES[0]:
                continue  # a participant's share may hold fewer than five batches
            raise AppError(f"{path} does not exist (expected CIFAR-10's python batches).",
                           f"put {CIFAR_DIR}/ (data_batch_1.., test_batch) in the dataDir.")
        try:
            with open(path, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, KeyError, TypeError, EOFError) as exc:
            raise AppError(f"{path} is not a CIFAR-10 python batch ({exc}).",
                           "download the 'python version' of CIFAR-10 again.") from None
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
            raise AppError(f"{path} has data of shape {data.shape} for {labels.shape[0]} "
                           "labels; CIFAR-10 rows are 3072 bytes.",
                           "download the 'python version' of CIFAR-10 again.")
        xs.append(data)
        ys.append(labels)
    return Split(np.concatenate(xs).reshape(-1, 3, 32, 32), np.concatenate(ys))


def load_raw(model: str, data_dir: Path, split: str, image_size: int) -> Split:
    """Load the split of the model's dataset as decoded uint8 pixels (covid_cnn / cifar_cnn)."""
    if model == "covid_cnn":
        return load_covid(data_dir, split, image_size)
    if model == "cifar_cnn":
        return load_cifar(data_dir, split)
    raise AppError(f"no dataset loader for model '{model}'.", "use covid_cnn or cifar_cnn.")


def source_files(model: str, data_dir: Path, split: str) -> list[Path]:
    """The files a split is decoded from (what a cached copy must be checked against)."""
    if model == "cifar_cnn":
        root = cifar_root(data_dir)
        names = CIFAR_TRAIN_BATCHES if split == "train" else (CIFAR_TEST_BATCH,)
        return [root / n for n in names if (root / n).exists()]
    root = Path(data_dir) / split
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def scaled(raw: Split) -> Split:
    """The model's input: float32 pixels scaled to [-1, 1]."""
    return Split(raw.x.astype(np.float32) / 127.5 - 1.0, raw.y)


def load_split(model: str, data_dir: Path, split: str, image_size: int) -> Split:
    """Load the split of the dataset the model is trained on, ready for the model."""
    return scaled(load_raw(model, data_dir, split, image_size))
