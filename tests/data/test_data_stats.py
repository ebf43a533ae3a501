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


def test_folders_rewritten_in_place_invalidate_their_caches(tmp_path):
    """Rewriting zarr chunks or slice files in place changes neither the folder's own mtime
    nor its metadata file: the fingerprint also covers the files under the folder."""
    import zarr
    from PIL import Image

    rng = np.random.default_rng(0)
    store = tmp_path / "vol.zarr"
    arr = zarr.create_array(str(store), shape=(4, 64, 64), chunks=(2, 32, 32), dtype="float32")
    arr[:] = rng.normal(size=(4, 64, 64)).astype(np.float32)
    before = volume_stats(store)
    arr[:] = (10 + 5 * rng.normal(size=(4, 64, 64))).astype(np.float32)  # same chunk files
    assert volume_stats(store).mean > before.mean + 5

    slices = tmp_path / "slices"
    slices.mkdir()
    for z in range(3):
        Image.fromarray(rng.integers(0, 100, (32, 32), dtype=np.uint8)).save(slices / f"{z}.png")
    before = volume_stats(slices)
    for z in range(3):
        Image.fromarray(rng.integers(100, 250, (32, 32), dtype=np.uint8)).save(slices / f"{z}.png")
    assert volume_stats(slices).mean > before.mean + 50


def test_a_folder_fingerprint_follows_its_files_names_not_its_own_mtime(tmp_path):
    from masktwins_bio.data.cache import fingerprint

    slices = tmp_path / "slices"
    slices.mkdir()
    for z in range(3):
        (slices / f"{z}.png").write_bytes(bytes(10 + z))
    first = fingerprint(slices)
    os.replace(slices / "1.png", tmp_path / "1.png")  # moved away and back: the same files
    os.replace(tmp_path / "1.png", slices / "1.png")
    assert fingerprint(slices) == first
    os.replace(slices / "2.png", slices / "9.png")  # renamed: the stack's order may change
    assert fingerprint(slices) != first
