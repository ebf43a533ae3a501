"""`segment`: out-of-core components equal skimage.measure.label; MitoEM AP-75."""
import json
import os

import numpy as np
import pytest
import zarr
from scipy import ndimage
from skimage.measure import label

from masktwins_bio.cli import main
from masktwins_bio.inference.instances import label_volume, seeded_watershed
from masktwins_bio.metrics import instance_ap


def _prob(shape=(14, 40, 46), sigma=1.2, seed=0):
    p = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return ((p - p.min()) / (p.max() - p.min())).astype(np.float32)


def _same_up_to_numbering(ours, ref):
    assert np.array_equal(ours > 0, ref > 0)
    fg = ref > 0
    pairs = np.unique(np.stack([ours[fg], ref[fg]], 1), axis=0)
    assert len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))
    assert ours.max() == ref.max() == len(pairs)          # consecutive ids 1..n


@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("block", [(5, 9, 11), (4, 16, 46)])
def test_components_equal_skimage_label(tmp_path, connectivity, block):
    p = _prob()
    out = tmp_path / "labels.zarr"
    summary = label_volume(p, out, 0.55, connectivity, block)
    ref = label(p > 0.55, connectivity=connectivity)
    assert summary["provisional"] > ref.max()             # components really were cut
    _same_up_to_numbering(zarr.open_array(str(out), mode="r")[:], ref)


def test_min_size_drops_small_components(tmp_path):
    p = _prob(seed=1)
    label_volume(p, tmp_path / "l.zarr", 0.55, 1, (5, 9, 11), min_size=20)
    ref = label(p > 0.55, connectivity=1)
    sizes = np.bincount(ref.ravel())
    big = np.isin(ref, np.flatnonzero(sizes >= 20)[1:])
    ours = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[:]
    _same_up_to_numbering(ours, label(big, connectivity=1))


def test_seeded_watershed_labels_every_seed(tmp_path):
    p = _prob(sigma=2.0)
    seeded_watershed(p, tmp_path / "ws.zarr", 0.5, 0.6, 8, (7, 20, 23))
    ws = zarr.open_array(str(tmp_path / "ws.zarr"), mode="r")[:]
    seeds = label(p > 0.6, connectivity=1)
    assert ws.max() == seeds.max() and set(np.unique(ws[seeds > 0])) == set(range(1, ws.max() + 1))
    assert np.all(ws[p <= 0.5] == 0)


def test_killed_runs_leftovers_are_removed_and_a_live_runs_kept(tmp_path):
    """SIGKILL leaves a segment's hidden partial labels (and seeds) behind; the next run removes
    those of dead writers only."""
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    live = str(os.getppid())  # runs, and is not this process
    stale = [tmp_path / f".ws.zarr.{dead}.partial",
             tmp_path / f"..ws.zarr.{dead}.partial.seeds.zarr.{dead}.partial",
             tmp_path / f".ws.zarr.{dead}.partial.seeds.zarr"]
    kept = [tmp_path / f".ws.zarr.{live}.partial", tmp_path / f".other.zarr.{dead}.partial",
            tmp_path / ".ws.zarr.notapid.partial",
            # today's resumable partial of another output, named like an old leftover
            tmp_path / f".ws.zarr.{dead}.zarr.partial"]
    for path in stale + kept:
        (path / "c").mkdir(parents=True)
    seeded_watershed(_prob(sigma=2.0), tmp_path / "ws.zarr", 0.5, 0.6, 8, (7, 20, 23))
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ws.zarr"] +
                                                                [p.name for p in kept])


def test_instance_ap_follows_the_mitoem_protocol():
    gt = np.zeros((4, 20, 20), np.uint32)
    gt[:, :8, :8], gt[:, 10:, 10:], gt[:, :5, 12:] = 1, 2, 3
    assert instance_ap(gt, gt)["ap"] == 1.0
    pred = gt.copy()
    pred[pred == 3] = 0                      # one miss: recall 2/3, precision 1
    r = instance_ap(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 1) and abs(r["ap"] - 67 / 101) < 1e-12
    shrunk = gt.copy()
    shrunk[:, 6:8, :8] = 0                   # IoU 0.75 exactly still counts
    assert instance_ap(shrunk, gt)["tp"] == 3
    shrunk[:, 5, :8] = 0                     # IoU 5/8 < 0.75: a false positive and a miss
    assert instance_ap(shrunk, gt)["tp"] == 2


def test_segment_cli_with_ap(tmp_path, capsys):
    p = _prob()
    prob = tmp_path / "prob.zarr"
    zarr.create_array(store=str(prob), shape=p.shape, dtype="float32", chunks=(7, 20, 23))[:] = p
    gt = tmp_path / "gt.zarr"
    ref = label(p > 0.55, connectivity=1).astype(np.uint32)
    zarr.create_array(store=str(gt), shape=p.shape, dtype="uint32", chunks=(7, 20, 23))[:] = ref
    out = tmp_path / "inst.zarr"
    assert main(["segment", "--input", str(prob), "--output", str(out), "--threshold", "0.55",
                 "--block", "5,9,11", "--labels", str(gt), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ap75"] == 1.0 and result["instances"] == ref.max()
    assert main(["segment", "--input", str(prob), "--output", str(out)]) == 2


@pytest.mark.parametrize("method", [[], ["--method", "watershed", "--seed-threshold", "0.6"]])
def test_segment_thresholds_float64_maps_exactly_as_evaluate_does(tmp_path, capsys, method):
    """0.5 + 1e-9 is above a 0.5 threshold in float64; rounded to float32 it was not."""
    p = np.full((1, 5, 5), 0.2)
    p[0, 0, 0], p[0, 3, 3] = 0.5 + 1e-9, 0.9
    if method:  # watershed: each object needs a seed above the seed threshold
        p[0, 0, 0] = 0.6 + 1e-9
        p[0, 0, 1] = 0.5 + 1e-9   # grown from its neighbour's seed only in float64
    src = tmp_path / "p64.zarr"
    zarr.create_array(store=str(src), shape=p.shape, dtype="float64", chunks=(1, 5, 5))[:] = p
    out = tmp_path / "inst.zarr"
    args = ["segment", "--input", str(src), "--output", str(out), "--json"]
    assert main(args + method) == 0
    labels = np.asarray(zarr.open_array(str(out), mode="r")[:])
    assert labels.max() == 2
    np.testing.assert_array_equal(labels > 0, p > 0.5)
