"""download when the network fails: a present dataset stays present, and nothing is left behind."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from masktwins_bio.cli import main
from masktwins_bio.data import registry as reg
from masktwins_bio.data.download import download_dataset
from masktwins_bio.data.registry import DatasetEntry, RemoteFile, Split, is_present, resolve
from masktwins_bio.data.volumes import open_volume
from masktwins_bio.errors import InputError

SHAPE = (2, 12, 10)
IMG = np.random.default_rng(4).integers(0, 256, SHAPE, dtype=np.uint8)
MASK = (IMG > 200).astype(np.uint8) * 255


@pytest.fixture
def remote(tmp_path):
    """Slice files served through file:// URLs, one per section (as VNC is)."""
    served = tmp_path / "served"
    names = []
    for kind, arr in (("raw", IMG), ("mask", MASK)):
        (served / kind).mkdir(parents=True)
        for z in range(SHAPE[0]):
            Image.fromarray(arr[z]).save(served / kind / f"{z:02d}.png")
            names.append(f"{kind}/{z:02d}.png")
    return served, names


def _registry(served, names) -> dict:
    files = tuple(RemoteFile(f"stack/{n}", (f"file://{served}/{n}",),
                             hashlib.sha256((served / n).read_bytes()).hexdigest(),
                             extract=False)
                  for n in names)
    return {"toy": DatasetEntry(name="toy", description="toy", files=files,
                                voxel_size=(40.0, 4.0, 4.0),
                                splits={"train": Split("stack/raw", "stack/mask", SHAPE)})}


def _go_offline(served, name="raw/01.png"):
    (served / name).rename(served / "gone.png")


def test_force_without_network_keeps_the_present_dataset(tmp_path, remote):
    registry = _registry(*remote)
    root = tmp_path / "data"
    root.mkdir()
    folder = download_dataset("toy", root, registry=registry, show=False)
    manifest = (folder / "manifest.json").read_text()
    _go_offline(remote[0])
    with pytest.raises(InputError, match="Could not download"):
        download_dataset("toy", root, registry=registry, force=True, show=False)
    assert (folder / "manifest.json").read_text() == manifest
    assert is_present(registry["toy"], root)
    found = resolve("toy", root=root, registry=registry)
    np.testing.assert_array_equal(open_volume(found.image).read(), IMG)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staged copies


def test_force_replaces_the_dataset_once_the_new_copy_is_ready(tmp_path, remote):
    registry = _registry(*remote)
    root = tmp_path / "data"
    root.mkdir()
    folder = download_dataset("toy", root, registry=registry, show=False)
    (folder / "train.ome.zarr" / "marker").write_text("old copy")
    download_dataset("toy", root, registry=registry, force=True, show=False)
    assert not (folder / "train.ome.zarr" / "marker").exists()
    assert json.loads((folder / "manifest.json").read_text())["splits"]["train"] == {
        "path": "train.ome.zarr", "shape": list(SHAPE)}
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "train.ome.zarr"]


def test_failed_first_download_leaves_no_empty_folders(tmp_path, remote):
    registry = _registry(*remote)
    _go_offline(remote[0], "mask/00.png")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(InputError, match="Could not download"):
        download_dataset("toy", root, registry=registry, show=False)
    # The file fetched before the failure stays for the next run, with its folders; the folders
    # made for files that never arrived (stack/mask) are gone.
    assert (root / "toy" / "downloads" / "stack" / "raw" / "01.png").is_file()
    assert not (root / "toy" / "downloads" / "stack" / "mask").exists()
    for p in root.rglob("*"):
        assert not p.is_dir() or any(p.iterdir()), f"empty folder left: {p}"


def test_nothing_fetched_leaves_nothing(tmp_path, remote):
    served, names = remote
    registry = _registry(served, names)
    for n in names:
        (served / n).unlink()
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(InputError, match="Could not download"):
        download_dataset("toy", root, registry=registry, show=False)
    assert list(root.iterdir()) == []


