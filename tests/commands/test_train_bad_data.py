"""train with bad data: one sentence (even from a DataLoader worker), and no half-started run left
in the way of the corrected command."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
from torch._utils import ExceptionWrapper

from masktwins_bio.cli import main, sentence
from masktwins_bio.commands.train import _discard_unstarted_run
from masktwins_bio.errors import InputError


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    pass


def _instance_ids(path, shape):
    """Instance labels (ids up to 1000 in every 32x32 crop): they cannot be binarised."""
    ids = (np.indices(shape).sum(0) % 2 * 1000).astype(np.int32)
    tifffile.imwrite(path, ids, photometric="minisblack")
    return str(path)


def _set(args: list, flag: str, value: str) -> list:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_worker_error_comes_back_as_its_own_sentence():
    try:
        try:
            raise ValueError("decoder detail")
        except ValueError as cause:
            raise InputError("'x.tif' is bad; give another file.") from cause
    except InputError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(InputError) as info:
        wrapped.reraise()
    assert str(info.value).startswith("Caught InputError")
    assert sentence(info.value) == "'x.tif' is bad; give another file."
    assert sentence(InputError("Caught nothing; plain text.")) == "Caught nothing; plain text."


def test_streamed_label_error_is_one_sentence_and_blocks_no_rerun(tmp_path, train_args, cli_fails):
    run = tmp_path / "run"
    ids = _instance_ids(tmp_path / "ids.tif", (3, 64, 64))
    stream = ["data.stream=always", "data.workers=1"]
    err = cli_fails(_set(train_args(run, extra=stream, target_label=False), "--source-label",
                         ids), "ids.tif")
    assert "cannot be binarised" in err and "Caught" not in err and "worker" not in err
    assert not run.exists()  # nothing of the failed run is left to refuse the next one
    assert main(train_args(run, extra=["data.stream=always", "data.workers=0"],
                           target_label=False)) == 0
    assert (run / "checkpoints" / "last.pt").is_file()


def test_failed_run_keeps_an_existing_empty_output_dir(tmp_path, train_args, cli_fails):
    run = tmp_path / "run"
    run.mkdir()
    ids = _instance_ids(tmp_path / "ids.tif", (3, 64, 64))
    cli_fails(_set(train_args(run), "--source-label", ids), "ids.tif")
    assert run.is_dir() and list(run.iterdir()) == []


def test_only_an_unstarted_run_is_discarded(tmp_path):
    started = tmp_path / "started"
    (started / "checkpoints").mkdir(parents=True)
    (started / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    (started / "config.yaml").write_text("iters: 3\n")
    _discard_unstarted_run(started, new_dir=True)
    assert (started / "config.yaml").is_file() and (started / "checkpoints" / "last.pt").is_file()
    unstarted = tmp_path / "unstarted"
    (unstarted / "tb").mkdir(parents=True)
    (unstarted / "config.yaml").write_text("iters: 3\n")
    (unstarted / "notes.txt").write_text("someone else's")
    _discard_unstarted_run(unstarted, new_dir=True)
    assert sorted(p.name for p in unstarted.iterdir()) == ["notes.txt"]


def test_constant_image_in_memory_names_the_file(tmp_path, train_args, cli_fails):
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((3, 64, 64), 9, np.uint8), photometric="minisblack")
    run = tmp_path / "run"
    cli_fails(_set(train_args(run), "--target-image", str(flat)),
              f"The target image '{flat}' has a constant intensity")
    assert not run.exists()


@pytest.mark.parametrize("role, flags, match", [
    ("source", ["--source", "{src}", "--source-label", "{lab}"], "--source-label would be"),
    ("source", ["--source", "vnc", "--source-image", "{src}"], "--source-image would be"),
    ("source", ["--source", "synthetic-source", "--source-image", "{src}", "--source-label",
                "{lab}"], "--source-image and --source-label would be"),
    ("target", ["--target", "synthetic-target", "--target-image", "{src}"],
     "--target-image would be")])
def test_dataset_name_with_paths_is_refused(tmp_path, tiny_data, tiny_config, role, flags, match,
                                            cli_fails):
    src, lab = tiny_data["source2d"]
    given = [f.format(src=src, lab=lab) for f in flags]
    other = (["--target-image", tiny_data["target2d"][0]] if role == "source"
             else ["--source-image", src, "--source-label", lab])
    run = tmp_path / "run"
    cli_fails(["train", *given, *other, "--config", tiny_config[2], "--out", str(run), "--device",
               "cpu", "--quiet"], match)
    assert not run.exists()


def test_overwrite_keeps_the_old_run_when_the_new_data_fail(tmp_path, train_args):
    run = tmp_path / "run"
    assert main(train_args(run)) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    args = train_args(run, extra=["--overwrite"])
    args[args.index("--target-image") + 1] = str(tmp_path / "missing.tif")
    assert main(args) == 2
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert (run / "config.yaml").is_file()


def test_target_labels_that_would_be_ignored_are_refused(tmp_path, train_args, cli_fails):
    """--target-label without a target, or with a target streamed from disk (never predicted
    whole), used to be dropped without a word (summary.json then held no target score)."""
    args = train_args(tmp_path / "a", "source-only")
    i = args.index("--target-image")
    cli_fails(args[:i] + args[i + 2:], "--target-label scores a target, but no target was given")
    streamed = ["data.stream=always", "data.workers=0"]
    cli_fails(train_args(tmp_path / "b", "masktwins", extra=streamed),
              "cannot score a target that is streamed from disk")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_negative_gpus_is_refused(tmp_path, train_args, cli_fails):
    cli_fails(train_args(tmp_path / "run") + ["--gpus", "-3"], "--gpus -3 must be 0 or more")
    assert not (tmp_path / "run").exists()
