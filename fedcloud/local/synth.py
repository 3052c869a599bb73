r"""Synthetic datasets in exactly the real layouts, partitioned per participant (IID or Dirichlet).

``covid`` writes chest-X-ray-like PNG folders, ``cifar`` CIFAR-10 python batches, for the real
loaders (``fl/app/data.py``): ``python -m fedcloud.local.synth covid OUT --participants a,b,c``.
See fl/README.md, "Synthetic data".
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fedcloud.core.errors import ConfigError
from fedcloud.core.files import write_atomic
from fl.app.data import CIFAR_CLASSES, CIFAR_DIR, CIFAR_TEST_BATCH, COVID_CLASSES

KINDS = ("covid", "cifar")
PARTITION_TRIES = 100


def partition(labels: np.ndarray, parts: int, alpha: float | None,
              rng: np.random.Generator) -> list[np.ndarray]:
    """Split sample indices across ``parts`` participants, IID or Dirichlet(alpha) per class.

    Every participant gets at least one sample when there are at least ``parts`` samples
    (Dirichlet draws are repeated until that holds, as in the usual non-IID benchmarks).

    Returns:
        One sorted index array per participant; together they cover every index once.
    """
    n = int(labels.shape[0])
    if alpha is None:
        order = rng.permutation(n)
        return [np.sort(chunk) for chunk in np.array_split(order, parts)]
    if alpha <= 0:
        raise ConfigError(f"Dirichlet alpha must be > 0, got {alpha}.",
                          "use e.g. 0.5 (skewed) to 100 (near IID), or omit it for IID.")
    best: list[np.ndarray] = []
    for _ in range(PARTITION_TRIES):
        shares: list[list[int]] = [[] for _ in range(parts)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            props = rng.dirichlet(np.full(parts, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for part, chunk in enumerate(np.split(idx, cuts)):
                shares[part].extend(chunk.tolist())
        best = [np.sort(np.asarray(s, dtype=np.int64)) for s in shares]
        if n < parts or min(len(s) for s in best) > 0:
            break
    return best


def _covid_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 0.75, np.float32)
    dx, dy = rng.uniform(-0.04, 0.04, 2)
    lungs = np.zeros_like(img, dtype=bool)
    for cx in (0.32, 0.68):
        rx, ry = rng.uniform(0.13, 0.17), rng.uniform(0.28, 0.34)
        lungs |= ((xx - cx - dx) / rx) ** 2 + ((yy - 0.5 - dy) / ry) ** 2 <= 1.0
    img[lungs] = 0.22
    if label == 0:  # Covid: diffuse ground-glass opacities, mostly in the lower lungs
        for _ in range(int(rng.integers(3, 6))):
            cx = rng.choice([0.32, 0.68]) + rng.uniform(-0.06, 0.06) + dx
            cy = rng.uniform(0.5, 0.75) + dy
            r = rng.uniform(0.08, 0.13)
            blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
            img += 0.6 * blob * lungs
    elif label == 2:  # Viral Pneumonia: coarse streaky opacities across the lungs
        angle = rng.uniform(0.6, 1.0)
        freq = rng.uniform(4, 6)
        phase = rng.uniform(0, 2 * np.pi)
        streaks = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        img += 0.5 * (streaks > 0.3) * lungs
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _cifar_image(label: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32
    hue = label / 10.0
    colour = np.array([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)], np.float32)
    colour = 0.5 + 0.35 * colour
    angle = np.pi * (label % 5) / 5
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + label % 2 * 2)
                                 * (xx * np.cos(angle) + yy * np.sin(angle))
                                 + rng.uniform(0, 2 * np.pi))
    img = colour[:, None, None] * (0.6 + 0.4 * stripes[None])
    img += rng.normal(0, 0.06, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    write_atomic(path, buf.getvalue(), 0o644)


def generate(kind: str, out_dir: Path, participants: Sequence[str], train_per_participant: int,
             test_per_participant: int, image_size: int = 64, alpha: float | None = None,
             seed: int = 0) -> dict[str, Path]:
    """Write a synthetic dataset, one data directory per participant.

    Args:
        kind: ``covid`` or ``cifar`` (CIFAR images are always 32 x 32).
        out_dir: Root; participant ``p`` gets ``out_dir/p``.
        participants: Participant names.
        train_per_participant: Mean training images per participant (total = this x count).
        test_per_participant: Mean test images per participant.
        image_size: Side of the covid images in pixels.
        alpha: ``None`` for IID, else the Dirichlet concentration of the non-IID split.
        seed: Seed of everything.

    Returns:
        Participant name -> its data directory.

    Raises:
        ConfigError: Unknown kind, no participants, or sizes out of range.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown synthetic dataset '{kind}'.", f"use one of {KINDS}.")
    if not participants:
        raise ConfigError("no participants to generate data for.", "name at least one.")
    if train_per_participant < 1 or test_per_participant < 1 or image_size < 8:
        raise ConfigError("synthetic dataset sizes must be >= 1 image and >= 8 pixels.",
                          "raise --train/--test/--image-size.")
    rng = np.random.default_rng(seed)
    classes = len(COVID_CLASSES) if kind == "covid" else len(CIFAR_CLASSES)
    dirs = {p: Path(out_dir) / p for p in participants}
    counts: dict[str, dict[str, list[int]]] = {p: {} for p in participants}
    for split, per in (("train", train_per_participant), ("test", test_per_participant)):
        labels = _balanced_labels(per * len(participants), classes, rng)
        shares = partition(labels, len(participants), alpha, rng)
        for name, idx in zip(participants, shares, strict=True):
            ys = labels[idx]
            counts[name][split] = np.bincount(ys, minlength=classes).tolist()
            if kind == "covid":
                for i, y in enumerate(ys):
                    _write_png(dirs[name] / split / COVID_CLASSES[int(y)] / f"{i:05d}.png",
                               _covid_image(int(y), image_size, rng))
                for cls in COVID_CLASSES:  # the loader expects every class folder
                    (dirs[name] / split / cls).mkdir(parents=True, exist_ok=True)
            else:
                data = np.stack([_cifar_image(int(y), rng).reshape(-1) for y in ys]) if len(ys) \
                    else np.zeros((0, 3072), np.uint8)
                batch = {b"batch_label": f"synthetic {split}".encode(), b"labels": ys.tolist(),
                         b"data": data,
                         b"filenames": [f"{i:05d}.png".encode() for i in range(len(ys))]}
                file = CIFAR_TEST_BATCH if split == "test" else "data_batch_1"
                write_atomic(dirs[name] / CIFAR_DIR / file, pickle.dumps(batch), 0o644)
    if kind == "cifar":
        meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
        for name in participants:
            write_atomic(dirs[name] / CIFAR_DIR / "batches.meta", pickle.dumps(meta), 0o644)
    for name in participants:
        summary = {"kind": kind, "alpha": alpha, "seed": seed, "class_counts": counts[name]}
        write_atomic(dirs[name] / "synthetic.json", json.dumps(summary, indent=1).encode(), 0o644)
    return dirs


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m fedcloud.local.synth {covid,cifar} OUT --participants a,b ...``."""
    parser = argparse.ArgumentParser(prog="python -m fedcloud.local.synth",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--participants", default="p1,p2,p3",
                        help="comma-separated participant names")
    parser.add_argument("--train", type=int, default=120, help="train images per participant")
    parser.add_argument("--test", type=int, default=30, help="test images per participant")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=None,
                        help="Dirichlet alpha for a non-IID split (omit for IID)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [p.strip() for p in args.participants.split(",") if p.strip()]
    dirs = generate(args.kind, args.out, names, args.train, args.test, args.image_size,
                    args.alpha, args.seed)
    for name, path in dirs.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
