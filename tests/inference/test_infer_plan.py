"""The window grid is MONAI's, every block is finished exactly once, batches never change."""
import itertools

import numpy as np
import pytest
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from masktwins_bio.inference.plan import axis_starts, make_plan
from masktwins_bio.inference.schedule import TileWork


@pytest.mark.parametrize("size,roi", [(100, 32), (32, 32), (33, 32), (20, 32), (1, 1), (7, 1),
                                      (64, 16), (1000, 96)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_axis_starts_are_monai_windows(size, roi, overlap):
    padded = max(size, roi)
    interval = _get_scan_interval((padded,), (roi,), 1, (overlap,))
    ref = [s[0].start for s in dense_patch_slices((padded,), (roi,), interval)]
    pad_before = (padded - size) // 2          # MONAI pads (r - n) // 2 voxels in front
    assert list(axis_starts(size, roi, overlap)) == [s - pad_before for s in ref]


@pytest.mark.parametrize("dims,shape,roi,block,budget", [
    (2, (9, 70, 90), (32, 32), (4, 30, 40), 2**20),
    (3, (12, 48, 52), (8, 32, 32), (5, 20, 30), 60_000),   # small budget: several y/x tiles
    (3, (5, 20, 20), (8, 32, 32), None, 2**29),            # window larger than the volume
])
def test_every_block_finishes_once_after_all_its_windows(dims, shape, roi, block, budget):
    plan = make_plan(shape, roi, dims, 0.25, block, batch_size=3, budget=budget)
    tiles = plan.tiles()
    if budget == 60_000:
        assert len(tiles) > 1
    seen = []
    for tile in tiles:
        work = TileWork(plan, tile)
        added = {}
        for batch in work.batches:
            for w in batch.windows:
                for b, _, _ in work.targets(w):
                    added[b] = added.get(b, 0) + 1
            for b in batch.finished:
                # all windows touching the block are in by now
                sl = plan.block_slices(b)
                need = np.prod([len(plan.touching(a, s.start, s.stop)) for a, s in enumerate(sl)])
                assert added[b] == need
                seen.append(b)
    assert sorted(seen) == sorted(itertools.product(*(range(g) for g in plan.grid)))


def test_resumed_tiles_run_the_same_batches():
    plan = make_plan((9, 70, 90), (32, 32), 2, 0.25, (3, 30, 40), batch_size=4)
    tile = plan.tiles()[1]
    full = {b.number: b.windows for b in TileWork(plan, tile).batches}
    done = set(list(tile.blocks())[:3])
    partial = TileWork(plan, tile, done)
    assert 0 < len(partial.batches) <= len(full)
    for batch in partial.batches:
        np.testing.assert_array_equal(batch.windows, full[batch.number])
    assert not set(b for batch in partial.batches for b in batch.finished) & done
