"""Per-volume statistics computed once, chunk by chunk, and stored next to the data.

- :func:`volume_stats` – intensity statistics (:class:`~.normalize.IntensityStats`) of an image;
  taken from ``attrs["masktwins"]["intensity"]`` of a converted OME-Zarr, else from the cache
  file beside the data, else computed slab by slab (:func:`~.normalize.compute_stats`) and saved.
- :func:`foreground_index` – a coarse (Z, Y/cy, X/cx) uint32 count of foreground voxels per cell
  of a label volume, read block by block; the sampler uses it to draw foreground crops.
"""
from __future__ import annotations

import math

import numpy as np

from . import cache
from .normalize import IntensityStats, compute_stats
from .ome_zarr import block_shape, iter_blocks
from .volumes import Volume, binarise_region, open_volume

INDEX_CELL = (1, 32, 32)
DEFAULT_PCT = (0.5, 99.5)   # the clip percentiles of DataConfig and of convert


def _converted_attrs(vol: Volume) -> dict | None:
    """``masktwins`` attrs of an OME-Zarr written by convert, for its full-resolution image."""
    from .spec import parse_spec
    parsed = parse_spec(vol.path)
    if parsed.key not in ("", "0") or parsed.options.get("level", 0) != 0:
        return None
    if not (parsed.path / "zarr.json").exists():
        return None
    import zarr
    try:
        return dict(zarr.open_group(str(parsed.path), mode="r").attrs).get("masktwins")
    except Exception:
        return None


def volume_stats(spec, recompute: bool = False, low_pct: float = DEFAULT_PCT[0],
                 high_pct: float = DEFAULT_PCT[1]) -> IntensityStats:
    """Intensity statistics of a volume, computed at most once per volume and clip range (see
    module doc)."""
    vol = open_volume(spec)
    default = (low_pct, high_pct) == DEFAULT_PCT
    kind = "intensity" if default else f"intensity-{low_pct:g}-{high_pct:g}"
    if not recompute:
        stored = (_converted_attrs(vol) or {}).get("intensity") if default else None
        if stored:
            return IntensityStats.from_dict(stored)
        cached = cache.load(vol.path, kind)
        if cached:
            return IntensityStats.from_dict(cached)
    stats = compute_stats(vol, low_pct, high_pct)
    cache.save(vol.path, kind, stats.to_dict())
    return stats


def foreground_index(spec, cell: tuple = INDEX_CELL, label_rule: str = "binarise",
                     recompute: bool = False) -> np.ndarray:
    """uint32 counts of foreground voxels per ``cell`` (z, y, x), shape ceil(shape / cell)."""
    vol = open_volume(spec)
    kind = f"fgindex-{'x'.join(map(str, cell))}-{label_rule}"
    if not recompute:
        cached = cache.load(vol.path, kind, ext="npz")
        if cached is not None:
            return cached["counts"]
    grid = tuple(math.ceil(n / c) for n, c in zip(vol.shape, cell))
    counts = np.zeros(grid, dtype=np.uint32)
    unit = tuple(c * k for c, k in zip(cell, (8, 8, 8)))
    block = block_shape(unit, vol.shape, max(vol.dtype.itemsize, 1), budget=64 * 2**20)
    for b in iter_blocks(vol.shape, block):
        mask = vol[b] > 0 if label_rule == "nonzero" else binarise_region(vol, b)
        pad = [(0, -n % c) for n, c in zip(mask.shape, cell)]
        mask = np.pad(mask, pad)
        g = [n // c for n, c in zip(mask.shape, cell)]
        sums = mask.reshape(g[0], cell[0], g[1], cell[1], g[2], cell[2]).sum((1, 3, 5))
        start = [s.start // c for s, c in zip(b, cell)]
        counts[start[0]:start[0] + g[0], start[1]:start[1] + g[1],
               start[2]:start[2] + g[2]] = sums
    cache.save(vol.path, kind, {"counts": counts}, ext="npz")
    return counts
