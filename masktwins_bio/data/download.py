"""Download, verify, extract and convert registry datasets; idempotent and safe to interrupt.

``download_dataset(name)``:

1. fetches every file with a progress bar into ``<root>/<name>/downloads/`` (``.part`` files
   resume with HTTP range requests; mirrors are tried in turn; ``file://`` URLs work too),
2. checks size and sha256 (a mismatch deletes the file and is an error; a file whose hash is not
   known is refused unless ``allow_unverified``, and is then recorded as unverified),
3. extracts zip/tar archives into a temporary folder, refusing absolute paths, ``..``, links
   and device files (once per archive: ``extracted/.done-<file>.json`` records the sha256 of
   the archive each extraction came from),
4. converts each split to a hidden ``.new-<split>.ome.zarr`` (labels under ``labels/mito``)
   and checks its shape, then renames the splits to ``<split>.ome.zarr``, and
5. writes ``manifest.json`` last: a dataset counts as present only when that exists.

Any failure leaves no output that looks complete, and a present dataset that is rebuilt
(``force``) stays present until its new copy is ready. Running it again resumes every step:
the ``.part`` downloads, the extractions already done, and an unfinished conversion block by
block (``convert``'s resume, which starts again only if its inputs changed).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import InputError, JobStopped
from .convert import convert_volume
from .partial import partial_path
from .paths import (folders_under, make_folders, remove_empty, remove_new_empty_folders,
                    swap_into_place, write_json_atomic)
from .registry import (MANIFEST, DatasetEntry, RemoteFile, data_root, dataset_dir, get_entry,
                       is_present, split_path)

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_url(url: str, part: Path, show: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its size when the server allows)."""
    from tqdm.auto import tqdm
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "masktwins-bio"})
    if have and url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part file is already complete
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        append = have and status == 206
        total = response.headers.get("Content-Length")
        total = int(total) + (have if append else 0) if total else None
        with open(part, "ab" if append else "wb") as fh, \
                tqdm(total=total, initial=have if append else 0, unit="B", unit_scale=True,
                     desc=part.name.removesuffix(".part"), disable=None if show else True,
                     leave=False) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                fh.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size < total:
        raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")


def fetch(remote: RemoteFile, folder: Path, allow_unverified: bool = False, show: bool = True,
          timeout: float = 60.0) -> tuple[Path, bool]:
    """Download ``remote`` into ``folder``; returns (path, verified by a known sha256)."""
    if remote.sha256 is None and not allow_unverified:
        raise InputError(f"No sha256 is recorded for '{remote.name}', so it cannot be verified; "
                         "pass --allow-unverified to download it anyway.")
    final, part = folder / remote.name, folder / f"{remote.name}.part"
    final.parent.mkdir(parents=True, exist_ok=True)  # names may hold folders: stack1/raw/00.tif
    if final.exists():
        if remote.sha256 is None or sha256_of(final) == remote.sha256:
            return final, remote.sha256 is not None
        final.unlink()  # stale or corrupt: fetch again
    errors = []
    for url in remote.urls:
        try:
            _fetch_url(url, part, show, timeout)
        # HTTPException: a server that cuts a chunked response short (IncompleteRead) is no
        # OSError, and must not end the download with a traceback before the other mirrors
        except (OSError, urllib.error.URLError, ValueError, http.client.HTTPException) as err:
            errors.append(f"{url}: {err!r}" if isinstance(err, http.client.IncompleteRead)
                          else f"{url}: {err}")
            continue  # keep the .part: the next run (or mirror with the same bytes) resumes
        size = part.stat().st_size
        if remote.size is not None and size != remote.size:
            part.unlink()
            errors.append(f"{url}: {size} bytes instead of {remote.size}")
            continue
        digest = sha256_of(part)
        if remote.sha256 is not None and digest != remote.sha256:
            part.unlink()
            errors.append(f"{url}: sha256 {digest[:12]}… instead of {remote.sha256[:12]}…")
            continue
        os.replace(part, final)
        return final, remote.sha256 is not None
    raise InputError(f"Could not download a verified '{remote.name}' "
                     f"({'; '.join(errors)}); check the network and run the command again.")


