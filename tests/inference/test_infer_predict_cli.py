"""`predict` end to end: layouts, dtypes, refusals with one sentence, resume after a kill, dask."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from masktwins_bio.cli import main
from masktwins_bio.data.volumes import open_volume
from masktwins_bio.inference.ledger import finished_blocks


def _predict(ckpt, src, out, *extra):
    return main(["predict", "--checkpoint", ckpt, "--input", src, "--output", str(out),
                 "--device", "cpu", "--quiet", "--threads", "1", *extra])


def test_ome_output_with_mask_voxel_size_and_dtypes(tmp_path, ckpts, volume):
    out = tmp_path / "p.ome.zarr"
    assert _predict(ckpts[2], volume, out, "--threshold", "0.5", "--block", "4,32,40") == 0
    prob = open_volume(out)
    assert prob.shape == (10, 70, 90) and prob.dtype == np.float32
    assert prob.voxel_size == (30.0, 8.0, 8.0)
    p = prob.read()
    assert 0 <= p.min() and p.max() <= 1
    mask = open_volume(f"{out}:labels/mask").read()
    np.testing.assert_array_equal(mask, (p > 0.5).astype(np.uint8))
    # NGFF 0.5: the version in the "ome" object only, image-label inside it
    image = zarr.open_group(str(out), mode="r").attrs["ome"]
    label = zarr.open_group(str(out / "labels" / "mask"), mode="r").attrs["ome"]
    assert label["image-label"] == {"source": {"image": "../../"}}
    for meta in (image, label):
        assert meta["version"] == "0.5" and "version" not in meta["multiscales"][0]
    attrs = zarr.open_group(str(out), mode="r").attrs["masktwins_bio"]
    assert attrs["complete"] and abs(attrs["mean_probability"] - p.mean()) < 1e-6
    for dtype, tol in (("float16", 1e-3), ("uint8", 0.5 / 255 + 1e-6)):
        o = tmp_path / f"p_{dtype}.zarr"
        assert _predict(ckpts[2], volume, o, "--dtype", dtype, "--block", "4,32,40") == 0
        arr = zarr.open_array(str(o), mode="r")
        assert arr.dtype == np.dtype(dtype)
        scale = 255.0 if dtype == "uint8" else 1.0
        assert np.abs(arr[:].astype(np.float32) / scale - p).max() <= tol


def test_home_paths_and_voxel_sizes_of_plain_and_2d_outputs(tmp_path, ckpts, volume,
                                                            monkeypatch):
    """'~' in --input/--checkpoint is expanded (no shell does it for a quoted path, the API or
    napari); a plain .zarr output's voxel size reads back, and a 2D image's pixel size reaches
    the OME-Zarr output (z of 1: one section)."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(volume, tmp_path / "vol.tif")
    shutil.copy(ckpts[2], tmp_path / "net.pt")
    plain = tmp_path / "p.zarr"
    assert _predict("~/net.pt", "~/vol.tif", plain) == 0
    assert open_volume(plain).voxel_size == (30.0, 8.0, 8.0)
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (40, 48), np.uint8),
                     imagej=True, resolution=(1 / 0.008, 1 / 0.008), metadata={"unit": "um"})
    assert open_volume(image).pixel_size == (8.0, 8.0)
    out = tmp_path / "img.ome.zarr"
    assert _predict(ckpts[2], str(image), out) == 0
    assert open_volume(out).voxel_size == (1.0, 8.0, 8.0)


def test_3d_network_and_window_larger_than_volume(tmp_path, ckpts):
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.random.default_rng(0).integers(0, 255, (5, 20, 24), np.uint8))
    out = tmp_path / "p3.zarr"
    assert _predict(ckpts[3], str(small), out) == 0     # window 8x32x32 > volume: padded
    assert zarr.open_array(str(out), mode="r").shape == (5, 20, 24)


