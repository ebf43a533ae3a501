"""Checks on an output path shared by ``predict``, ``segment`` and ``convert``, run before anything
is written.

An output is a zarr folder whose name ends in ``.zarr``. It must not be (or contain) one of the
job's own inputs, its folder must exist and be writable, and an existing path is only ever
replaced when it is a zarr store: a regular file or a folder of other data is never deleted, not
even with ``--overwrite``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


def is_zarr_dir(path: Path) -> bool:
    """True for a folder holding zarr (v2 or v3) metadata, i.e. one a toolkit wrote."""
    return path.is_dir() and any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))


def output_path(text, inputs=(), example: str = "pred.zarr", volumes=()) -> Path:
    """``text`` as a Path once its name, its folder and its distance from the inputs are fine.

    ``volumes`` are the volume specs the job reads, ``inputs`` other paths it reads (a
    checkpoint, whose run directory may hold outputs); ``example`` is an output name shown in
    the messages.
    """
    if text is None or not str(text).strip():
        raise InputError(f"An empty output path was given; give an output path ending in .zarr, "
                         f"e.g. '{example}'.")
    out = Path(os.path.expanduser(str(text)))
    if not out.name.lower().endswith(".zarr"):
        raise InputError(f"Output '{out}' must be a folder name ending in .zarr, e.g. "
                         f"'{example}'.")
    check_parent(out)
    check_not_an_input(out, [*volumes, *inputs])
    check_outside_volumes(out, volumes)
    return out


def check_parent(out: Path) -> None:
    """The folder that will hold ``out`` exists, is a folder, and (for a new output) is writable."""
    parent = out.parent
    if not parent.is_dir():
        # The nearest part of the path that exists says why: a file in the way, or nothing.
        blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise InputError(f"'{blocker}' is a file, not a folder, so it cannot hold the output "
                             f"'{out}'; choose another output path.")
        raise InputError(f"The folder '{parent}' of the output does not exist; create it or "
                         "choose another output path.")
    if not out.exists():
        check_writable(out)


def check_writable(out: Path) -> None:
    """A new output, or the replacement of an old one, is built beside it and renamed."""
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write to '{out.parent}' (permission denied); choose a "
                         "writable output location.")


def _path_of(spec: str) -> Path:
    """The file or folder a volume spec (``PATH[:KEY][#OPTION=N]``) or a plain path names."""
    from ..data.spec import parse_spec
    try:
        return parse_spec(spec).path.resolve()
    except InputError:  # a missing input is reported, with its own sentence, when it is opened
        return Path(os.path.expanduser(str(spec))).resolve()


def check_not_an_input(out: Path, inputs) -> None:
    """Writing ``out`` must not replace an input or a folder holding one (e.g. ``in.zarr``)."""
    target = out.resolve()
    for spec in inputs:
        if spec is None or not str(spec).strip():
            continue
        src = _path_of(str(spec))
        if target == src or target in src.parents:
            raise InputError(f"Output '{out}' would replace its own input '{spec}'; choose "
                             "another output path.")


def check_outside_volumes(out: Path, volumes) -> None:
    """An output inside a volume's folder (a zarr store, a folder of slices) would change that
    volume: a new array in a group makes it ambiguous, new files change a slice folder's
    fingerprint so that ``--resume`` is refused."""
    target = out.resolve()
    for spec in volumes:
        if spec is None or not str(spec).strip():
            continue
        src = _path_of(str(spec))
        if src in target.parents:
            raise InputError(f"Output '{out}' lies inside its input '{spec}', which it would "
                             "change; choose an output outside it.")


def check_replaceable(out: Path) -> None:
    """An existing ``out`` may be replaced only when it is a zarr store (or an empty folder)."""
    if out.is_symlink() or not out.is_dir():
        kind = "link" if out.is_symlink() else "file"
        raise InputError(f"'{out}' is a {kind}, not a zarr output, so it will not be replaced; "
                         "choose another output path.")
    if any(out.iterdir()) and not is_zarr_dir(out):
        raise InputError(f"'{out}' is a folder that holds no zarr data, so --overwrite will not "
                         "delete it; choose another output path.")


def check_new_output(out: Path, overwrite: bool) -> None:
    """For a job that cannot resume: ``out`` is free, or --overwrite may replace it."""
    if not (out.exists() or out.is_symlink()):
        return
    check_replaceable(out)
    if not overwrite:
        raise InputError(f"The output '{out}' exists; pass --overwrite to replace it or choose "
                         "another path.")
    check_writable(out)
