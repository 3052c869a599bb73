"""The per-node cache of decoded data: same split back, a changed file decodes again."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedcloud.local.synth import generate
from fl.app.cache import cache_key, load_split_cached
from fl.app.data import load_split


def test_cached_split_equals_the_decoded_one_and_follows_file_changes(tmp_path: Path) -> None:
    data = generate("covid", tmp_path / "data", ["a"], 6, 3, image_size=16, seed=1)["a"]
    cache = tmp_path / "cache"
    first = load_split_cached("covid_cnn", data, "train", 16, cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and (files[0].stat().st_mode & 0o777) == 0o600
    again = load_split_cached("covid_cnn", data, "train", 16, cache)
    direct = load_split("covid_cnn", data, "train", 16)
    assert np.array_equal(first.x, direct.x) and np.array_equal(again.x, direct.x)
    assert np.array_equal(again.y, direct.y)
    key = cache_key("covid_cnn", data, "train", 16)
    assert key != cache_key("covid_cnn", data, "train", 24)  # another size, another entry
    image = next((data / "train" / "Covid").iterdir())
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache_key("covid_cnn", data, "train", 16) != key
    files[0].write_bytes(b"corrupt")  # an unreadable entry is decoded again, not trusted
    assert np.array_equal(load_split_cached("covid_cnn", data, "train", 16, cache).x, direct.x)
