"""convert --resume: a stopped conversion continues and gives the bytes of an uninterrupted one;
an unfinished one is never thrown away unasked, nor taken over from a live writer."""
from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from masktwins_bio.data import ome_zarr, partial
from masktwins_bio.data.convert import convert_volume
from masktwins_bio.data.stats import volume_stats
from masktwins_bio.errors import InputError

VOL = np.random.default_rng(3).integers(0, 256, (12, 64, 80), dtype=np.uint8)
OPTIONS = dict(chunks=(2, 16, 16), levels=2, show_progress=False)


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setattr(ome_zarr, "SHARD_TARGET_BYTES", 2_048)  # 30 blocks at level 0
    monkeypatch.setattr(ome_zarr, "BLOCK_BYTES", 4_000)
    tifffile.imwrite(tmp_path / "img.tif", VOL)
    tifffile.imwrite(tmp_path / "mask.tif", (VOL > 180).astype(np.uint8) * 255)
    return tmp_path


def _convert(data, out, **kw):
    return convert_volume(data / "img.tif", out, labels={"mito": str(data / "mask.tif")},
                          **OPTIONS, **kw)


def _stop_after(monkeypatch, n: int):
    """Interrupt the conversion (as Ctrl-C does) once ``n`` blocks are recorded."""
    real, count = partial.PartialOutput.mark, []

    def mark(self, array, corner):
        real(self, array, corner)
        count.append(1)
        if len(count) == n:
            raise KeyboardInterrupt
    monkeypatch.setattr(partial.PartialOutput, "mark", mark)


def test_resumed_conversion_equals_an_uninterrupted_one(data, monkeypatch, digest):
    whole = _convert(data, data / "whole" / "o.ome.zarr")  # same name: same metadata
    out = data / "o.ome.zarr"
    for n in (7, 40):  # 78 blocks: stopped in the image, then in the labels
        with monkeypatch.context() as m:
            _stop_after(m, n)
            with pytest.raises(KeyboardInterrupt):
                _convert(data, out, resume=True)
        assert not out.exists() and partial.partial_path(out).is_dir()
    written = []
    real = partial.PartialOutput.mark
    monkeypatch.setattr(partial.PartialOutput, "mark",
                        lambda self, array, corner: (written.append(array),
                                                     real(self, array, corner)))
    _convert(data, out, resume=True)
    assert len(written) == 78 - 7 - 40  # only the blocks not yet written
    assert not partial.partial_path(out).exists()
    assert digest(out) == digest(whole)  # every byte, statistics included
    assert volume_stats(out) == volume_stats(whole)


def _disk_full_after(monkeypatch, n: int):
    """The ``n``-th block's write fails as on a full disk (ENOSPC)."""
    real, count = partial.PartialOutput.mark, []

    def mark(self, array, corner):
        count.append(1)
        if len(count) == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, array, corner)
    monkeypatch.setattr(partial.PartialOutput, "mark", mark)


def test_full_disk_keeps_the_conversion_for_resume(data, monkeypatch, cli_fails, digest):
    whole = _convert(data, data / "whole" / "o.ome.zarr")
    out = data / "o.ome.zarr"
    base = ["convert", str(data / "img.tif"), str(out), "--labels", f"mito={data / 'mask.tif'}",
            "--chunks", "2,16,16", "--levels", "2", "--quiet"]
    with monkeypatch.context() as m:
        _disk_full_after(m, 20)
        cli_fails(base, "No space left on device); free space or fix permissions, then run "
                        "the same command again with --resume.")
    assert not out.exists()
    done = (partial.partial_path(out) / ".masktwins-convert" / "done.log").read_text()
    assert len(done.splitlines()) == 19
    with monkeypatch.context():
        from masktwins_bio.cli import main
        assert main(base + ["--resume"]) == 0
    assert digest(out) == digest(whole)


