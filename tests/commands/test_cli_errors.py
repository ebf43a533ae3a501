"""Every input a user can get wrong ends in one clear line on stderr and exit status 2."""
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from masktwins_bio.cli import main


def test_subprocess_error_is_one_line_exit_2_and_debug_shows_traceback(tmp_path):
    args = [sys.executable, "-m", "masktwins_bio", "train", "--source-image", "nope.tif",
            "--source-label", "nope.png", "--out", str(tmp_path / "r"), "--method",
            "source-only"]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "nope.tif" in proc.stderr
    debug = subprocess.run(args + ["--debug"], capture_output=True, text=True)
    assert "Traceback" in debug.stderr


def test_missing_path(tmp_path, train_args, cli_fails):
    args = train_args(tmp_path / "r")
    args[args.index("--source-image") + 1] = str(tmp_path / "missing")
    cli_fails(args, "missing")


def test_unsupported_file(tmp_path, train_args, cli_fails):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    args = train_args(tmp_path / "r")
    args[args.index("--source-image") + 1] = str(bad)
    cli_fails(args, "notes.txt")


def test_image_label_shape_mismatch(tmp_path, tiny_data, train_args, cli_fails):
    other = tmp_path / "mask.tif"
    tifffile.imwrite(other, np.zeros((3, 60, 64), np.uint8), photometric="minisblack")
    args = train_args(tmp_path / "r")
    args[args.index("--source-label") + 1] = str(other)
    cli_fails(args, "shape")


def test_labels_that_cannot_be_binarised(tmp_path, train_args, cli_fails):
    lab = tmp_path / "lab.tif"
    tifffile.imwrite(lab, np.full((3, 64, 64), -3.5, np.float32), photometric="minisblack")
    args = train_args(tmp_path / "r")
    args[args.index("--source-label") + 1] = str(lab)
    cli_fails(args, "binaris")


def test_nan_in_image(tmp_path, tiny_data, train_args, cli_fails):
    img = tmp_path / "img.tif"
    data = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    data[1, 5, 5] = np.nan
    tifffile.imwrite(img, data, photometric="minisblack")
    args = train_args(tmp_path / "r")
    args[args.index("--source-image") + 1] = str(img)
    cli_fails(args, "NaN")


def test_empty_volume(tmp_path, train_args, cli_fails):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = train_args(tmp_path / "r")
    args[args.index("--target-image") + 1] = str(empty)
    cli_fails(args, "empty")


def test_crop_larger_than_volume(tmp_path, train_args, cli_fails):
    cli_fails(train_args(tmp_path / "r", extra=["data.crop=[128,128]"]),
              "larger than the source volume")


def test_block_larger_than_crop(tmp_path, train_args, cli_fails):
    cli_fails(train_args(tmp_path / "r", extra=["mask.block=[1,64,64]"]),
              "larger than the crop")


def test_unknown_config_key_lists_valid_keys(tmp_path, train_args, cli_fails):
    cli_fails(train_args(tmp_path / "r", extra=["mask.rate=0.3"]), "mask.ratio, mask.block")


@pytest.mark.parametrize("override,match", [
    ("mask.ratio=1.5", "mask.ratio"), ("mask.block=[1,0,8]", "mask.block"), ("iters=0", "iters"),
])
def test_out_of_range(tmp_path, train_args, override, match, cli_fails):
    cli_fails(train_args(tmp_path / "r", extra=[override]), match)


def test_dims3_on_single_2d_image(tmp_path, cli_fails):
    img, lab = tmp_path / "img.png", tmp_path / "lab.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(img)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(lab)
    cli_fails(["train", "--source-image", str(img), "--source-label", str(lab), "--method",
               "source-only", "--dims", "3", "--out", str(tmp_path / "r")], "--dims 3")


def test_resume_without_checkpoint(tmp_path, train_args, cli_fails):
    cli_fails(train_args(tmp_path / "r", extra=["--resume"]), "Nothing to resume")


def test_output_dir_with_another_run_is_kept(tmp_path, train_args, cli_fails, digest):
    run = tmp_path / "r"
    assert main(train_args(run)) == 0
    before = digest(run / "checkpoints")
    cli_fails(train_args(run), "holds another run")
    assert digest(run / "checkpoints") == before
    assert main(train_args(run, extra=["--overwrite"])) == 0


def test_output_dir_with_foreign_files_is_refused(tmp_path, train_args, cli_fails):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    cli_fails(train_args(out, extra=["--overwrite"]), "not a masktwins-bio run")
    assert (out / "thesis.docx").read_text() == "precious"


def test_predict_with_3d_checkpoint_on_2d_image(tmp_path, train_args, cli_fails):
    run = tmp_path / "r3"
    assert main(train_args(run, dims=3)) == 0
    img = tmp_path / "one.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(img)
    cli_fails(["predict", "--checkpoint", str(run), "--input", str(img), "--output",
               str(tmp_path / "p.zarr")], "3D network")


def test_predict_refuses_existing_output_and_foreign_checkpoint(tmp_path, tiny_data, train_args,
                                                                cli_fails):
    run = tmp_path / "r"
    assert main(train_args(run)) == 0
    out = tmp_path / "p.zarr"
    image = tiny_data["target2d"][0]
    assert main(["predict", "--checkpoint", str(run), "--input", image, "--output",
                 str(out)]) == 0
    cli_fails(["predict", "--checkpoint", str(run), "--input", image, "--output", str(out)],
              "exists")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cli_fails(["predict", "--checkpoint", str(junk), "--input", image, "--output",
               str(tmp_path / "q.zarr")], "checkpoint")


def test_inputs_are_never_modified(tmp_path, tiny_data, train_args, digest):
    digests = {k: (digest(v[0]), digest(v[1])) for k, v in tiny_data.items()}
    assert main(train_args(tmp_path / "r")) == 0
    assert {k: (digest(v[0]), digest(v[1])) for k, v in tiny_data.items()} == digests