def _safe_members(names: list[str], archive: Path) -> None:
    for name in names:
        p = PurePosixPath(name.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
            raise InputError(f"Archive '{archive.name}' contains the unsafe path '{name}'; it was "
                             "not extracted (delete the archive if you do not trust it).")


def extract(archive: Path, dest: Path) -> Path:
    """Extract a zip or tar archive into ``dest`` (created atomically); refuses unsafe members."""
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _safe_members(zf.namelist(), archive)
                bad = zf.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"bad CRC in {bad}")
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _safe_members([m.name for m in members], archive)
                for m in members:
                    if not (m.isfile() or m.isdir()):
                        raise InputError(f"Archive '{archive.name}' contains a link or special "
                                         f"file '{m.name}'; it was not extracted.")
                tf.extractall(tmp, filter="data")
        else:
            raise InputError(f"'{archive.name}' is not a readable zip or tar archive; delete it "
                             "and download again.")
    except InputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"Archive '{archive.name}' is corrupt ({err}); delete it and download "
                         "again.") from None
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _link_slices(folder: Path, z_range: tuple, dest: Path) -> Path:
    """A folder of links to the slices [start, stop) of ``folder`` (in natural order)."""
    from .formats import IMAGE_SUFFIXES
    from .formats.images import natural_key
    # the files a slice folder reads, and only those: a stray Thumbs.db or README in an
    # archive would otherwise shift every slice of the range
    files = sorted((p for p in folder.iterdir() if not p.name.startswith(".")
                    and p.name.lower().endswith(IMAGE_SUFFIXES)),
                   key=lambda p: natural_key(p.name))[z_range[0]:z_range[1]]
    wanted = {f.name: str(f.resolve()) for f in files}
    if dest.is_dir() and {p.name: os.readlink(p) for p in dest.iterdir()
                          if p.is_symlink()} == wanted and len(os.listdir(dest)) == len(wanted):
        return dest  # kept as it is: a stopped conversion of it can resume
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in files:
        os.symlink(f.resolve(), dest / f.name)
    return dest


def _write_manifest(folder: Path, record: dict) -> None:
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, folder / MANIFEST)


def _make_synthetic(entry: DatasetEntry, work: Path) -> None:
    from .synthetic import write_domain
    shape = entry.splits["train"].shape
    write_domain(work, entry.synthetic, shape, seed=0, fmt="png")


def download_dataset(name: str, root=None, *, registry: dict | None = None,
                     allow_unverified: bool = False, keep_downloads: bool = False,
                     force: bool = False, show: bool = True) -> Path:
    """Make ``<root>/<name>`` present (see module doc) and return that folder.

    With ``force`` a present dataset stays present (old manifest and data) until the new copy
    is complete and verified; a failure leaves it as it was.
    """
    entry = get_entry(name, registry)
    root_path = data_root(root, must_exist=root is not None)
    folder = dataset_dir(entry, root_path)
    if is_present(entry, root_path) and not force:
        return folder
    created = make_folders(folder)
    downloads, work = folder / "downloads", folder / "extracted"
    before = {top: folders_under(top) for top in (downloads, work)}
    staged = {s: _staged_path(folder, s) for s in entry.splits}
    try:
        for path in staged.values():  # left by an interrupted run
            shutil.rmtree(path, ignore_errors=True)
        files = _fetch_all(entry, downloads, work, allow_unverified, show)
        splits = _convert_splits(entry, work, root_path, staged, show)
    except BaseException as err:
        for path in staged.values():
            shutil.rmtree(path, ignore_errors=True)
            # a Ctrl-C, a full disk or a vanished file keeps it for the next run
            if not isinstance(err, (KeyboardInterrupt, JobStopped)):
                shutil.rmtree(partial_path(path), ignore_errors=True)
        for top, old in before.items():  # folders made for files that never arrived
            remove_new_empty_folders(top, old)
        remove_empty(created)
        raise
    _install(entry, folder, root_path, staged)
    _write_manifest(folder, {"name": entry.name, "files": files, "splits": splits,
                             "voxel_size": entry.voxel_size, "licence": entry.licence,
                             "citation": entry.citation})
    shutil.rmtree(work, ignore_errors=True)
    if not keep_downloads:
        shutil.rmtree(downloads, ignore_errors=True)
    return folder