def test_killed_conversion_resumes(data, digest, monkeypatch):
    """A real SIGKILL mid-write: the lock dies with the process and --resume continues."""
    whole = _convert(data, data / "whole" / "k.ome.zarr")
    out = data / "k.ome.zarr"
    script = f"""
import os, signal
from masktwins_bio.data import ome_zarr, partial
from masktwins_bio.cli import main
ome_zarr.SHARD_TARGET_BYTES, ome_zarr.BLOCK_BYTES = 2_048, 4_000
real, n = partial.PartialOutput.mark, []
def mark(self, array, corner):
    real(self, array, corner); n.append(1)
    if len(n) == 25: os.kill(os.getpid(), signal.SIGKILL)
partial.PartialOutput.mark = mark
main(["convert", r"{data / 'img.tif'}", r"{out}", "--labels", r"mito={data / 'mask.tif'}",
      "--chunks", "2,16,16", "--levels", "2", "--quiet"])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert partial.partial_path(out).is_dir() and not out.exists()
    monkeypatch.chdir(data)  # resumed from the data folder, with relative paths
    convert_volume("img.tif", "k.ome.zarr", labels={"mito": "mask.tif"}, resume=True, **OPTIONS)
    for part in ("0", "1", "labels"):  # the root metadata records the input as it was given
        assert digest(out / part) == digest(whole / part)
    assert volume_stats(out) == volume_stats(whole)


def test_unfinished_conversion_is_kept_until_resumed_or_overwritten(data, monkeypatch,
                                                                    cli_fails):
    out = data / "u.ome.zarr"
    with monkeypatch.context() as m:
        _stop_after(m, 5)
        with pytest.raises(KeyboardInterrupt):
            _convert(data, out)
    work = partial.partial_path(out)
    marked = (work / ".masktwins-convert" / "done.log").read_text()
    base = ["convert", str(data / "img.tif"), str(out), "--labels", f"mito={data / 'mask.tif'}",
            "--chunks", "2,16,16", "--levels", "2", "--quiet"]
    cli_fails(base, "pass --resume to continue it or pass --overwrite")
    other_chunks = [("4,16,16" if a == "2,16,16" else a) for a in base]
    cli_fails(other_chunks + ["--resume"], "was started with other chunks")
    assert (work / ".masktwins-convert" / "done.log").read_text() == marked  # nothing touched
    # --resume --overwrite continues the same conversion ...
    with monkeypatch.context() as m:
        _stop_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            _convert(data, out, resume=True, overwrite=True)
    assert len((work / ".masktwins-convert" / "done.log").read_text().splitlines()) == 7
    # ... and starts another one again from nothing, as --overwrite alone does
    with monkeypatch.context() as m:
        _stop_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            convert_volume(data / "img.tif", out, labels={"mito": str(data / "mask.tif")},
                           chunks=(4, 16, 16), levels=2, show_progress=False, resume=True,
                           overwrite=True)
    assert len((work / ".masktwins-convert" / "done.log").read_text().splitlines()) == 2
    with monkeypatch.context() as m:
        _stop_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            _convert(data, out, overwrite=True)
    assert len((work / ".masktwins-convert" / "done.log").read_text().splitlines()) == 3


def test_a_live_writer_is_never_taken_over(data, monkeypatch, cli_fails):
    out = data / "l.ome.zarr"
    with monkeypatch.context() as m:
        _stop_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            _convert(data, out)
    lock = partial.partial_path(out) / ".masktwins-convert" / "lock"
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running convert holds it
    try:
        for flag in ([], ["--resume"], ["--overwrite"]):
            cli_fails(["convert", str(data / "img.tif"), str(out), "--quiet", *flag],
                      "Another convert is writing")
    finally:
        os.close(fd)
    assert partial.partial_path(out).is_dir()


def test_failed_conversion_leaves_nothing_and_resume_without_partial_starts(data):
    tifffile.imwrite(data / "ids.tif", VOL.astype(np.uint16) * 300)  # fails mid-write
    with pytest.raises(InputError, match="cannot be binarised"):
        convert_volume(data / "img.tif", data / "f.zarr", labels={"m": str(data / "ids.tif")},
                       show_progress=False, resume=True)
    assert not [p for p in data.iterdir() if p.name.startswith(".f.zarr")]
    out = convert_volume(data / "img.tif", data / "g.zarr", show_progress=False, resume=True)
    assert out.is_dir() and not partial.partial_path(out).exists()


def test_a_kill_while_the_output_is_renamed_into_place_loses_nothing(data, monkeypatch, digest):
    whole = _convert(data, data / "whole" / "o.ome.zarr")
    out = data / "o.ome.zarr"
    with monkeypatch.context() as m:  # every block written, stopped at the final rename
        m.setattr(partial, "swap_into_place",
                  lambda tmp, dst: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            _convert(data, out)
    written = []
    real = partial.PartialOutput.mark
    monkeypatch.setattr(partial.PartialOutput, "mark",
                        lambda self, array, corner: (written.append(array),
                                                     real(self, array, corner)))
    _convert(data, out, resume=True)  # the ledger survived: nothing to redo
    assert written == []
    assert digest(out) == digest(whole)
    assert not list(out.glob(".masktwins-*"))


def test_a_vanished_input_slice_is_named_and_the_conversion_kept(data, monkeypatch,
                                                                 cli_fails, digest):
    import imageio.v3 as iio
    tmp_path = data  # small blocks: the slices are read block by block
    slices = tmp_path / "slices"
    slices.mkdir()
    for z in range(VOL.shape[0]):
        iio.imwrite(slices / f"s{z:02d}.png", VOL[z])
    args = ["--chunks", "2,16,16", "--quiet"]
    from masktwins_bio.cli import main
    assert main(["convert", str(slices), str(tmp_path / "whole" / "o.ome.zarr")] + args) == 0
    out = tmp_path / "o.ome.zarr"
    real, n = partial.PartialOutput.mark, []

    def mark(self, array, corner):  # someone moves the last slice away while blocks are written
        real(self, array, corner)
        n.append(1)
        if len(n) == 3:
            os.replace(slices / "s11.png", tmp_path / "s11.png")
    with monkeypatch.context() as m:
        m.setattr(partial.PartialOutput, "mark", mark)
        cli_fails(["convert", str(slices), str(out)] + args,
                  f"Cannot read '{slices / 's11.png'}' (No such file or directory); put the "
                  "input back or make it readable, then run the same command again with "
                  "--resume.")
    assert (partial.partial_path(out) / ".masktwins-convert" / "done.log").is_file()
    os.replace(tmp_path / "s11.png", slices / "s11.png")  # back, as it was
    assert main(["convert", str(slices), str(out), "--resume"] + args) == 0
    assert digest(out / "0") == digest(tmp_path / "whole" / "o.ome.zarr" / "0")


def test_a_conversion_recorded_by_an_earlier_version_still_resumes(data, monkeypatch, digest):
    """Input fingerprints of folders changed format (2026-11-29): a stopped conversion whose
    run.json holds the earlier form resumes while its input is unchanged, and only then."""
    import json

    import imageio.v3 as iio

    from masktwins_bio.data.cache import legacy_fingerprint
    slices = data / "slices"
    slices.mkdir()
    for z in range(VOL.shape[0]):
        iio.imwrite(slices / f"s{z:02d}.png", VOL[z])
    whole = convert_volume(slices, data / "whole" / "o.ome.zarr", **OPTIONS)
    out = data / "o.ome.zarr"
    with monkeypatch.context() as m:
        _stop_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            convert_volume(slices, out, **OPTIONS)
    record = partial.partial_path(out) / ".masktwins-convert" / "run.json"
    run = json.loads(record.read_text())
    run["inputs"]["image"]["files"] = legacy_fingerprint(slices)
    record.write_text(json.dumps(run))
    convert_volume(slices, out, resume=True, **OPTIONS)
    assert digest(out / "0") == digest(whole / "0")

    with monkeypatch.context() as m:  # the same record, but a slice rewritten since
        _stop_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            convert_volume(slices, data / "p.ome.zarr", **OPTIONS)
    record = partial.partial_path(data / "p.ome.zarr") / ".masktwins-convert" / "run.json"
    run = json.loads(record.read_text())
    run["inputs"]["image"]["files"] = legacy_fingerprint(slices)
    record.write_text(json.dumps(run))
    iio.imwrite(slices / "s03.png", VOL[3] // 2)
    with pytest.raises(InputError, match="was started with other inputs"):
        convert_volume(slices, data / "p.ome.zarr", resume=True, **OPTIONS)
