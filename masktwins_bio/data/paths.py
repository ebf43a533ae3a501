"""Output folders: created with a clear error when they cannot be, and cleaned up after a failure.

Only what the toolkit created is ever removed: :func:`make_parents` reports the folders it made,
and :func:`remove_new_empty_folders` removes folders that were not there before and are empty.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ..errors import InputError


def _missing_folders(folder: Path) -> tuple[list[Path], Path]:
    """The folders of ``folder``'s chain that do not exist (outermost first) and the nearest
    existing ancestor (or ``folder`` itself)."""
    missing = []
    node = folder
    while not os.path.lexists(node) and node.parent != node:
        missing.append(node)
        node = node.parent
    return missing[::-1], node


def make_parents(out: Path) -> list[Path]:
    """Create the folder that will hold ``out``; returns the folders created, outermost first.

    InputError naming ``out`` when a file is in the way or the location is not writable.
    """
    return _make(Path(out).parent, out)


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, outermost first."""
    return _make(Path(folder), folder)


def _make(folder: Path, out: Path) -> list[Path]:
    missing, existing = _missing_folders(folder)
    if not existing.is_dir():
        where = "" if existing == Path(out) else f", so '{out}' cannot be created inside it"
        raise InputError(f"'{existing}' is a file{where}; choose a writable location.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        remove_empty(missing)
        raise InputError(f"Cannot create '{out}' ({err.strerror}); choose a writable "
                         "location.") from None
    return missing


def make_folder(folder: Path, out: Path) -> None:
    """Create the single new folder ``folder`` (the hidden work copy of ``out``)."""
    try:
        folder.mkdir()
    except OSError as err:
        raise InputError(f"Cannot create '{out}' ({err.strerror}); choose a writable "
                         "location.") from None


def remove_empty(folders: list[Path]) -> None:
    """Remove the given folders innermost first, each only while it is empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or gone): it holds something worth keeping


def folders_under(top: Path) -> set[Path]:
    """Every folder below ``top`` (and ``top``), for :func:`remove_new_empty_folders`."""
    if not top.is_dir():
        return set()
    return {top, *(p for p in top.rglob("*") if p.is_dir() and not p.is_symlink())}


def remove_new_empty_folders(top: Path, before: set[Path]) -> None:
    """Remove the empty folders below ``top`` that are not in ``before``."""
    remove_empty([p for p in folders_under(top) if p not in before])


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this machine): temporaries named after their writer's
    pid are stale exactly when it does not."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # none, or no possible pid
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def writer_gone(pid: int) -> bool:
    """Whether a temporary named after its writer ``pid`` is stale: that process no longer runs,
    or it is this process (which starts its write again)."""
    return pid == os.getpid() or not process_alive(pid)


def remove_path(path: Path) -> None:
    """Delete a file, link or folder tree (a folder's contents too); missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an old ``out`` is removed only after the swap."""
    old = None
    if os.path.lexists(out):
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        remove_path(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        remove_path(old)


def write_json_atomic(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, written beside it and renamed in (never half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
