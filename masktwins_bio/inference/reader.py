"""Lazy window reads: normalised input for one batch, loaded row by row from any volume.

A *row* is every window of a tile that shares the slow loop indices (see :mod:`.plan`); the
reader loads a row's bounding box once, normalises it, and cuts the batch's windows out of it,
so consecutive batches never re-read the same voxels twice in a row. Voxels outside the volume
(only on axes shorter than the window) are filled by reflection, as MONAI's ``reflect`` padding.
"""
from __future__ import annotations

import numpy as np

from .schedule import Batch, TileWork


def read_box(source, box, stats=None) -> np.ndarray:
    """``source`` over voxel ranges ``box`` ((lo, hi) per axis) as normalised float32.

    ``source`` is any (Z, Y, X) array-like with numpy slicing (a Volume, zarr, numpy);
    ``stats`` an :class:`IntensityStats` or None (already normalised input).
    """
    shape = source.shape
    inner = tuple(slice(max(lo, 0), min(hi, n)) for (lo, hi), n in zip(box, shape))
    data = source[inner]
    data = stats.apply(data) if stats is not None else np.asarray(data, dtype=np.float32)
    pads = [(s.start - lo, hi - s.stop) for s, (lo, hi) in zip(inner, box)]
    if any(p for pair in pads for p in pair):
        # numpy's "reflect" equals torch's (edge not repeated) and also allows pads >= size.
        data = np.pad(data, pads, mode="reflect")
    return data


class WindowReader:
    """Builds the (n, 1, *window) float32 input of each batch of a tile."""

    def __init__(self, source, stats, model_dims: int, pin=None):
        self.source, self.stats, self.model_dims = source, stats, model_dims
        self._rows: dict[tuple, tuple] = {}
        self._work = None
        self._pin = pin  # optional allocator for page-locked host memory (CUDA)

    def _row(self, work: TileWork, key: tuple):
        if key not in self._rows:
            box = work.row_box(key)
            self._rows[key] = (box, read_box(self.source, box, self.stats))
        return self._rows[key]

    def batch(self, work: TileWork, batch: Batch) -> np.ndarray:
        if work is not self._work:  # row keys are only unique within a tile
            self._rows, self._work = {}, work
        roi = work.plan.roi
        win = roi[1:] if self.model_dims == 2 else roi
        n = len(batch.windows)
        shape = (n, 1, *win)
        out = self._pin(shape) if self._pin is not None else np.empty(shape, np.float32)
        key = None
        for i, w in enumerate(batch.windows):
            key = work.row_key(w)
            rbox, data = self._row(work, key)
            sl = tuple(slice(lo - r0, hi - r0) for (lo, hi), (r0, _) in
                       zip(work.window_box(w), rbox))
            out[i, 0] = data[sl][0] if self.model_dims == 2 else data[sl]
        # Rows come in loop order: only the last one can serve the next batch.
        self._rows = {key: self._rows[key]} if key is not None else {}
        return out