def test_bad_inputs_say_one_sentence_and_exit_2(tmp_path, ckpts, volume, capsys, cli_error):
    out = tmp_path / "p.zarr"
    assert _predict(ckpts[2], volume, out) == 0
    before = (out / "zarr.json").read_bytes()
    capsys.readouterr()
    assert _predict(ckpts[2], volume, out) == 2
    assert "exists" in cli_error() and (out / "zarr.json").read_bytes() == before
    assert _predict(ckpts[2], volume, out, "--resume", "--overlap", "0.5") == 2
    assert cli_error().endswith("was started with --overlap 0.25 (now --overlap 0.5); resume "
                                "with --overlap 0.25, or pass --overwrite to start again (its "
                                "finished blocks are then discarded).")
    assert _predict(ckpts[2], volume, out, "--resume", "--tta") == 2
    assert "started with no --tta (now --tta); resume without --tta," in cli_error()
    assert _predict(ckpts["rgb"], volume, tmp_path / "rgb.zarr") == 2
    assert "one grey" in cli_error()
    # options that would be ignored are refused
    assert _predict(ckpts[2], volume, tmp_path / "w.zarr", "--which", "best") == 2
    assert "is a checkpoint file, so --which best" in cli_error()
    assert _predict(ckpts[2], volume, tmp_path / "e.zarr", "--eager", "--compile", "on") == 2
    assert "--compile on compiles the network that --eager" in cli_error()
    assert not (tmp_path / "w.zarr").exists() and not (tmp_path / "e.zarr").exists()
    image2d = tmp_path / "one.tif"
    tifffile.imwrite(image2d, np.zeros((40, 40), np.uint8))
    assert _predict(ckpts[3], str(image2d), tmp_path / "x.zarr") == 2
    assert "3D network" in cli_error()
    text = tmp_path / "notes.txt"
    text.write_text("not a volume")
    assert _predict(ckpts[2], str(text), tmp_path / "y.zarr") == 2
    assert "Unsupported file type" in cli_error()
    assert _predict(ckpts[2], volume, tmp_path / "missing" / "z.zarr") == 2
    assert "does not exist" in cli_error()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores permissions
            assert _predict(ckpts[2], volume, locked / "z.zarr") == 2
            assert "permission denied" in cli_error()
    finally:
        locked.chmod(0o700)
    assert _predict(ckpts[2], volume, tmp_path / "m.zarr", "--threshold", "0.5") == 2
    assert "OME-Zarr" in cli_error()