def _fetch_all(entry: DatasetEntry, downloads: Path, work: Path, allow_unverified: bool,
               show: bool) -> dict:
    """Fetch, verify and extract (or link) every file into ``work``; the manifest's records."""
    files = {}
    if entry.synthetic and not _done(work, "synthetic", entry.name):
        shutil.rmtree(work, ignore_errors=True)
        _make_synthetic(entry, work)
        _mark_done(work, "synthetic", entry.name)
    for remote in entry.files:
        path, verified = fetch(remote, downloads, allow_unverified, show)
        sha = remote.sha256 or sha256_of(path)
        files[remote.name] = {"sha256": sha, "verified": verified}
        if remote.extract and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
            if not _done(work, remote.name, sha):  # an earlier run may have extracted it
                _done_record(work, remote.name).unlink(missing_ok=True)
                _extract_into(path, work / f".x-{remote.name}", work)
                _mark_done(work, remote.name, sha)
        elif remote.extract:
            raise InputError(f"'{remote.name}' is not a readable zip or tar archive; delete it "
                             "and download again.")
        else:
            _link_into(path, work / remote.name)
    return files


def _done_record(work: Path, name: str) -> Path:
    return work / f".done-{name}.json"


def _done(work: Path, name: str, sha256: str) -> bool:
    """Whether ``work`` holds what ``name`` (an archive with this sha256) extracts to. Unchanged
    extracted files keep their modification times, so a stopped conversion of them resumes."""
    try:
        return json.loads(_done_record(work, name).read_text()).get("sha256") == sha256
    except (OSError, ValueError, AttributeError):
        return False


def _mark_done(work: Path, name: str, sha256: str) -> None:
    write_json_atomic(_done_record(work, name), {"sha256": sha256})


def _extract_into(archive: Path, tmp: Path, work: Path) -> None:
    extract(archive, tmp)
    _merge(tmp, work)
    shutil.rmtree(tmp)


def _merge(src: Path, dest: Path) -> None:
    """Move the tree ``src`` into ``dest``: folders both hold are merged, files replaced.
    Archives of one dataset may share a top-level folder (images in one, labels in another),
    so a folder already extracted must not be replaced wholesale."""
    dest.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        target = dest / child.name
        if child.is_dir() and target.is_dir() and not target.is_symlink():
            _merge(child, target)
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(child, target)


def _link_into(path: Path, target: Path) -> None:
    """``target`` as a hard link to (or, across devices, a copy of) ``path``; left untouched
    when it already is one, so that its modification time stays that of the download."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        st, sp = target.stat(), path.stat()
        same_copy = (st.st_size, st.st_mtime_ns) == (sp.st_size, sp.st_mtime_ns)
        if os.path.samefile(target, path) or same_copy:
            return
        target.unlink()  # a link to a file downloaded again since
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)


def _staged_path(folder: Path, split_name: str) -> Path:
    """Where a split is built before it replaces ``<split>.ome.zarr`` (a hidden sibling)."""
    return folder / f".new-{split_name}.ome.zarr"


def _convert_splits(entry: DatasetEntry, work: Path, root: Path, staged: dict,
                    show: bool) -> dict:
    """Convert each split to its path in ``staged`` and check its shape."""
    from .volumes import open_volume
    splits = {}
    for split_name, spl in entry.splits.items():
        image, labels = work / spl.image, (work / spl.labels) if spl.labels else None
        for p in (image, labels):
            if p is not None and not Path(str(p).split("#")[0]).exists():
                raise InputError(f"The download of '{entry.name}' has no '{p.relative_to(work)}'; "
                                 "the files may have changed upstream, so report this.")
        if spl.z_range:
            image = _link_slices(image, spl.z_range, work / f".{split_name}-image")
        out = staged[split_name]
        # resume + overwrite: continue what a stopped run converted, if it was the same
        try:
            convert_volume(str(image), out, overwrite=True, resume=True,
                           voxel_size=entry.voxel_size,
                           labels={"mito": str(labels)} if labels else None,
                           label_rule=spl.label_rule, show_progress=show)
        except JobStopped as err:
            raise type(err)(err.path, err.reason, "run the download again: it continues "
                            "where it stopped") from None
        with open_volume(out) as vol:
            shape = vol.shape
        if spl.shape and tuple(spl.shape) != tuple(shape):
            raise InputError(f"'{entry.name}' {split_name} has shape {shape}, expected "
                             f"{tuple(spl.shape)}; the files may have changed upstream.")
        splits[split_name] = {"path": split_path(entry, split_name, root).name,
                              "shape": list(shape)}
    return splits


def _install(entry: DatasetEntry, folder: Path, root: Path, staged: dict) -> None:
    """Put the verified splits in place. The old manifest goes first, so an interruption
    between the renames leaves a dataset that is not present (and rebuilt next time), never
    one that mixes two copies under a manifest."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for split_name, path in staged.items():
        swap_into_place(path, split_path(entry, split_name, root))
