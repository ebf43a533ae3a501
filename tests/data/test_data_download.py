"""download against a local HTTP server: verified, resumable, safe, idempotent, all-or-nothing."""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from masktwins_bio.cli import main
from masktwins_bio.data import registry as reg
from masktwins_bio.data.download import download_dataset
from masktwins_bio.data.registry import DatasetEntry, RemoteFile, Split, resolve
from masktwins_bio.data.volumes import load_labels, open_volume
from masktwins_bio.errors import InputError

SHAPE = (3, 16, 20)
RNG = np.random.default_rng(3)
IMG = RNG.integers(0, 256, SHAPE, dtype=np.uint8)
MASK = (RNG.random(SHAPE) > 0.8).astype(np.uint8) * 255


def _zip(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


IMAGES_ZIP = _zip({f"ds/raw/{z:02d}.png": _png(IMG[z]) for z in range(3)})
MASKS_ZIP = _zip({f"ds/mask/{z:02d}.png": _png(MASK[z]) for z in range(3)})
GOOD = _zip({**{f"ds/raw/{z:02d}.png": _png(IMG[z]) for z in range(3)},
             **{f"ds/mask/{z:02d}.png": _png(MASK[z]) for z in range(3)}})
PLAIN = {**{f"plain/raw/{z:02d}.png": _png(IMG[z]) for z in range(3)},
         **{f"plain/mask/{z:02d}.png": _png(MASK[z]) for z in range(3)}}
FILES = {**PLAIN, "good.zip": GOOD, "images.zip": IMAGES_ZIP, "masks.zip": MASKS_ZIP,
         "corrupt.zip": GOOD[:200] + b"\0" * 300 + GOOD[500:],
         "evil.zip": _zip({"ds/raw/00.png": _png(IMG[0]), "../evil.txt": b"x"}),
         "notzip.zip": b"plain bytes, no archive"}


class _Handler(http.server.BaseHTTPRequestHandler):
    truncate = set()   # names served cut short once
    chunked_cut = set()  # names served once as a chunked response that stops mid-chunk
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        _Handler.requests.append((name, self.headers.get("Range")))
        data = FILES.get(name)
        if data is None:
            self.send_error(404)
            return
        if name in _Handler.chunked_cut:
            _Handler.chunked_cut.discard(name)
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(data) + data[: len(data) // 2])
            self.close_connection = True
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if name in _Handler.truncate:
            _Handler.truncate.discard(name)
            body = body[: len(body) // 2]
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _entry(server, file="good.zip", sha="auto", name="toy"):
    sha = hashlib.sha256(FILES[file]).hexdigest() if sha == "auto" else sha
    return {name: DatasetEntry(
        name=name, description="toy", voxel_size=(40.0, 4.0, 4.0),
        files=(RemoteFile(file, (f"{server}/missing.zip", f"{server}/{file}"), sha),),
        splits={"train": Split("ds/raw", "ds/mask", SHAPE)})}


def _nothing_complete(root, name="toy"):
    folder = root / name
    return not (folder / "manifest.json").exists() and not (folder / "train.ome.zarr").exists() \
        and not (folder / "extracted").exists()


def test_download_converts_verifies_and_is_idempotent(tmp_path, server):
    registry = _entry(server)
    folder = download_dataset("toy", tmp_path, registry=registry, show=False)
    found = resolve("toy", root=tmp_path, registry=registry)
    np.testing.assert_array_equal(open_volume(found.image).read(), IMG)
    np.testing.assert_array_equal(load_labels(found.labels), MASK > 0)
    assert open_volume(found.image).voxel_size == (40.0, 4.0, 4.0)
    assert not (folder / "downloads").exists()
    _Handler.requests.clear()
    download_dataset("toy", tmp_path, registry=registry, show=False)
    assert _Handler.requests == []  # present: nothing fetched again


def test_checksum_mismatch_leaves_nothing(tmp_path, server):
    registry = _entry(server, sha="0" * 64)
    with pytest.raises(InputError, match="sha256"):
        download_dataset("toy", tmp_path, registry=registry, show=False)
    assert _nothing_complete(tmp_path)
    assert not list((tmp_path / "toy" / "downloads").glob("good.zip*"))


def test_truncated_download_resumes(tmp_path, server):
    registry = _entry(server)
    _Handler.truncate.add("good.zip")
    with pytest.raises(InputError, match="run the command again"):
        download_dataset("toy", tmp_path, registry=registry, show=False)
    assert _nothing_complete(tmp_path)
    part = tmp_path / "toy" / "downloads" / "good.zip.part"
    assert 0 < part.stat().st_size < len(GOOD)
    _Handler.requests.clear()
    download_dataset("toy", tmp_path, registry=registry, show=False)
    assert ("good.zip", f"bytes={len(GOOD) // 2}-") in _Handler.requests
    assert resolve("toy", root=tmp_path, registry=registry).labels


def test_a_chunked_response_cut_short_is_a_sentence_not_a_traceback(tmp_path, server):
    """http.client.IncompleteRead is no OSError: it escaped as a traceback (exit 1)."""
    registry = _entry(server)
    _Handler.chunked_cut.add("good.zip")
    with pytest.raises(InputError, match="IncompleteRead.*run the command again"):
        download_dataset("toy", tmp_path, registry=registry, show=False)
    assert _nothing_complete(tmp_path)
    download_dataset("toy", tmp_path, registry=registry, show=False)
    assert resolve("toy", root=tmp_path, registry=registry).labels


@pytest.mark.parametrize("file, message", [("corrupt.zip", "corrupt"),
                                           ("evil.zip", "unsafe path"),
                                           ("notzip.zip", "not a readable")])
def test_bad_archives_are_refused(tmp_path, server, file, message):
    with pytest.raises(InputError, match=message):
        download_dataset("toy", tmp_path, registry=_entry(server, file), show=False)
    assert _nothing_complete(tmp_path)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "toy" / "evil.txt").exists()


def test_unknown_hash_needs_permission_and_stays_unverified(tmp_path, server):
    registry = _entry(server, sha=None)
    with pytest.raises(InputError, match="--allow-unverified"):
        download_dataset("toy", tmp_path, registry=registry, show=False)
    folder = download_dataset("toy", tmp_path, registry=registry, allow_unverified=True,
                              show=False)
    import json
    record = json.loads((folder / "manifest.json").read_text())
    assert record["files"]["good.zip"]["verified"] is False


def test_single_files_in_folders_are_fetched_verified_and_converted(tmp_path, server):
    """Entries may list plain files with folders in their names (VNC: one file per section)."""
    files = tuple(RemoteFile(name.replace("plain/", "ds/"), (f"{server}/{name}",),
                             hashlib.sha256(data).hexdigest(), extract=False)
                  for name, data in PLAIN.items())
    registry = {"toy": DatasetEntry(name="toy", description="toy", files=files,
                                    voxel_size=(40.0, 4.0, 4.0),
                                    splits={"train": Split("ds/raw", "ds/mask", SHAPE)})}
    folder = download_dataset("toy", tmp_path, registry=registry, show=False)
    found = resolve("toy", root=tmp_path, registry=registry)
    np.testing.assert_array_equal(open_volume(found.image).read(), IMG)
    np.testing.assert_array_equal(load_labels(found.labels), MASK > 0)
    import json
    record = json.loads((folder / "manifest.json").read_text())
    assert all(f["verified"] for f in record["files"].values()) and len(record["files"]) == 6


def test_archives_sharing_a_top_level_folder_are_merged(tmp_path, server):
    """Images in one archive and labels in another, both under ``ds/`` (as some datasets ship):
    the second extraction adds to the folder the first made instead of replacing it."""
    files = tuple(RemoteFile(name, (f"{server}/{name}",), hashlib.sha256(FILES[name]).hexdigest())
                  for name in ("images.zip", "masks.zip"))
    registry = {"toy": DatasetEntry(name="toy", description="toy", files=files,
                                    voxel_size=(40.0, 4.0, 4.0),
                                    splits={"train": Split("ds/raw", "ds/mask", SHAPE)})}
    download_dataset("toy", tmp_path, registry=registry, show=False)
    found = resolve("toy", root=tmp_path, registry=registry)
    np.testing.assert_array_equal(open_volume(found.image).read(), IMG)
    np.testing.assert_array_equal(load_labels(found.labels), MASK > 0)


def test_registry_names_paths_and_cli(tmp_path, monkeypatch, capsys):
    with pytest.raises(InputError, match="known datasets: lucchi, lucchi\\+\\+"):
        resolve("lucchi-typo")
    with pytest.raises(InputError, match="download lucchi"):
        resolve("lucchi", root=tmp_path)
    assert resolve(str(tmp_path)).image == str(tmp_path)  # a path passes through
    assert reg.get_entry("lucchi").splits["train"].image == "training.tif"
    assert reg.get_entry("lucchi++").splits["train"].image.startswith("Lucchi++/Train_In")
    for name in ("lucchi", "lucchi++", "mitoem-r", "mitoem-h", "vnc"):
        entry = reg.get_entry(name)
        assert entry.citation and entry.licence and entry.voxel_size
        assert all(f.urls[0].startswith("https://") or f.urls[0].startswith("http://")
                   for f in entry.files)
    monkeypatch.setenv("MASKTWINS_DATA", str(tmp_path))
    assert main(["datasets"]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert main(["datasets", "--data-root", str(tmp_path / "nope")]) == 2
    assert main(["download", "nope"]) == 2
    assert "known datasets" in capsys.readouterr().err


def test_a_z_range_counts_slices_only(tmp_path):
    """A stray non-image file in an archive's slice folder shifted every slice of a range."""
    from masktwins_bio.data.download import _link_slices

    folder = tmp_path / "im"
    folder.mkdir()
    for z in range(1, 13):
        (folder / f"{z}.png").write_bytes(b"")
    (folder / "Thumbs.db").write_bytes(b"")
    (folder / "0README.txt").write_text("about")
    dest = _link_slices(folder, (2, 5), tmp_path / "range")
    assert sorted(p.name for p in dest.iterdir()) == ["3.png", "4.png", "5.png"]
