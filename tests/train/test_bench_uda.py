"""tools/bench_uda.py end to end on a stand-in for ../shared/data/real (tiny synthetic VNC and
Lucchi folders, a tiny network): the cache is keyed and reused, the table is assembled from it,
and ``--json`` ends with the table the acceptance checks read."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from masktwins_bio.data.synthetic import write_domain

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_uda.py"
TINY = ["data.crop=[32,32]", "data.batch_source=1", "data.batch_target=1",
        "model.channels=[4,8,16]", "model.strides=[2,2]", "model.num_res_units=1",
        "uda.warmup_iters=2", "uda.teacher_context=4", "mask.block=[1,8,8]"]


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    """The layout bench_uda reads: vnc/{raw,mitochondria}, lucchi/train/{images,masks}."""
    root = tmp_path_factory.mktemp("real")
    for style, folder, names in (("source", root / "vnc", ("raw", "mitochondria")),
                                 ("target", root / "lucchi" / "train", ("images", "masks"))):
        images, masks = write_domain(folder, style, (3, 64, 64), seed=2, fmt="png")
        images.rename(folder / names[0])
        if names[1] != "masks":
            masks.rename(folder / names[1])
    return root


def _bench(real_root, cache, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKTWINS_REAL_DATA": str(real_root)}
    out = subprocess.run([sys.executable, str(TOOL), "--cache", str(cache), "--iters", "4",
                          "--json", *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, json.loads(out.stdout.strip().splitlines()[-1])


def test_runs_are_cached_and_the_table_is_assembled_from_them(real_root, tmp_path):
    cache = tmp_path / "uda"
    args = ["--methods", "source-only,masktwins", "--seeds", "0", *TINY]
    log, table = _bench(real_root, cache, *args)
    assert log.count("training ") == 2
    assert set(table["methods"]) == {"source-only", "masktwins"}
    assert table["iters"] == 4 and table["seeds"] == [0]
    row = table["methods"]["masktwins"]
    assert row["seeds"] == [0] and 0.0 <= row["iou_mean"] <= 1.0
    assert row["iou_std"] is None  # one seed has no spread
    assert row["iou_per_seed"] == [row["iou_mean"]]
    p = table["paired"]["source-only"]  # MaskTwins against each method on matched seeds
    assert p["seeds"] == [0] and p["iou_diff_mean"] == pytest.approx(
        row["iou_mean"] - table["methods"]["source-only"]["iou_mean"])
    runs = sorted((cache / "vnc-to-lucchi").glob("*_seed0_*.json"))
    assert [r.name.split("_")[0] for r in runs] == ["masktwins", "source-only"]
    record = json.loads(runs[0].read_text())
    assert record["commit"] and record["config"]["uda"]["warmup_iters"] == 2
    assert "metrics_at_prior_bias" in record  # the preset matches the prior (binary model)

    # the same runs again: read from the cache, with or without --assemble
    for again in ([], ["--assemble"]):
        log, same = _bench(real_root, cache, *again, *args)
        assert "training " not in log and same == table

    # a preset value given as an override is the same config: the same runs and table file
    tables = sorted((cache / "vnc-to-lucchi").glob("table_*.json"))
    assert len(tables) == 1
    _, same = _bench(real_root, cache, "--assemble", *args, "uda.ema=0.99")
    assert same["methods"] == table["methods"]
    assert sorted((cache / "vnc-to-lucchi").glob("table_*.json")) == tables
    # another config is another key: nothing cached for it yet
    _, other = _bench(real_root, cache, "--assemble", *args, "uda.ema=0.9")
    assert other["methods"] == {}
    assert len(list((cache / "vnc-to-lucchi").glob("table_*.json"))) == 2


def test_paired_compares_masktwins_on_the_seeds_both_rows_hold(bench_uda):
    table = {"masktwins": {"seeds": [0, 1, 2], "iou_per_seed": [0.60, 0.50, 0.70]},
             "rmask": {"seeds": [1, 2, 3], "iou_per_seed": [0.52, 0.65, 0.10]},
             "mic": {"seeds": [4], "iou_per_seed": [0.2]}}
    pairs = bench_uda.paired(table)
    assert set(pairs) == {"rmask"}  # mic shares no seed with masktwins
    p = pairs["rmask"]
    assert p["seeds"] == [1, 2] and p["ahead"] == 1
    assert p["iou_diffs"] == pytest.approx([-0.02, 0.05])
    assert p["iou_diff_mean"] == pytest.approx(0.015)
    assert bench_uda.paired({"rmask": table["rmask"]}) == {}


def test_target_zoom_resamples_the_target_and_keeps_its_own_cache(real_root, tmp_path):
    """--target-zoom 0.8: the target as a coarser microscope would image it (pixels of
    5 / 0.8 = 6.25 nm), cached apart from the unzoomed direction's runs; the source (VNC,
    4.6 nm) is resampled to the target's pixel size by the rule, unless switched off."""
    cache = tmp_path / "uda"
    log, table = _bench(real_root, cache, "--methods", "source-only", "--seeds", "0",
                        "--target-zoom", "0.8", *TINY)
    assert log.count("training ") == 1 and table["direction"] == "vnc-to-lucchi-zoom0.8"
    assert "source resampled in-plane by 0.736 to the target's pixel size: [3, 47, 47]" in log
    (run,) = (cache / "vnc-to-lucchi-zoom0.8").glob("source-only_seed0_*.json")
    assert json.loads(run.read_text())["target_zoom"] == 0.8
    assert not (cache / "vnc-to-lucchi").exists()
    log, _ = _bench(real_root, cache, "--methods", "source-only", "--seeds", "0",
                    "--target-zoom", "0.8", *TINY, "data.match_pixel_size=false")
    assert log.count("training ") == 1 and "resampled" not in log   # another key
    # unzoomed, VNC (4.6 nm) and Lucchi (5 nm) are within the tolerance: no resampling
    log, _ = _bench(real_root, cache, "--methods", "source-only", "--seeds", "0", *TINY)
    assert "resampled" not in log


def test_work_zoom_trains_coarser_and_scores_on_the_targets_own_grid(real_root, tmp_path):
    """--work-zoom 0.8: the target resampled for training and prediction only (the source
    matched to it); the prediction comes back to the 64² grid of the target's labels."""
    cache = tmp_path / "uda"
    log, table = _bench(real_root, cache, "--methods", "source-only", "--seeds", "0",
                        "--work-zoom", "0.8", *TINY)
    assert table["direction"] == "vnc-to-lucchi-work0.8"
    assert "source resampled in-plane by 0.736" in log
    (run,) = (cache / "vnc-to-lucchi-work0.8").glob("source-only_seed0_*.json")
    record = json.loads(run.read_text())
    assert record["work_zoom"] == 0.8 and 0.0 <= record["metrics"]["iou"] <= 1.0
