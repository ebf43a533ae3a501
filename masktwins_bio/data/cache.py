"""Small derived files stored next to the data they describe (intensity stats, foreground index).

``<data>.masktwins-<kind>-<tag>.<ext>`` sits beside the file or folder (so it moves with it); when
that folder is read-only it goes to the user cache (``$MASKTWINS_CACHE`` or the platform cache
dir). Each file records a fingerprint of the data (size and modification time of a file, or of a
folder's metadata files, and for a folder the count, total size, newest modification time and
names of the files under it: rewriting zarr chunks or slice files in place touches neither the
folder nor its metadata), so editing the data invalidates it. Writes are atomic (temp file +
rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .spec import parse_spec

_META_FILES = ("zarr.json", ".zarray", ".zattrs")


def fingerprint(path: Path) -> list:
    # Not a folder's own mtime: the names cover what it records (files added, removed or
    # renamed), and a slice moved away and back (a failed job's cause, fixed) matches again.
    if not path.is_dir():
        return _stats([path])
    return _stats([path / m for m in _META_FILES]) + [["files", *_tree_summary(path)]]


def _stats(paths) -> list:
    """[name, size, mtime_ns] of each of ``paths`` that exists."""
    return [[p.name, st.st_size, st.st_mtime_ns] for p in paths if p.exists()
            for st in [p.stat()]]


def legacy_fingerprint(path: Path) -> list:
    """The fingerprint as recorded before 2026-11-29 (a folder's own size and mtime, and no
    file names), so that a job started then still resumes when its input is unchanged."""
    if not path.is_dir():
        return _stats([path])
    return (_stats([path, *(path / m for m in _META_FILES)])
            + [["files", *_tree_summary(path)[:3]]])


def same_files(recorded, path: Path) -> bool:
    """Whether ``recorded`` (a fingerprint read back from JSON) still describes ``path``, in
    the current format or the earlier one."""
    return recorded in (fingerprint(path), legacy_fingerprint(path))


def _tree_summary(folder: Path) -> list:
    """[count, total bytes, newest mtime_ns, digest of the sorted relative names] of the files
    under ``folder`` (one stat each: a few ms for thousands of chunk or slice files). The names
    matter because slices are stacked in name order."""
    count = size = newest = 0
    names = []
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                    continue
                try:
                    st = entry.stat()
                except OSError:  # a file removed while we walk
                    continue
                count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
                names.append(os.path.relpath(entry.path, folder))
    digest = hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:16]
    return [count, size, newest, digest]


def user_cache_dir() -> Path:
    env = os.environ.get("MASKTWINS_CACHE")
    if env:
        return Path(env)
    try:
        import platformdirs
        return Path(platformdirs.user_cache_dir("masktwins-bio"))
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "masktwins-bio"


def _candidates(spec: str, kind: str, ext: str) -> list[Path]:
    parsed = parse_spec(spec)
    detail = f"{parsed.key}|{sorted(parsed.options.items())}|{kind}"
    tag = hashlib.sha1(detail.encode()).hexdigest()[:8]
    name = f"{parsed.path.name}.masktwins-{kind}-{tag}.{ext}"
    full = hashlib.sha1(str(parsed.path.resolve()).encode()).hexdigest()[:16]
    return [parsed.path.resolve().parent / name, user_cache_dir() / f"{full}-{name}"]


def load(spec: str, kind: str, ext: str = "json"):
    """The cached payload for ``spec`` (a dict for json, the file path for npz), or None."""
    fp = fingerprint(parse_spec(spec).path)
    for path in _candidates(spec, kind, ext):
        if not path.exists():
            continue
        try:
            if ext == "json":
                record = json.loads(path.read_text())
                if record.get("fingerprint") == fp:
                    return record["payload"]
            else:
                import numpy as np
                with np.load(path, allow_pickle=False) as f:
                    if json.loads(str(f["fingerprint"])) == fp:
                        return {k: f[k] for k in f.files if k != "fingerprint"}
        except (OSError, ValueError, KeyError):
            continue  # unreadable or stale cache: recompute
    return None


def save(spec: str, kind: str, payload, ext: str = "json") -> Path | None:
    """Store ``payload`` beside the data, else in the user cache; None when neither is writable."""
    fp = fingerprint(parse_spec(spec).path)
    for path in _candidates(spec, kind, ext):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                if ext == "json":
                    fh.write(json.dumps({"fingerprint": fp, "payload": payload}).encode())
                else:
                    import numpy as np
                    np.savez(fh, fingerprint=json.dumps(fp), **payload)
            os.replace(tmp, path)
            return path
        except OSError:
            try:
                os.unlink(tmp)
            except (OSError, UnboundLocalError):
                pass
            continue
    return None
