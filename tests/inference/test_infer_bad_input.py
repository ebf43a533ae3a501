"""`predict` user mistakes: one sentence, exit 2, nothing of the user's replaced or left behind.

Covers the output rules (a .zarr name, never a file, a foreign folder or the input itself),
options checked before the output exists (--dask, --streams, --threshold), the checkpoint
contents in the --resume fingerprint, and the wording of a few messages.
"""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from masktwins_bio.cli import main
from masktwins_bio.errors import InputError


def _predict(ckpt, src, out, *extra):
    return main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
                 "--device", "cpu", "--quiet", "--threads", "1", *extra])


@pytest.fixture
def small(tmp_path):
    """A (3, 40, 40) uint8 TIFF copy in tmp_path (its own folder, so nothing is shared)."""
    import tifffile
    src = tmp_path / "vol.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 40, 40), np.uint8)
    tifffile.imwrite(src, data, photometric="minisblack")
    return src


def test_overwrite_never_replaces_the_input_or_a_file(tmp_path, ckpts, small, cli_error, digest):
    before = digest(small)
    assert _predict(ckpts[2], small, small, "--overwrite") == 2
    assert "ending in .zarr" in cli_error() and digest(small) == before
    user_file = tmp_path / "notes.zarr"
    user_file.write_text("mine")
    assert _predict(ckpts[2], small, user_file, "--overwrite") == 2
    assert "is a file" in cli_error() and user_file.read_text() == "mine"
    folder = tmp_path / "stuff.zarr"
    folder.mkdir()
    (folder / "a.txt").write_text("mine")
    assert _predict(ckpts[2], small, folder, "--overwrite") == 2
    assert "no zarr data" in cli_error() and (folder / "a.txt").read_text() == "mine"