def test_download_into_a_data_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["download", "vnc", "--data-root", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


def test_interrupted_download_resumes_its_conversion(tmp_path, remote, monkeypatch, digest):
    """Ctrl-C while converting: the next download neither extracts nor converts again what was
    done; it writes only the missing blocks and gives the bytes of an uninterrupted download."""
    import functools

    from masktwins_bio.data import download, ome_zarr, partial
    from masktwins_bio.data.download import _staged_path

    # four blocks per array: chunks of half a section, a block and a shard per chunk
    monkeypatch.setattr(download, "convert_volume",
                        functools.partial(download.convert_volume, chunks=(1, 6, 10)))
    monkeypatch.setattr(ome_zarr, "SHARD_TARGET_BYTES", 64)
    monkeypatch.setattr(ome_zarr, "BLOCK_BYTES", 100)
    import shutil
    root, whole = tmp_path / "data", tmp_path / "whole" / "train.ome.zarr"
    root.mkdir()
    # the uninterrupted download, kept aside (same root: the metadata name the input's path)
    download_dataset("toy", root, registry=_registry(*remote), show=False)
    shutil.copytree(root / "toy" / "train.ome.zarr", whole)
    shutil.rmtree(root / "toy")

    real, written = partial.PartialOutput.mark, []

    def mark(self, array, corner):
        real(self, array, corner)
        written.append(array)
        if len(written) == 6:   # the image done, the labels half done
            raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(partial.PartialOutput, "mark", mark)
        with pytest.raises(KeyboardInterrupt):
            download_dataset("toy", root, registry=_registry(*remote), show=False)
    staged = _staged_path(root / "toy", "train")
    assert not staged.exists() and partial.partial_path(staged).is_dir()
    assert not is_present(_registry(*remote)["toy"], root)

    written.clear()
    monkeypatch.setattr(partial.PartialOutput, "mark",
                        lambda self, array, corner: (written.append(array),
                                                     real(self, array, corner)))
    registry = _registry(*remote)
    download_dataset("toy", root, registry=registry, show=False)
    assert is_present(registry["toy"], root)
    assert written == ["labels/mito/0"] * 2   # the label blocks the first run had not written
    assert not [p.name for p in (root / "toy").iterdir() if p.name.startswith(".")]
    assert digest(root / "toy" / "train.ome.zarr") == digest(whole)


def test_full_disk_while_converting_keeps_the_conversion(tmp_path, remote, monkeypatch,
                                                         cli_fails):
    """The disk fills up during the conversion: one sentence, the converted blocks kept, and
    the same download, run again, continues and finishes."""
    import errno
    import os

    from masktwins_bio.data import partial
    from masktwins_bio.data.download import _staged_path

    real, count = partial.PartialOutput.mark, []

    def mark(self, array, corner):
        count.append(1)
        if len(count) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, array, corner)
    registry = _registry(*remote)
    monkeypatch.setitem(reg.REGISTRY, "toy", registry["toy"])
    args = ["download", "toy", "--data-root", str(tmp_path), "--quiet"]
    with monkeypatch.context() as m:
        m.setattr(partial.PartialOutput, "mark", mark)
        cli_fails(args, "No space left on device); free space or fix permissions, then run "
                        "the download again: it continues where it stopped.")
    staged = _staged_path(tmp_path / "toy", "train")
    assert partial.partial_path(staged).is_dir() and not is_present(registry["toy"], tmp_path)
    assert main(args) == 0 and is_present(registry["toy"], tmp_path)


def test_a_file_that_vanishes_while_converting_keeps_the_conversion(tmp_path, remote,
                                                                    monkeypatch, cli_fails):
    """A downloaded slice removed while the conversion runs: named in one sentence that says
    to run the download again (it has no --resume), and the converted blocks kept."""
    import functools

    from masktwins_bio.data import download, ome_zarr, partial
    from masktwins_bio.data.download import _staged_path

    monkeypatch.setattr(download, "convert_volume",
                        functools.partial(download.convert_volume, chunks=(1, 6, 10)))
    monkeypatch.setattr(ome_zarr, "SHARD_TARGET_BYTES", 64)  # one section per block
    monkeypatch.setattr(ome_zarr, "BLOCK_BYTES", 100)
    real, count = partial.PartialOutput.mark, []
    gone = tmp_path / "toy" / "extracted" / "stack" / "raw" / "01.png"

    def mark(self, array, corner):
        real(self, array, corner)
        count.append(1)
        if len(count) == 1:
            gone.unlink()
    registry = _registry(*remote)
    monkeypatch.setitem(reg.REGISTRY, "toy", registry["toy"])
    args = ["download", "toy", "--data-root", str(tmp_path), "--quiet"]
    with monkeypatch.context() as m:
        m.setattr(partial.PartialOutput, "mark", mark)
        cli_fails(args, f"Cannot read '{gone}' (No such file or directory); put the input back "
                        "or make it readable, then run the download again: it continues where "
                        "it stopped.")
    staged = _staged_path(tmp_path / "toy", "train")
    assert partial.partial_path(staged).is_dir() and not is_present(registry["toy"], tmp_path)
    assert main(args) == 0 and is_present(registry["toy"], tmp_path)


def test_a_conversion_of_other_inputs_is_started_again(tmp_path, remote, monkeypatch):
    """An unfinished conversion whose inputs changed since (a file downloaded again) is
    replaced, not continued: its blocks may hold the old data."""
    from masktwins_bio.data import partial

    def interrupt(self, array, corner):
        raise KeyboardInterrupt
    root = tmp_path / "data"
    root.mkdir()
    with monkeypatch.context() as m:
        m.setattr(partial.PartialOutput, "mark", interrupt)
        with pytest.raises(KeyboardInterrupt):
            download_dataset("toy", root, registry=_registry(*remote), show=False)
    served, names = remote
    new = IMG.copy()
    new[0] = 255 - new[0]
    Image.fromarray(new[0]).save(served / "raw" / "00.png")
    (root / "toy" / "downloads" / "stack" / "raw" / "00.png").unlink()   # fetched again
    registry = _registry(served, names)
    download_dataset("toy", root, registry=registry, show=False)
    found = resolve("toy", root=root, registry=registry)
    np.testing.assert_array_equal(open_volume(found.image).read()[0], new[0])
