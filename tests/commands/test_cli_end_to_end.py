"""train -> predict -> evaluate through the CLI on tiny synthetic data, every method, 2D and 3D."""
import json

import numpy as np
import pytest
import yaml
import zarr

from masktwins_bio.cli import main
from masktwins_bio.config import METHODS, load_yaml


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_train_predict_evaluate(tmp_path, tiny_data, train_args, method, dims, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, method, dims)) == 0
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "checkpoints" / "best.pt").is_file()      # target labels were given
    assert any((run / "tb").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 3

    image, labels = tiny_data[f"target{dims}d"]
    pred = tmp_path / "pred.zarr"
    assert main(["predict", "--checkpoint", str(run), "--input", image, "--output", str(pred),
                 "--device", "cpu"]) == 0
    arr = zarr.open_array(str(pred), mode="r")
    expected_shape = (3, 64, 64) if dims == 2 else (12, 48, 48)
    assert arr.shape == expected_shape and arr.dtype == np.float32
    values = arr[:]
    assert values.min() >= 0 and values.max() <= 1

    capsys.readouterr()
    assert main(["evaluate", "--prediction", str(pred), "--labels", labels, "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads(last)
    assert set(metrics) == {"map", "f1", "mcc", "iou", "volume_iou", "volume_dice"}
    assert -1.0 <= metrics["mcc"] <= 1.0
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("f1", "iou", "volume_iou", "volume_dice"))


def test_source_only_needs_no_target(tmp_path, tiny_data, tiny_config):
    src = tiny_data["source2d"]
    assert main(["train", "--source-image", src[0], "--source-label", src[1], "--method",
                 "source-only", "--config", tiny_config[2], "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--quiet"]) == 0


def test_trailing_overrides_reach_the_saved_config(tmp_path, train_args):
    run = tmp_path / "run"
    assert main(train_args(run, extra=["mask.ratio=0.4", "mask.block=[1,16,16]"])) == 0
    text = (run / "config.yaml").read_text()
    assert "ratio: 0.4" in text and "- 16" in text


def test_the_derived_mask_block_is_written_out(tmp_path, train_args, tiny_config):
    # Without mask.block the block follows the crop (1/16 of its side); the saved config pins
    # the value, so that a later default rule cannot change what a resume trains with.
    cfg = load_yaml(tiny_config[2])
    cfg.pop("mask")
    (tmp_path / "nomask.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    args = train_args(run)
    args[args.index("--config") + 1] = str(tmp_path / "nomask.yaml")
    assert main(args) == 0
    saved = load_yaml(run / "config.yaml")
    assert saved["mask"]["block"] == [2, 2]  # 32 px crops / 16
    resume = args[:args.index("--method")] + ["--out", str(run), "--resume", "--iters", "4"]
    assert main(resume + ["--device", "cpu", "--quiet"]) == 0


def test_evaluate_instances_reports_ap75(tmp_path, capsys):
    gt = np.zeros((2, 32, 32), np.uint16)
    gt[:, 2:10, 2:10] = 1
    gt[:, 20:30, 20:30] = 2
    pred = gt.copy()
    pred[:, 20:30, 20:30] = 0          # one instance missed
    pred[:, 12:16, 12:16] = 7          # one false positive
    for name, arr in (("gt.zarr", gt), ("pred.zarr", pred)):
        z = zarr.create_array(store=str(tmp_path / name), shape=arr.shape, dtype=arr.dtype,
                              chunks=(1, 32, 32))
        z[:] = arr
    capsys.readouterr()
    assert main(["evaluate", "--prediction", str(tmp_path / "pred.zarr"), "--labels",
                 str(tmp_path / "gt.zarr"), "--instances", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1)
    assert 0.0 < result["ap75"] < 1.0
    # labels without any instance: AP is undefined, and said so rather than printed as nan
    z = zarr.create_array(store=str(tmp_path / "empty.zarr"), shape=gt.shape, dtype=gt.dtype,
                          chunks=(1, 32, 32))
    z[:] = 0
    assert main(["evaluate", "--prediction", str(tmp_path / "pred.zarr"), "--labels",
                 str(tmp_path / "empty.zarr"), "--instances", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("AP-75     n/a  (0 TP, 2 FP, 0 FN") and "nan" not in lines[0]
    assert "no instance, so AP is undefined" in lines[1]
    assert json.loads(lines[-1])["ap75"] is None


def test_the_teacher_context_rule_fits_a_small_target(tmp_path, train_args, cli_fails):
    # The 64² target under a 64² crop leaves no room for the rule's context (8 px): the run
    # trains without one and pins that, where it used to stop at "crop larger than target".
    run = tmp_path / "run"
    assert main(train_args(run, extra=["data.crop=[64,64]"])) == 0
    assert load_yaml(run / "config.yaml")["uda"]["teacher_context"] == 0
    assert main(train_args(tmp_path / "r2", extra=["data.crop=[56,56]"])) == 0  # rule 6, room 4
    assert load_yaml(tmp_path / "r2" / "config.yaml")["uda"]["teacher_context"] == 4
    cli_fails(train_args(tmp_path / "r3", extra=["data.crop=[64,64]", "uda.teacher_context=4"]),
              "The crop [72, 72] is larger than the target volume [64, 64]")  # as the user set
    # a rule of 0 (8 px crops) and a run without a target are pinned too, never left null
    assert main(train_args(tmp_path / "r4", extra=["data.crop=[8,8]", "mask.block=[1,4,4]"])) == 0
    assert load_yaml(tmp_path / "r4" / "config.yaml")["uda"]["teacher_context"] == 0
    args = train_args(tmp_path / "r5", method="source-only", target_label=False)
    i = args.index("--target-image")
    del args[i:i + 2]
    assert main(args) == 0
    assert load_yaml(tmp_path / "r5" / "config.yaml")["uda"]["teacher_context"] == 4  # 32 / 8


def test_overrides_may_sit_between_options(tmp_path, train_args):
    run = tmp_path / "run"
    args = train_args(run)
    args[1:1] = ["mask.ratio=0.4"]
    args.insert(args.index("--quiet"), "uda.ema=0.9")  # between --device cpu and --quiet
    assert main(args) == 0
    saved = load_yaml(run / "config.yaml")
    assert saved["mask"]["ratio"] == 0.4 and saved["uda"]["ema"] == 0.9


def test_a_run_saved_before_the_teacher_keys_resumes_with_that_teacher(tmp_path, train_args):
    """config.yaml of runs saved before uda.teacher_flips/teacher_context (and the top-level
    amp_cpu) existed lacks them; those runs trained with the official teacher in full
    precision, which a resume must keep (not the rule or the new default)."""
    run = tmp_path / "run"
    args = train_args(run, extra=["uda.teacher_flips=false", "uda.teacher_context=0",
                                  "amp_cpu=false"])
    assert main(args) == 0
    saved = load_yaml(run / "config.yaml")
    del saved["uda"]["teacher_flips"], saved["uda"]["teacher_context"], saved["amp_cpu"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    resume = args[:args.index("--method")] + ["--out", str(run), "--resume", "--iters", "4",
                                              "--device", "cpu", "--quiet"]
    assert main(resume) == 0
    resumed = load_yaml(run / "config.yaml")
    uda = resumed["uda"]
    assert uda["teacher_flips"] is False and uda["teacher_context"] == 0
    assert resumed["amp_cpu"] is False
