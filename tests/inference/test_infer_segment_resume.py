"""segment --resume: a stopped segmentation continues from its ledger and writes the bytes of an
uninterrupted one; an unfinished one is never thrown away unasked."""
import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from scipy import ndimage

from masktwins_bio.cli import main
from masktwins_bio.data import partial
from masktwins_bio.inference.instances import label_volume, seeded_watershed

BLOCK = (5, 9, 11)   # 3 x 5 x 5 = 75 blocks of the volume below


def _prob(sigma=1.5):
    p = ndimage.gaussian_filter(np.random.default_rng(2).random((14, 40, 46)), sigma)
    return ((p - p.min()) / (p.max() - p.min())).astype(np.float32)


def _stop_after(monkeypatch, n: int):
    """Interrupt (as Ctrl-C does) once ``n`` blocks are in the ledger."""
    real, count = partial.PartialOutput.mark, []

    def mark(self, array, corner):
        real(self, array, corner)
        count.append(array)
        if len(count) == n:
            raise KeyboardInterrupt
    monkeypatch.setattr(partial.PartialOutput, "mark", mark)


def _count_writes(monkeypatch) -> list:
    real, written = partial.PartialOutput.mark, []
    monkeypatch.setattr(partial.PartialOutput, "mark",
                        lambda self, array, corner: (written.append(array),
                                                     real(self, array, corner)))
    return written


def test_full_disk_keeps_the_segmentation_for_resume(tmp_path, monkeypatch, cli_fails, digest):
    p = _prob()
    zarr.save_array(str(tmp_path / "prob.zarr"), p, zarr_format=3)
    whole = tmp_path / "whole" / "inst.zarr"
    whole.parent.mkdir()
    label_volume(p, whole, 0.55, 1, BLOCK)
    out = tmp_path / "inst.zarr"
    args = ["segment", "--input", str(tmp_path / "prob.zarr"), "--output", str(out),
            "--threshold", "0.55", "--block", ",".join(map(str, BLOCK))]
    real, count = partial.PartialOutput.mark, []

    def mark(self, array, corner):   # the 100th block's write fails as on a full disk
        count.append(1)
        if len(count) == 100:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, array, corner)
    with monkeypatch.context() as m:
        m.setattr(partial.PartialOutput, "mark", mark)
        cli_fails(args, "No space left on device); free space or fix permissions, then run "
                        "the same command again with --resume.")
    assert not out.exists() and partial.partial_path(out).is_dir()
    assert main(args + ["--resume"]) == 0
    assert digest(out) == digest(whole)


@pytest.mark.parametrize("name", ["inst.zarr", "inst.ome.zarr"])
def test_resumed_components_equal_an_uninterrupted_run(tmp_path, monkeypatch, digest, name):
    p = _prob()
    whole = tmp_path / "whole" / name
    whole.parent.mkdir()
    label_volume(p, whole, 0.55, 1, BLOCK)
    out = tmp_path / name
    for n in (30, 100):   # stopped in pass 1 (local labels), then in pass 3 (final labels)
        with monkeypatch.context() as m:
            _stop_after(m, n)
            with pytest.raises(KeyboardInterrupt):
                label_volume(p, out, 0.55, 1, BLOCK, resume=True)
        assert not out.exists() and partial.partial_path(out).is_dir()
    written = _count_writes(monkeypatch)
    summary = label_volume(p, out, 0.55, 1, BLOCK, resume=True)
    assert "labels-local" not in written               # pass 1 was finished
    assert 0 < len(written) < 75 and summary["blocks"] == 75
    assert not partial.partial_path(out).exists()
    assert digest(out) == digest(whole)


def test_resumed_watershed_equals_an_uninterrupted_run(tmp_path, monkeypatch, digest):
    p = _prob(sigma=2.0)
    whole = tmp_path / "whole" / "ws.zarr"
    whole.parent.mkdir()
    seeded_watershed(p, whole, 0.5, 0.6, 8, BLOCK)
    out = tmp_path / "ws.zarr"
    for n in (40, 60, 40):   # stopped in the seeds' passes, then while growing
        with monkeypatch.context() as m:
            _stop_after(m, n)
            with pytest.raises(KeyboardInterrupt):
                seeded_watershed(p, out, 0.5, 0.6, 8, BLOCK, resume=True)
    ledger = (partial.partial_path(out) / ".masktwins-segment" / "done.log").read_text()
    assert "\nlabels " in ledger and len(ledger.splitlines()) < 75 * 3   # grown in part
    seeded_watershed(p, out, 0.5, 0.6, 8, BLOCK, resume=True)
    assert digest(out) == digest(whole)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["whole", "ws.zarr"]


def _prob_zarr(tmp_path):
    path = tmp_path / "prob.zarr"
    zarr.create_array(store=str(path), shape=(14, 40, 46), dtype="float32",
                      chunks=(7, 20, 23))[:] = _prob()
    return path


def test_killed_segment_resumes_and_stopped_runs_are_kept(tmp_path, cli_fails, digest):
    """A real SIGKILL mid-run; the plain command then refuses to throw the unfinished labels
    away, --resume with other options is refused, and --resume finishes them."""
    prob = _prob_zarr(tmp_path)
    args = ["segment", "--input", str(prob), "--threshold", "0.55", "--block", "5,9,11"]
    (tmp_path / "whole").mkdir()
    whole = tmp_path / "whole" / "inst.zarr"
    assert main(args + ["--output", str(whole)]) == 0
    out = tmp_path / "inst.zarr"
    script = f"""
import os, signal
from masktwins_bio.data import partial
from masktwins_bio.cli import main
real, n = partial.PartialOutput.mark, []
def mark(self, array, corner):
    real(self, array, corner)
    n.append(1)
    if len(n) == 60:
        os.kill(os.getpid(), signal.SIGKILL)
partial.PartialOutput.mark = mark
main({args + ["--output", str(out)]!r})
"""
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    work = partial.partial_path(out) / ".masktwins-segment"
    ledger = (work / "done.log").read_text()
    cli_fails(args + ["--output", str(out)], "pass --resume to continue it or pass --overwrite")
    cli_fails(args[:4] + ["0.6"] + args[5:] + ["--output", str(out), "--resume"],
              "was started with other threshold")
    assert (work / "done.log").read_text() == ledger   # nothing touched
    assert main(args + ["--output", str(out), "--resume"]) == 0
    assert digest(out) == digest(whole)
    assert not partial.partial_path(out).exists()


def test_a_voxel_size_an_earlier_version_could_not_read_does_not_stop_a_resume(
        tmp_path, monkeypatch):
    """A segmentation of a plain predict .zarr was recorded with no voxel size (it was not read
    back before 2026-11-29); resumed now that it is, it must continue, not be refused."""
    p = _prob()
    out = tmp_path / "l.zarr"
    with monkeypatch.context() as m:
        _stop_after(m, 30)
        with pytest.raises(KeyboardInterrupt):
            label_volume(p, out, 0.55, 1, BLOCK)
    summary = label_volume(p, out, 0.55, 1, BLOCK, resume=True, voxel_size=(30.0, 8.0, 8.0))
    assert summary["blocks"] == 75 and out.is_dir()
