"""The work of one tile: its windows in loop order, the batches to run, when each block is final.

Given the blocks already finished (from the ledger), a :class:`TileWork` keeps only the batches
that feed an unfinished block. A batch is always the same fixed group of windows (see
:mod:`.plan`), even when only some of its windows are still needed, so every window is computed
in the same company and the resumed output is bit-for-bit the uninterrupted one.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .plan import BlockPlan, Tile


@dataclass
class Batch:
    """One forward pass: ``windows`` are (Z, Y, X) window indices; ``finished`` are the blocks
    whose last contribution this batch brings."""

    number: int
    windows: np.ndarray
    finished: list[tuple[int, int, int]]


class TileWork:
    """Windows, batches and block completion of one tile, minus the blocks in ``done``."""

    def __init__(self, plan: BlockPlan, tile: Tile, done=frozenset()):
        self.plan, self.tile = plan, tile
        self.ranges = plan.tile_windows(tile)
        self.pending = [b for b in tile.blocks() if b not in done]
        self.pending_set = set(self.pending)
        counts = [len(r) for r in self.ranges]
        order = plan.order
        # Window indices in loop order, as (Z, Y, X) indices local to the tile.
        loop = np.indices([counts[a] for a in order]).reshape(3, -1).T
        local = np.empty_like(loop)
        local[:, list(order)] = loop
        self._local = local
        self._offset = np.array([r.start for r in self.ranges])
        self.n_windows = len(local)
        self._overlaps = [self._axis_overlaps(a) for a in range(3)]
        self.batches = self._batches(counts, order)

    def _axis_overlaps(self, axis: int) -> list[list[tuple[int, slice, slice]]]:
        """Per local window index: (block, slice in block, slice in window) it writes to."""
        plan = self.plan
        c, r, n = plan.block[axis], plan.roi[axis], plan.shape[axis]
        lo_b, hi_b = self.tile.lo[axis], self.tile.hi[axis]
        out = []
        for i in self.ranges[axis]:
            s = plan.starts[axis][i]
            items = []
            for b in plan.block_range(axis, s):
                if not lo_b <= b < hi_b:
                    continue
                a, e = max(s, b * c), min(s + r, (b + 1) * c, n)
                items.append((b, slice(a - b * c, e - b * c), slice(a - s, e - s)))
            out.append(items)
        return out

    def _batches(self, counts, order) -> list[Batch]:
        plan, size = self.plan, self.plan.batch_size
        needed = np.zeros(counts, dtype=bool)
        last = {}
        strides = np.array([int(np.prod([counts[a] for a in order[k + 1:]])) for k in range(3)])
        for b in self.pending:
            box = []
            for a in range(3):
                lo, hi = b[a] * plan.block[a], min((b[a] + 1) * plan.block[a], plan.shape[a])
                t = plan.touching(a, lo, hi)
                box.append(slice(t.start - self.ranges[a].start, t.stop - self.ranges[a].start))
            needed[tuple(box)] = True
            # The last window touching b in loop order has the largest index on every axis.
            pos = sum(int(strides[k]) * (box[order[k]].stop - 1) for k in range(3))
            last[b] = pos // size
        in_order = needed.transpose(order).reshape(-1)
        n_groups = -(-self.n_windows // size)
        wanted = np.zeros(n_groups, dtype=bool)
        np.logical_or.at(wanted, np.arange(self.n_windows) // size, in_order)
        finished: dict[int, list] = {}
        for b, g in last.items():
            finished.setdefault(g, []).append(b)
        batches = []
        for g in np.flatnonzero(wanted):
            windows = self._local[g * size:(g + 1) * size] + self._offset
            batches.append(Batch(int(g), windows, sorted(finished.get(int(g), []))))
        return batches

    def targets(self, window: np.ndarray):
        """(block, slices in block, slices in window) for every block of the tile a window
        (global (Z, Y, X) window indices) writes to, finished or not."""
        per_axis = [self._overlaps[a][int(window[a]) - self.ranges[a].start] for a in range(3)]
        for combo in itertools.product(*per_axis):
            yield (tuple(c[0] for c in combo), tuple(c[1] for c in combo),
                   tuple(c[2] for c in combo))

    def window_box(self, window: np.ndarray) -> tuple[tuple[int, int], ...]:
        """Voxel range [start, stop) of a window on each axis (may leave the volume when padded)."""
        plan = self.plan
        return tuple((plan.starts[a][int(window[a])], plan.starts[a][int(window[a])] + plan.roi[a])
                     for a in range(3))

    def row_key(self, window: np.ndarray) -> tuple:
        plan = self.plan
        return tuple(int(window[a]) for a in plan.order[:plan.row_axes])

    def row_box(self, key: tuple) -> tuple[tuple[int, int], ...]:
        """Voxel range the reader loads for one row: every window of the tile sharing ``key``."""
        plan = self.plan
        fixed = dict(zip(plan.order[:plan.row_axes], key))
        box = []
        for a in range(3):
            idx = [fixed[a]] if a in fixed else [self.ranges[a].start, self.ranges[a].stop - 1]
            lo = plan.starts[a][idx[0]]
            box.append((lo, plan.starts[a][idx[-1]] + plan.roi[a]))
        return tuple(box)
