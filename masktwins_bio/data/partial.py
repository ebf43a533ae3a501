"""An unfinished conversion: the hidden folder it is written to, and what lets it resume.

``convert`` writes ``OUT.zarr`` into the hidden sibling ``.OUT.zarr.partial`` and renames it into
place when complete (``segment`` does the same, with ``.masktwins-segment/``). Inside,
``.masktwins-convert/`` holds::

    lock          flock-ed while a process writes (the kernel drops it when that process dies,
                  even by SIGKILL, so a stale folder is told apart from a live one)
    run.json      what is converted: inputs with their size and modification time, options
    done.log      "ARRAY z y x" per finished block, appended after the block is written
    samples/      the intensity samples of each finished image block (.npy), so the statistics
                  of a resumed run are those of an uninterrupted one (segment: the component
                  sizes of each labelled block)

and is removed just after the rename. A block written but not yet listed (a kill in between)
is simply written again, with the same bytes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from .cache import fingerprint, same_files
from .paths import make_folder, swap_into_place, write_json_atomic
from .spec import parse_spec

# What each job calls its unfinished output in messages.
JOBS = {"convert": "conversion", "segment": "segmentation"}


def partial_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def describe_inputs(specs: dict) -> dict:
    """{role: {"path", "key", "options", "files"}}: what a resumed run must find unchanged
    (the absolute path, so a resume from another folder still matches)."""
    described = {}
    for role, spec in specs.items():
        parsed = parse_spec(str(spec))
        described[role] = {"path": str(parsed.path.resolve()), "key": parsed.key,
                           "options": dict(parsed.options), "files": fingerprint(parsed.path)}
    return described


def _same_inputs_as(recorded: dict | None, run: dict) -> dict | None:
    """``recorded`` with each input fingerprint that still describes its input (perhaps in the
    format of an earlier version) replaced by the current one, so the two compare equal."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("inputs"), dict):
        return recorded
    inputs = dict(recorded["inputs"])
    for role, now in (run.get("inputs") or {}).items():
        before = inputs.get(role)
        if (isinstance(before, dict) and isinstance(now, dict) and before.get("path") ==
                now.get("path") and same_files(before.get("files"), Path(now["path"]))):
            inputs[role] = {**before, "files": now["files"]}
    return {**recorded, "inputs": inputs}


class PartialOutput:
    """The hidden folder of one conversion (or segmentation), claimed (locked) by this process."""

    def __init__(self, out: Path, job: str = "convert"):
        self.out, self.job, self.what = Path(out), job, JOBS[job]
        self.path = partial_path(self.out)
        self.work = self.path / f".masktwins-{job}"
        self.format = f"masktwins-bio/{job}-1"
        self._lock = None

    # -- claiming ------------------------------------------------------------------------------
    def open(self, run: dict, resume: bool, overwrite: bool) -> bool:
        """Claim the folder for ``run``; True when an unfinished run is continued.

        An unfinished folder left by a stopped run is continued with ``resume`` (if it converts
        the same thing), replaced with ``overwrite``, and otherwise refused, so that hours of
        conversion are never thrown away unasked. With both, a matching run is continued and
        any other replaced (what ``download`` does)."""
        run = json.loads(json.dumps(run))  # as it reads back (tuples become lists)
        if os.path.lexists(self.path):
            self._claim_existing()
            recorded = _same_inputs_as(self._recorded(), run)
            if isinstance(recorded, dict) and "voxel_size" in recorded \
                    and recorded["voxel_size"] is None:
                # metadata an earlier version could not read (a plain zarr's or a 2D image's
                # voxel size): no reason to refuse the resume, whose output keeps its own
                recorded = {**recorded, "voxel_size": run.get("voxel_size")}
            if resume and recorded is not None and (recorded == run or not overwrite):
                if recorded != run:
                    self.close()
                    differ = sorted(k for k in set(run) | set(recorded)
                                    if run.get(k) != recorded.get(k))
                    raise InputError(
                        f"The unfinished {self.what} to '{self.out}' was started with other "
                        f"{', '.join(differ)}; run the same command again, or pass --overwrite "
                        "to start again.")
                return True
            if not overwrite:
                self.close()
                what = ("cannot be resumed (it has no record)" if resume
                        else "exists (a stopped run)")
                hint = "" if resume else "pass --resume to continue it or "
                raise InputError(f"An unfinished {self.what} to '{self.out}' {what}; {hint}"
                                 "pass --overwrite to start again.")
            self.close()
            shutil.rmtree(self.path)
        make_folder(self.path, self.out)
        (self.work / "samples").mkdir(parents=True)
        self._claim_existing()
        write_json_atomic(self.work / "run.json", {"format": self.format, **run})
        return False

    def _claim_existing(self) -> None:
        import fcntl
        self.work.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.work / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(f"Another {self.job} is writing '{self.out}' right now; wait for it "
                             "to finish or stop it.") from None
        self._lock = fd

    def _recorded(self) -> dict | None:
        try:
            data = json.loads((self.work / "run.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.pop("format", None) != self.format:
            return None
        return data

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    # -- ledger --------------------------------------------------------------------------------
    def done(self, array: str) -> set:
        """Corners (z, y, x) of the blocks of ``array`` already written."""
        corners = set()
        try:
            lines = (self.work / "done.log").read_text().splitlines()
        except OSError:
            return corners
        for line in lines:
            parts = line.split()
            if len(parts) == 4 and parts[0] == array:
                try:
                    corners.add(tuple(int(p) for p in parts[1:]))
                except ValueError:
                    continue  # a line torn by a kill
        return corners

    def mark(self, array: str, corner: tuple) -> None:
        with open(self.work / "done.log", "a") as fh:
            fh.write(f"{array} {corner[0]} {corner[1]} {corner[2]}\n")

    def save_sample(self, corner: tuple, part: np.ndarray, group: str = "") -> None:
        path = self._sample_path(corner, group)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, part)
        os.replace(tmp, path)

    def load_sample(self, corner: tuple, group: str = "") -> np.ndarray:
        return np.load(self._sample_path(corner, group))

    def _sample_path(self, corner: tuple, group: str) -> Path:
        return self.work / "samples" / f"{group}{corner[0]}_{corner[1]}_{corner[2]}.npy"

    # -- finishing -----------------------------------------------------------------------------
    def discard(self) -> None:
        """Remove the whole folder (a conversion that failed on its data)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def finish(self) -> None:
        """Rename the complete output into place, then drop the bookkeeping inside it.

        In this order a kill can lose nothing: before the rename the hidden folder still holds
        its ledger, so ``--resume`` finds every block done and only renames; after it, the
        output is complete and at most keeps a hidden ``.masktwins-*`` folder, which readers
        ignore. (Dropping the ledger first left, after a kill, a complete output that could
        neither be resumed nor found.)"""
        swap_into_place(self.path, self.out)
        self.close()
        shutil.rmtree(self.out / self.work.name, ignore_errors=True)
