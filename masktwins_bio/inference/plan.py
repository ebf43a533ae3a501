"""Where the windows go and which output blocks they feed: pure geometry, no I/O.

The window grid is MONAI's (``monai.inferers.sliding_window_inference``) laid over the *whole*
volume, so blending block by block gives MONAI's result:

* along an axis of size ``n`` with window ``r`` and overlap ``o`` the scan interval is
  ``int(r * (1 - o))`` (at least 1; ``r`` when ``r == n``), windows start at ``k * interval``
  and the last one is moved back to end exactly at ``n`` (``dense_patch_slices``);
* an axis shorter than its window is padded to ``r`` first, ``(r - n) // 2`` voxels before and the
  rest after, which here means one window starting at ``-((r - n) // 2)``; the reader fills the
  voxels outside the volume by reflection (MONAI with ``padding_mode="reflect"``).

Output blocks are the output's zarr chunks. A *tile* is a box of blocks predicted independently:
it runs every window touching one of its blocks, in a fixed order, cut into fixed groups of
``batch_size`` windows. Tiles, window order and groups depend only on the plan, never on what is
already done or on which process runs a tile, so a resumed or distributed run computes every
window in the same batch and writes the same bytes. 2D networks see windows one slice thick
(``roi[0] == 1``): each z-layer of blocks is its own tile and windows run slice-fastest, so a batch
is a stack of slices. 3D tiles span all of z and are cut in y/x only when the blocks open at once
would exceed ``ACC_BUDGET`` (windows on a tile border then run once per tile).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

ACC_BUDGET = 512 * 2**20  # bytes of float32 block accumulators a tile may keep open


def axis_starts(size: int, roi: int, overlap: float) -> tuple[int, ...]:
    """Window starts along one axis, exactly as MONAI places them (see module docstring)."""
    if size < roi:
        return (-((roi - size) // 2),)
    interval = roi if roi == size else max(1, int(roi * (1 - overlap)))
    count = next(d for d in range(math.ceil(size / interval)) if d * interval + roi >= size) + 1
    return tuple(min(d * interval, size - roi) for d in range(count))


def default_block(shape: tuple, model_dims: int) -> tuple[int, int, int]:
    """Output chunk = block: thin slabs for 2D networks, cubes for 3D ones."""
    want = (8, 512, 512) if model_dims == 2 else (16, 256, 256)
    return tuple(min(w, s) for w, s in zip(want, shape))


@dataclass(frozen=True)
class Tile:
    """A box of blocks, block indices ``lo`` (inclusive) to ``hi`` (exclusive) per axis."""

    index: int
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    def blocks(self):
        return itertools.product(*(range(a, b) for a, b in zip(self.lo, self.hi)))


@dataclass(frozen=True)
class BlockPlan:
    """Window grid, output blocks and tiles of one volume. All shapes are (Z, Y, X) voxels.

    ``roi`` is the 3D window (``(1, ry, rx)`` for a 2D network), ``block`` the output chunk.
    """

    shape: tuple[int, int, int]
    roi: tuple[int, int, int]
    model_dims: int
    overlap: float
    block: tuple[int, int, int]
    batch_size: int
    tile_blocks: tuple[int, int, int]
    starts: tuple[tuple[int, ...], ...] = field(repr=False)

    # -- blocks --------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int, int]:
        """Number of blocks along each axis."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.block))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.grid)

    def block_slices(self, b: tuple) -> tuple[slice, slice, slice]:
        return tuple(slice(i * c, min((i + 1) * c, n))
                     for i, c, n in zip(b, self.block, self.shape))

    # -- windows -------------------------------------------------------------------------------
    @property
    def n_windows(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def touching(self, axis: int, lo: int, hi: int) -> range:
        """Indices of the windows along ``axis`` that overlap voxels ``[lo, hi)``."""
        s, r = np.asarray(self.starts[axis]), self.roi[axis]
        first = int(np.searchsorted(s + r, lo, side="right"))
        last = int(np.searchsorted(s, hi, side="left"))
        return range(first, last)

    def block_range(self, axis: int, start: int) -> range:
        """Blocks along ``axis`` that a window starting at ``start`` writes to."""
        c, n = self.block[axis], self.shape[axis]
        lo, hi = max(start, 0), min(start + self.roi[axis], n)
        return range(lo // c, (hi - 1) // c + 1)

    @property
    def order(self) -> tuple[int, int, int]:
        """Axis order of the window loop, slowest first: slices fastest for 2D networks."""
        return (1, 2, 0) if self.model_dims == 2 else (0, 1, 2)

    @property
    def row_axes(self) -> int:
        """Leading axes of ``order`` that name a row, the unit the reader loads at once."""
        return 1 if self.model_dims == 2 else 2

    # -- tiles ---------------------------------------------------------------------------------
    def tiles(self) -> list[Tile]:
        g, t = self.grid, self.tile_blocks
        out = []
        for lo in itertools.product(*(range(0, n, k) for n, k in zip(g, t))):
            hi = tuple(min(a + k, n) for a, k, n in zip(lo, t, g))
            out.append(Tile(len(out), lo, hi))
        return out

    def tile_voxels(self, tile: Tile) -> list[tuple[int, int]]:
        return [(a * c, min(b * c, n))
                for a, b, c, n in zip(tile.lo, tile.hi, self.block, self.shape)]

    def tile_windows(self, tile: Tile) -> list[range]:
        """Per axis, the window indices a tile runs: all that touch one of its voxels."""
        return [self.touching(a, lo, hi) for a, (lo, hi) in enumerate(self.tile_voxels(tile))]

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "roi": list(self.roi), "model_dims": self.model_dims,
                "overlap": self.overlap, "block": list(self.block),
                "batch_size": self.batch_size, "tile_blocks": list(self.tile_blocks)}


def _tile_blocks(shape, roi, block, model_dims, budget) -> tuple[int, int, int]:
    grid = [-(-n // c) for n, c in zip(shape, block)]
    cz, cy, cx = block
    if model_dims == 2:
        # Open blocks: about two block rows of one z-layer.
        per_x = 2 * cz * cy * cx * 4
        return (1, grid[1], max(1, min(grid[2], budget // per_x)))
    layers = -(-roi[0] // cz) + 1
    per_block = layers * cz * cy * cx * 4
    ty = tx = max(1, int(math.isqrt(max(1, budget // per_block))))
    if grid[1] * grid[2] * per_block <= budget:
        ty, tx = grid[1], grid[2]
    return (grid[0], min(ty, grid[1]), min(tx, grid[2]))


def make_plan(shape: tuple, roi: tuple, model_dims: int, overlap: float = 0.25,
              block: tuple | None = None, batch_size: int = 4,
              budget: int = ACC_BUDGET) -> BlockPlan:
    """The plan for a (Z, Y, X) volume and a network window ``roi`` (2 or 3 sizes)."""
    shape = tuple(int(s) for s in shape)
    roi3 = (1, *map(int, roi)) if model_dims == 2 else tuple(int(r) for r in roi)
    block = tuple(int(b) for b in (block or default_block(shape, model_dims)))
    block = tuple(min(b, s) for b, s in zip(block, shape))
    starts = tuple(axis_starts(n, r, overlap) for n, r in zip(shape, roi3))
    tiles = _tile_blocks(shape, roi3, block, model_dims, budget)
    return BlockPlan(shape, roi3, model_dims, float(overlap), block, int(batch_size), tiles,
                     starts)