@pytest.mark.parametrize("suffix", ["", ":raw"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_output_is_never_the_input_zarr(tmp_path, ckpts, suffix, overwrite, cli_error, digest):
    store = tmp_path / "in.zarr"
    if suffix:
        group = zarr.open_group(str(store), mode="w")
        group.create_array("raw", shape=(2, 40, 40), dtype="uint8")[:] = 7
    else:
        zarr.create_array(store=str(store), shape=(2, 40, 40), dtype="uint8")[:] = 7
    before = digest(store)
    extra = ["--overwrite"] if overwrite else []
    assert _predict(ckpts[2], f"{store}{suffix}", store, *extra) == 2
    assert "its own input" in cli_error() and digest(store) == before


@pytest.mark.parametrize("kind", ["group", "group:raw", "slices"])
def test_output_inside_an_input_folder_is_refused(tmp_path, ckpts, kind, cli_error, digest):
    """A prediction written into the input's zarr group made the group ambiguous (two arrays)
    for every later command; into a slice folder, its chunks changed the input's fingerprint so
    that --resume was always refused."""
    if kind == "slices":
        from PIL import Image
        src = tmp_path / "pngs"
        src.mkdir()
        for z in range(2):
            Image.fromarray(np.full((40, 40), 7 * z, np.uint8)).save(src / f"{z}.png")
        spec = str(src)
    else:
        src = tmp_path / "g.zarr"
        zarr.open_group(str(src), mode="w").create_array("raw", shape=(2, 40, 40),
                                                         dtype="uint8")[:] = 7
        spec = f"{src}:raw" if kind.endswith(":raw") else str(src)
    before = digest(src)
    assert _predict(ckpts[2], spec, src / "pred.zarr") == 2
    assert "lies inside its input" in cli_error() and digest(src) == before


def test_bad_dask_and_streams_leave_outputs_alone(tmp_path, ckpts, small, capsys, cli_error,
                                                  digest):
    pytest.importorskip("distributed")
    keep = tmp_path / "keep.zarr"
    assert _predict(ckpts[2], small, keep) == 0
    before = digest(keep)
    capsys.readouterr()
    cases = [(["--dask", "local:0"], "worker count"), (["--dask", "foo"], "scheduler address"),
             (["--dask", "tcp://host"], "scheduler address"), (["--streams", "0"], "--streams"),
             (["--streams", "-1"], "--streams")]
    for extra, words in cases:
        assert _predict(ckpts[2], small, keep, "--overwrite", *extra) == 2
        assert words in cli_error() and digest(keep) == before
        assert _predict(ckpts[2], small, tmp_path / "new.zarr", *extra) == 2
        assert words in cli_error() and not (tmp_path / "new.zarr").exists()


def test_unreachable_scheduler_leaves_no_output(tmp_path, ckpts, small, monkeypatch, cli_error):
    pytest.importorskip("distributed")
    from masktwins_bio.inference import cluster

    def unreachable(address):
        raise InputError(f"Cannot reach the dask scheduler at '{address}'.")
    monkeypatch.setattr(cluster, "_client", unreachable)
    out = tmp_path / "p.zarr"
    assert _predict(ckpts[2], small, out, "--dask", "tcp://127.0.0.1:1") == 2
    assert "Cannot reach" in cli_error() and not out.exists()
    # The same command, corrected, starts afresh: nothing half-made is in its way.
    monkeypatch.undo()
    assert _predict(ckpts[2], small, out) == 0


def test_threshold_without_ome_is_refused_before_the_model_loads(tmp_path, ckpts, small,
                                                                 monkeypatch, cli_error):
    from masktwins_bio.inference import model_io

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output name was checked")
    monkeypatch.setattr(model_io, "load_model", no_load)
    assert _predict(ckpts[2], small, tmp_path / "p4.zarr", "--threshold", "0.5") == 2
    assert "p4.ome.zarr" in cli_error()


def _other_weights(src: str, dst: Path) -> None:
    """A checkpoint of the same run and iteration with other weights, saved at ``dst``."""
    from masktwins_bio.train.checkpoint import save_checkpoint
    state = torch.load(src, map_location="cpu", weights_only=True)
    state["model"] = {k: v + 0.05 if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    save_checkpoint(state, dst)


def test_resume_refuses_another_checkpoint_saved_at_the_same_path(tmp_path, ckpts, small, capsys,
                                                                  monkeypatch, cli_error):
    from masktwins_bio.inference import predict as predict_module

    ckpt = tmp_path / "ck.pt"
    shutil.copy(ckpts[2], ckpt)
    out = tmp_path / "p.zarr"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(predict_module, "run_job", killed)
    assert _predict(ckpt, small, out, "--block", "1,20,20") == 130   # an unfinished output
    monkeypatch.undo()
    _other_weights(ckpts[2], ckpt)
    capsys.readouterr()
    assert _predict(ckpt, small, out, "--block", "1,20,20", "--resume") == 2
    assert "not the one" in cli_error()
    assert not zarr.open_array(str(out), mode="r").attrs["masktwins_bio"]["complete"]
    shutil.copy(ckpts[2], ckpt)                                       # the original again
    assert _predict(ckpt, small, out, "--block", "1,20,20", "--resume") == 0


def test_checkpoint_mismatch_is_told_in_whole_words(tmp_path, ckpts, small, cli_error):
    assert _predict(ckpts["rgb"], small, tmp_path / "rgb.zarr") == 2
    message = cli_error()
    assert "shape [4, 3, 3, 3] but the config builds [4, 1, 3, 3])" in message
    assert "one grey channel" in message


def test_long_torch_messages_are_cut_between_words():
    from masktwins_bio.inference.predict import _state_dict_error

    line = "Missing key(s) in state_dict: " + ", ".join(f'"layer{i}.weight"' for i in range(40))
    short = _state_dict_error(RuntimeError(f"Error(s) in loading state_dict for UNet:\n\t{line}"))
    assert short.endswith(" ...") and len(short) <= 124
    kept = short[:-len(" ...")]
    assert line.startswith(kept) and line[len(kept)] in " ,"       # ends at a word boundary


def test_output_path_mistakes_get_their_own_sentence(tmp_path, ckpts, small, cli_error):
    assert _predict(ckpts[2], small, "") == 2
    assert "give an output path" in cli_error()
    a_file = tmp_path / "hostname"
    a_file.write_text("x")
    assert _predict(ckpts[2], small, a_file / "out.zarr") == 2
    assert "is a file, not a folder" in cli_error()
    assert _predict(ckpts[2], small, a_file / "deeper" / "out.zarr") == 2
    assert "is a file, not a folder" in cli_error()
    assert a_file.read_text() == "x"
