"""Per-volume statistics are computed once, stored next to the data and invalidated by edits."""
from __future__ import annotations

import os

import numpy as np
import tifffile

from masktwins_bio.data import stats as stats_mod
from masktwins_bio.data.stats import foreground_index, volume_stats


def test_stats_are_cached_beside_the_data(tmp_path, monkeypatch):
    path = tmp_path / "v.tif"
    vol = np.random.default_rng(0).integers(0, 200, (4, 32, 32), dtype=np.uint8)
    tifffile.imwrite(path, vol, photometric="minisblack")
    first = volume_stats(path)
    assert list(tmp_path.glob("v.tif.masktwins-intensity-*.json"))
    calls = []
    monkeypatch.setattr(stats_mod, "compute_stats", lambda v: calls.append(v))
    assert volume_stats(path) == first and calls == []  # read back, not recomputed
    # The data changed: the cache no longer applies.
    tifffile.imwrite(path, vol // 2, photometric="minisblack")
    os.utime(path, ns=(1, 1))
    monkeypatch.undo()
    assert volume_stats(path).high < first.high


def test_read_only_data_caches_in_the_user_cache(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    tifffile.imwrite(data / "m.tif", (np.arange(4 * 64 * 64).reshape(4, 64, 64) % 7 == 0)
                     .astype(np.uint8), photometric="minisblack")
    monkeypatch.setenv("MASKTWINS_CACHE", str(cache))
    os.chmod(data, 0o555)
    try:
        counts = foreground_index(data / "m.tif")
    finally:
        os.chmod(data, 0o755)
    assert counts.shape == (4, 2, 2) and counts.sum() == (np.arange(4 * 64 * 64) % 7 == 0).sum()
    if os.geteuid() != 0:  # root ignores the read-only bit
        assert list(cache.glob("*.npz"))