def test_killed_run_resumes_to_identical_bytes(tmp_path, ckpts, volume):
    args = ["--block", "1,16,16", "--batch-size", "3"]
    ref = tmp_path / "ref.zarr"
    assert _predict(ckpts[2], volume, ref, *args) == 0
    out = tmp_path / "killed.zarr"
    code = ("import sys; from masktwins_bio.cli import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", code, "predict", "--checkpoint", ckpts[2], "--input", volume,
           "--output", str(out), "--device", "cpu", "--quiet", "--threads", "1", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = 10 * 5 * 6
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(finished_blocks(out)) >= 20:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(finished_blocks(out))
    if not 0 < done < total:
        pytest.skip(f"the run was not caught mid-way ({done} of {total} blocks)")
    assert not zarr.open_array(str(out), mode="r").attrs["masktwins_bio"]["complete"]
    assert _predict(ckpts[2], volume, out, *args, "--resume") == 0
    a, b = zarr.open_array(str(ref), mode="r"), zarr.open_array(str(out), mode="r")
    assert a[:].tobytes() == b[:].tobytes()
    assert b.attrs["masktwins_bio"]["complete"]
    assert _predict(ckpts[2], volume, out, *args, "--resume") == 0    # nothing left to do
    assert _predict(ckpts[2], volume, out, "--resume") == 2           # other block size


def test_skeletons_of_killed_runs_are_removed_and_live_ones_kept(tmp_path, ckpts, volume):
    """A kill while the empty output is being built leaves its hidden skeleton beside it; the
    next run on that output removes it, unless its writer still runs."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "p.zarr"
    stale = tmp_path / f".p.zarr.{dead.pid}.0123abcd.tmp"
    live = tmp_path / f".p.zarr.{os.getppid()}.0123abcd.tmp"
    other = tmp_path / f".q.zarr.{dead.pid}.0123abcd.tmp"   # another output's
    impossible = tmp_path / ".p.zarr.99999999999.0123abcd.tmp"   # no pid is that large
    for folder in (stale, live, other, impossible):
        (folder / "0").mkdir(parents=True)
    assert _predict(ckpts[2], volume, out) == 0
    assert not stale.exists() and not impossible.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.glob(".p.zarr.*")) == [live.name]


def test_full_disk_stops_with_a_sentence_and_resumes(tmp_path, ckpts, volume, monkeypatch,
                                                     cli_error):
    import errno

    from masktwins_bio.inference import ledger

    args = ["--block", "1,16,16", "--batch-size", "3"]
    ref = tmp_path / "ref.zarr"
    assert _predict(ckpts[2], volume, ref, *args) == 0
    real, count = ledger.LedgerWriter.mark, []

    def mark(self, block, total):   # the 20th block's write fails as on a full disk
        count.append(1)
        if len(count) == 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, block, total)
    out = tmp_path / "full.zarr"
    with monkeypatch.context() as m:
        m.setattr(ledger.LedgerWriter, "mark", mark)
        assert _predict(ckpts[2], volume, out, *args) == 2
    assert cli_error().endswith("No space left on device); free space or fix permissions, "
                                "then run the same command again with --resume.")
    assert 0 < len(finished_blocks(out)) < 10 * 5 * 6   # writes in flight may still land
    assert _predict(ckpts[2], volume, out, *args, "--resume") == 0
    a, b = zarr.open_array(str(ref), mode="r"), zarr.open_array(str(out), mode="r")
    assert a[:].tobytes() == b[:].tobytes()


def _stopped_prediction(monkeypatch, checkpoint, source, out, args):
    """``out`` of a prediction of ``source`` interrupted (Ctrl-C) at its first finished block."""
    from masktwins_bio.inference import ledger

    def stop(self, block, total):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(ledger.LedgerWriter, "mark", stop)
        assert _predict(checkpoint, str(source), out, *args) == 130
    return out


def test_resume_keeps_the_thread_count_of_the_start(tmp_path, ckpts, volume, monkeypatch,
                                                    cli_error, capsys):
    """A CPU network's last bits depend on its thread count; --streams 1 (or a machine with
    another core count) picked another one on resume and wrote other bytes, unrefused."""
    from masktwins_bio.inference.store import completed

    args = ["--block", "1,16,16"]
    ref = tmp_path / "ref.zarr"
    assert _predict(ckpts[2], volume, ref, *args) == 0          # _predict: --threads 1
    out = _stopped_prediction(monkeypatch, ckpts[2], volume, tmp_path / "s.zarr", args)
    capsys.readouterr()
    resume = ["predict", "--checkpoint", str(ckpts[2]), "--input", volume, "--output", str(out),
              "--device", "cpu", "--quiet", "--resume", *args]
    assert main(resume + ["--threads", "2"]) == 2
    assert "was started with --threads 1" in cli_error()
    assert main(resume + ["--streams", "1"]) == 0   # alone, --streams 1 means every core
    assert completed(out)["run"]["threads"] == 1
    a, b = zarr.open_array(str(ref), mode="r"), zarr.open_array(str(out), mode="r")
    assert a[:].tobytes() == b[:].tobytes()


def test_resume_refuses_a_changed_input_or_another_device(tmp_path, ckpts, volume, monkeypatch,
                                                          cli_error, capsys):
    """A resumed run must compute its missing blocks as the stopped run computed the others."""
    import json
    import shutil

    from masktwins_bio.inference import ledger

    src = tmp_path / "vol.tif"
    shutil.copy(volume, src)
    args = ["--block", "1,16,16", "--batch-size", "3"]
    out = _stopped_prediction(monkeypatch, ckpts[2], src, tmp_path / "stopped.zarr", args)
    capsys.readouterr()
    run_file = ledger.ledger_dir(out) / "run.json"
    record = json.loads(run_file.read_text())
    assert record["device"] == "cpu" and record["input_files"]
    run_file.write_text(json.dumps({**record, "device": "cuda"}))
    assert _predict(ckpts[2], str(src), out, *args, "--resume") == 2
    assert "started with --device cuda (now --device cpu); resume with --device cuda" \
        in cli_error()
    run_file.write_text(json.dumps(record))
    os.utime(src, ns=(1, 1))   # the input rewritten since
    assert _predict(ckpts[2], str(src), out, *args, "--resume") == 2
    assert cli_error().endswith("changed since '" + str(out) + "' was started (its files "
                                "differ); resume with the same input or pass --overwrite to "
                                "start again.")


def test_resume_accepts_an_input_fingerprint_of_an_earlier_version(tmp_path, ckpts, volume,
                                                                   monkeypatch, capsys):
    """Folder fingerprints changed format (2026-11-29): a prediction of a slice folder stopped
    before then resumes while the folder is unchanged."""
    import json

    import imageio.v3 as iio
    import tifffile

    from masktwins_bio.data.cache import legacy_fingerprint
    from masktwins_bio.inference import ledger

    slices = tmp_path / "slices"
    slices.mkdir()
    for z, plane in enumerate(tifffile.imread(volume)):
        iio.imwrite(slices / f"{z:03d}.tif", plane)
    args = ["--block", "1,16,16", "--batch-size", "3"]
    out = _stopped_prediction(monkeypatch, ckpts[2], slices, tmp_path / "stopped.zarr", args)
    run_file = ledger.ledger_dir(out) / "run.json"
    record = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**record, "input_files": legacy_fingerprint(slices)}))
    capsys.readouterr()
    assert _predict(ckpts[2], str(slices), out, *args, "--resume") == 0


def test_dask_local_cluster_equals_single_process(tmp_path, ckpts, volume, monkeypatch):
    pytest.importorskip("distributed")
    from masktwins_bio.inference import cluster

    args = ["--block", "2,32,48"]
    single, spread = tmp_path / "single.zarr", tmp_path / "dask.zarr"
    assert _predict(ckpts[2], volume, single, *args) == 0
    devices, real = [], cluster.run_on_dask

    def spy(*a, device, **kw):
        devices.append(device)
        return real(*a, device=device, **kw)
    monkeypatch.setattr(cluster, "run_on_dask", spy)
    assert main(["predict", "--checkpoint", ckpts[2], "--input", volume, "--output", str(spread),
                 "--device", "auto", "--quiet", "--threads", "1", *args, "--dask",
                 "local:2"]) == 0
    # workers get the device type the run is recorded with, never their own 'auto'
    assert devices == [zarr.open_array(str(spread), mode="r").attrs["masktwins_bio"]["run"]
                       ["device"]] and devices[0] != "auto"
    a, b = zarr.open_array(str(single), mode="r"), zarr.open_array(str(spread), mode="r")
    assert a[:].tobytes() == b[:].tobytes()
    attrs = b.attrs["masktwins_bio"]
    assert attrs["processes"] >= 2                        # both workers wrote blocks
    assert attrs["run"]["block"] == [2, 32, 48]
    assert not (Path(spread) / ".masktwins").exists()     # a finished output is plain zarr


def test_intensity_stats_are_computed_once_per_volume(tmp_path, ckpts, monkeypatch):
    from masktwins_bio.data import stats as stats_module

    src = tmp_path / "v.tif"
    tifffile.imwrite(src, np.random.default_rng(0).integers(0, 255, (3, 40, 40), np.uint8),
                     photometric="minisblack")
    assert _predict(ckpts[2], str(src), tmp_path / "a.zarr") == 0
    assert list(tmp_path.glob("v.tif.masktwins-intensity-*.json"))   # stored beside the data

    def forbidden(*args, **kwargs):
        raise AssertionError("statistics recomputed")
    monkeypatch.setattr(stats_module, "compute_stats", forbidden)
    assert _predict(ckpts[2], str(src), tmp_path / "b.zarr") == 0
    a = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:]
    np.testing.assert_array_equal(a, zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[:])


def test_compiled_network_predicts_what_the_eager_one_does(tmp_path, ckpts, volume, cli_error):
    """--compile on gives the probabilities of --compile off within 1e-4 (the compiled network
    itself: test_infer_blend.py); a resume must keep the setting."""
    # batch 3 over 4-window rows: full and short batches both run through the compiled net.
    assert _predict(ckpts[2], volume, tmp_path / "off.zarr", "--compile", "off",
                    "--batch-size", "3") == 0
    assert _predict(ckpts[2], volume, tmp_path / "on.zarr", "--compile", "on",
                    "--batch-size", "3") == 0
    off = zarr.open_array(str(tmp_path / "off.zarr"), mode="r")[:]
    on = zarr.open_array(str(tmp_path / "on.zarr"), mode="r")[:]
    assert np.abs(on - off).max() <= 1e-4
    assert _predict(ckpts[2], volume, tmp_path / "on.zarr", "--compile", "off",
                    "--batch-size", "3", "--resume") == 2
    assert "started with --compile on (now --compile off)" in cli_error()


def test_compile_auto_rule():
    import torch

    from masktwins_bio.inference.predict import AUTO_COMPILE_WINDOWS, resolve_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", cpu, 2, AUTO_COMPILE_WINDOWS) == "on"
    assert resolve_compile("auto", cpu, 2, AUTO_COMPILE_WINDOWS - 1) == "off"
    assert resolve_compile("auto", cpu, 3, 10**6) == "off"
    assert resolve_compile("auto", cuda, 2, 10**6) == "off"
    assert resolve_compile("on", cpu, 3, 1) == "on"
    assert resolve_compile("on", cpu, 2, 1, optimize=False) == "off"   # --eager wins
