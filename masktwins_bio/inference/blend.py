"""Gaussian blending into open blocks, finalised to probabilities block by block.

Every block keeps a float32 sum of ``importance * logits`` over the windows that touch it, added
in the tile's fixed window order. When its last window has been added the block is divided by
the summed importance of those windows (computed from the geometry alone and cached, since
blocks at the same offset from the window grid share it) and turned into probabilities with a
sigmoid, exactly as MONAI blends logits (``output / count_map``) before ``torch.sigmoid``.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import torch

from .schedule import TileWork

_CACHE_ENTRIES = 8


class Blender:
    """Accumulates weighted logits per block and hands out finished probability blocks."""

    def __init__(self, weight: np.ndarray):
        self.weight = np.asarray(weight, dtype=np.float32)
        if self.weight.ndim == 2:
            self.weight = self.weight[None]
        self._acc: dict[tuple, np.ndarray] = {}
        self._wsum: OrderedDict = OrderedDict()

    @property
    def open_bytes(self) -> int:
        return sum(a.nbytes for a in self._acc.values())

    def add(self, work: TileWork, windows: np.ndarray, weighted: np.ndarray, wanted) -> None:
        """Add each window's weighted logits (n, *window3d) to the blocks in ``wanted``."""
        plan = work.plan
        for w, lw in zip(windows, weighted):
            for b, bsl, wsl in work.targets(w):
                if b not in wanted:
                    continue
                acc = self._acc.get(b)
                if acc is None:
                    shape = tuple(s.stop - s.start for s in plan.block_slices(b))
                    acc = self._acc[b] = np.zeros(shape, dtype=np.float32)
                acc[bsl] += lw[wsl]

    def finish(self, work: TileWork, b: tuple) -> np.ndarray:
        """Probability (float32) of a block whose windows have all been added."""
        acc = self._acc.pop(b)
        acc /= self.weight_sum(work, b)
        t = torch.from_numpy(acc)
        torch.sigmoid_(t)
        return acc

    def weight_sum(self, work: TileWork, b: tuple) -> np.ndarray:
        plan = work.plan
        slices = plan.block_slices(b)
        shape = tuple(s.stop - s.start for s in slices)
        per_axis = []
        for a, s in enumerate(slices):
            idx = plan.touching(a, s.start, s.stop)
            per_axis.append(tuple(plan.starts[a][i] - s.start for i in idx))
        key = (shape, tuple(per_axis))
        if key in self._wsum:
            self._wsum.move_to_end(key)
            return self._wsum[key]
        out = _weight_sum(self.weight, shape, per_axis)
        self._wsum[key] = out
        if len(self._wsum) > _CACHE_ENTRIES:
            self._wsum.popitem(last=False)
        return out


def _overlap(offset: int, r: int, n: int) -> tuple[slice, slice] | None:
    lo, hi = max(offset, 0), min(offset + r, n)
    return (slice(lo, hi), slice(lo - offset, hi - offset)) if hi > lo else None


def _weight_sum(weight: np.ndarray, shape: tuple, offsets: list) -> np.ndarray:
    """Sum of ``weight`` placed at every combination of per-axis window offsets."""
    r = weight.shape
    if r[0] == 1:
        # One-slice windows (2D networks): every slice sees the same windows.
        plane = np.zeros(shape[1:], dtype=np.float32)
        for oy, ox in itertools.product(offsets[1], offsets[2]):
            sy, sx = _overlap(oy, r[1], shape[1]), _overlap(ox, r[2], shape[2])
            plane[sy[0], sx[0]] += weight[0][sy[1], sx[1]]
        return np.broadcast_to(plane, shape)
    out = np.zeros(shape, dtype=np.float32)
    for o in itertools.product(*offsets):
        ov = [_overlap(oa, ra, na) for oa, ra, na in zip(o, r, shape)]
        out[tuple(v[0] for v in ov)] += weight[tuple(v[1] for v in ov)]
    return out
