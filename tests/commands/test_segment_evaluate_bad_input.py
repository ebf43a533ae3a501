"""`segment` and `evaluate` user mistakes: one sentence, exit 2, nothing of the user's lost.

Predictions are written with the store of `predict` itself (no network needed), so they carry
the same metadata (``complete``, ``scale``) as real ones.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from masktwins_bio.cli import main
from masktwins_bio.inference.ledger import finished_blocks
from masktwins_bio.inference.store import OutputSpec, ZarrSink, create_output, finalize_output

SHAPE = (6, 40, 40)


def _prob(seed=0) -> np.ndarray:
    p = ndimage.gaussian_filter(np.random.default_rng(seed).random(SHAPE), (1, 2, 2))
    return ((p - p.min()) / (p.max() - p.min())).astype(np.float32)


def _prediction(path: Path, p: np.ndarray, dtype="float32", finish=True) -> Path:
    """``p`` written as `predict` writes it (one block), finished or stopped half-way."""
    spec = OutputSpec(Path(path), dtype)
    create_output(spec, p.shape, p.shape, None, {"kind": "foreground_probability"}, {"run": 1})
    if finish:
        sink = ZarrSink(spec)
        sink.write((0, 0, 0), tuple(slice(0, n) for n in p.shape), p)
        sink.close()
        finalize_output(spec, finished_blocks(spec.path), p.size)
    return Path(path)


def _array(path: Path, data: np.ndarray) -> Path:
    zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype,
                      chunks=data.shape)[:] = data
    return path


def _segment(src, out, *extra):
    return main(["segment", "--input", str(src), "--output", str(out), *extra])


def _evaluate(pred, labels, *extra):
    return main(["evaluate", "--prediction", str(pred), "--labels", str(labels), *extra])


def _leftovers(folder: Path) -> list:
    """Hidden staging folders a failed run would leave beside its output."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_segment_never_replaces_its_input_or_user_files(tmp_path, cli_error, digest):
    prob = _prediction(tmp_path / "prob.zarr", _prob())
    before = digest(prob)
    assert _segment(prob, prob, "--overwrite") == 2
    assert "its own input" in cli_error() and digest(prob) == before
    gt = _array(tmp_path / "gt.zarr", np.ones(SHAPE, np.uint32))
    assert _segment(prob, gt, "--labels", str(gt), "--overwrite") == 2
    assert "its own input" in cli_error()
    before = digest(prob)  # inside the input store: a new array would change that input
    assert _segment(prob, prob / "labels.zarr") == 2
    assert "lies inside its input" in cli_error() and digest(prob) == before
    stuff = tmp_path / "userstuff"
    stuff.mkdir()
    (stuff / "a.txt").write_text("mine")
    assert _segment(prob, stuff, "--overwrite") == 2
    assert "ending in .zarr" in cli_error()
    stuff_zarr = tmp_path / "stuff.zarr"
    stuff.rename(stuff_zarr)
    assert _segment(prob, stuff_zarr, "--overwrite") == 2
    assert "no zarr data" in cli_error() and (stuff_zarr / "a.txt").read_text() == "mine"
    a_file = tmp_path / "file.zarr"
    a_file.write_text("mine")
    assert _segment(prob, a_file, "--overwrite") == 2
    assert "is a file" in cli_error() and a_file.read_text() == "mine"


@pytest.mark.parametrize("extra, words", [
    (["--method", "watershed", "--halo", "-1", "--block", "2,20,20"], "--halo"),
    (["--halo", "-1"], "--halo"),
    (["--min-size", "-3"], "--min-size"),
    (["--block", "0,20,20"], "--block"),
    (["--method", "watershed", "--seed-threshold", "0.4"], "--seed-threshold"),
])
def test_options_are_checked_before_any_output_is_touched(tmp_path, capsys, extra, words, cli_error,
                                                          digest):
    prob = _prediction(tmp_path / "prob.zarr", _prob())
    keep = tmp_path / "keep.zarr"
    assert _segment(prob, keep) == 0
    before = digest(keep)
    capsys.readouterr()
    assert _segment(prob, keep, "--overwrite", *extra) == 2
    assert words in cli_error() and digest(keep) == before
    assert _segment(prob, tmp_path / "new.zarr", *extra) == 2
    assert words in cli_error() and not (tmp_path / "new.zarr").exists()


def test_labels_of_another_shape_are_refused_before_writing(tmp_path, cli_error):
    prob = _prediction(tmp_path / "prob.zarr", _prob())
    gt = _array(tmp_path / "gt.zarr", np.ones((6, 40, 30), np.uint32))
    assert _segment(prob, tmp_path / "new.zarr", "--labels", str(gt)) == 2
    assert "same volume" in cli_error() and not (tmp_path / "new.zarr").exists()


@pytest.mark.parametrize("method", ["cc", "watershed"])
def test_a_bad_block_found_late_removes_the_new_output_and_keeps_the_old(tmp_path, capsys,
                                                                         monkeypatch, method,
                                                                         cli_error, digest):
    from masktwins_bio.inference import probability

    good = _prediction(tmp_path / "good.zarr", _prob())
    p = _prob()
    p[2:4, 20:40, 0:20] = 7.0                 # one block of 2,20,20, not the first one
    bad = _array(tmp_path / "bad.zarr", p)
    keep = tmp_path / "keep.zarr"
    args = ["--block", "2,20,20", "--method", method]
    args += ["--seed-threshold", "0.7"] if method == "watershed" else []
    assert _segment(good, keep, *args) == 0
    before = digest(keep)
    capsys.readouterr()
    monkeypatch.setattr(probability, "SAMPLE_BLOCKS", 1)   # only the first block up front
    assert _segment(bad, tmp_path / "new.zarr", *args) == 2
    assert "z=2, y=20, x=0" in cli_error() and not (tmp_path / "new.zarr").exists()
    assert _segment(bad, keep, "--overwrite", *args) == 2
    assert "not probabilities" in cli_error() and digest(keep) == before
    assert _leftovers(tmp_path) == []


def test_segment_refuses_what_is_not_a_probability_map(tmp_path, cli_error):
    p = _prob()
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, (p * 255).astype(np.uint8))
    cases = [(raw, "uint8"), (_array(tmp_path / "ids.zarr", (p * 9).astype(np.uint32)), "uint32"),
             (_array(tmp_path / "big.zarr", p * 1000), "not probabilities")]
    for src, words in cases:
        out = tmp_path / "out.zarr"
        assert _segment(src, out) == 2
        assert words in cli_error() and not out.exists()
    assert _leftovers(tmp_path) == []


def test_uint8_predictions_segment_and_evaluate_like_float_ones(tmp_path, capsys):
    p = _prob()
    as_float = _prediction(tmp_path / "f.zarr", p)
    as_uint8 = _prediction(tmp_path / "u.zarr", p, "uint8")
    labels = tmp_path / "lab.tif"
    tifffile.imwrite(labels, (_prob(seed=1) > 0.5).astype(np.uint8))
    metrics = []
    for pred in (as_float, as_uint8):
        assert _evaluate(pred, labels, "--json") == 0
        metrics.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    for key, value in metrics[0].items():
        assert abs(metrics[1][key] - value) <= 0.01 * max(abs(value), 1e-9) + 1e-12, key
    # segment reads value / 255: the labels of the float volume holding exactly those values.
    rounded = _prediction(tmp_path / "r.zarr", (np.rint(p * 255) / 255).astype(np.float32))
    for pred in (rounded, as_uint8):
        assert _segment(pred, tmp_path / f"seg_{pred.stem}.zarr", "--threshold", "0.6") == 0
    a = zarr.open_array(str(tmp_path / "seg_r.zarr"), mode="r")[:]
    b = zarr.open_array(str(tmp_path / "seg_u.zarr"), mode="r")[:]
    assert a.max() > 1 and np.array_equal(a, b)


def test_unfinished_predictions_are_refused(tmp_path, cli_error):
    part = _prediction(tmp_path / "part.zarr", _prob(), finish=False)
    labels = _array(tmp_path / "lab.zarr", np.ones(SHAPE, np.uint8))
    assert _segment(part, tmp_path / "seg.zarr") == 2
    assert "predict --resume" in cli_error() and not (tmp_path / "seg.zarr").exists()
    assert _evaluate(part, labels) == 2
    assert "predict --resume" in cli_error()


def test_evaluate_tells_probabilities_from_instance_labels(tmp_path, cli_error):
    prob = _prediction(tmp_path / "prob.zarr", _prob())
    ids = _array(tmp_path / "ids.zarr", (_prob(seed=2) * 5).astype(np.uint16))
    assert _evaluate(prob, ids, "--instances") == 2
    assert "segment" in cli_error()
    uint8_prob = _prediction(tmp_path / "u.zarr", _prob(), "uint8")
    assert _evaluate(uint8_prob, ids, "--instances") == 2
    assert "segment" in cli_error()
    mask = _array(tmp_path / "mask.zarr", np.ones(SHAPE, np.uint8))
    assert _evaluate(ids, mask) == 2
    message = cli_error()
    assert "--instances" in message and "sigmoid" not in message


def test_ctrl_c_in_segment_keeps_its_unfinished_output_for_resume(tmp_path, capsys,
                                                                  monkeypatch, digest):
    from masktwins_bio.inference import instances

    prob = _prediction(tmp_path / "prob.zarr", _prob())
    keep = tmp_path / "keep.zarr"
    assert _segment(prob, keep, "--block", "2,20,20") == 0
    before = digest(keep)
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(instances, "_face_pairs", interrupted)
        assert _segment(prob, tmp_path / "new.zarr", "--block", "2,20,20") == 130
        err = capsys.readouterr().err
        assert "interrupted" in err and "with --resume to continue" in err
        assert not (tmp_path / "new.zarr").exists()
        assert _segment(prob, keep, "--block", "2,20,20", "--overwrite") == 130
        assert digest(keep) == before            # the older output stays as it was
    assert sorted(_leftovers(tmp_path)) == [".keep.zarr.partial", ".new.zarr.partial"]
    assert _segment(prob, tmp_path / "new.zarr", "--block", "2,20,20", "--resume") == 0
    assert _segment(prob, keep, "--block", "2,20,20", "--overwrite", "--resume") == 0
    assert digest(keep) == before                # the same labels, now from the resumed run
    assert _leftovers(tmp_path) == []


def test_ctrl_c_in_evaluate_does_not_offer_resume(tmp_path, capsys, monkeypatch):
    from masktwins_bio import metrics

    prob = _prediction(tmp_path / "prob.zarr", _prob())
    labels = _array(tmp_path / "lab.zarr", np.ones(SHAPE, np.uint8))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(metrics, "evaluate_volumes", interrupted)
    assert _evaluate(prob, labels) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err


def test_segment_output_path_mistakes(tmp_path, cli_error):
    prob = _prediction(tmp_path / "prob.zarr", _prob())
    assert _segment(prob, "") == 2
    assert "give an output path" in cli_error()
    a_file = tmp_path / "hostname"
    a_file.write_text("x")
    assert _segment(prob, a_file / "out.zarr") == 2
    assert "is a file, not a folder" in cli_error()


def test_instance_scoring_checks_the_ground_truth_and_its_options(tmp_path, cli_error):
    """Probabilities given as ground truth would cast to no true instance and score NaN; a
    threshold or a method's option that would be ignored is refused."""
    ids = _array(tmp_path / "ids.zarr", (_prob(seed=2) * 5).astype(np.uint16))
    float_gt = _array(tmp_path / "gt.zarr", _prob(seed=3))
    assert _evaluate(ids, float_gt, "--instances") == 2
    msg = cli_error()  # ground truth cannot be segmented: the advice is to give integer ids
    assert "not instance labels; give the ground truth as integer instance ids" in msg
    assert "segment" not in msg and "--instances" not in msg
    assert _evaluate(ids, ids, "--instances", "--threshold", "7") == 2
    assert "--threshold applies to probabilities" in cli_error()
    prob = _prediction(tmp_path / "prob.zarr", _prob())
    assert _segment(prob, tmp_path / "a.zarr", "--labels", str(float_gt)) == 2
    msg = cli_error()  # segment has no --instances to drop
    assert "give the ground truth as integer instance ids" in msg and "--instances" not in msg
    assert not (tmp_path / "a.zarr").exists()
    assert _segment(prob, tmp_path / "b.zarr", "--method", "watershed", "--min-size", "5") == 2
    assert "--min-size applies to --method cc, not watershed" in cli_error()
    assert _segment(prob, tmp_path / "c.zarr", "--halo", "4") == 2
    assert "--halo applies to --method watershed, not cc" in cli_error()


def test_negative_ids_are_refused_not_scored_as_one_more_instance(tmp_path, cli_error):
    """-1 ('unlabelled') wrapped to 2**64 - 1 and was scored as a true instance: AP 0.505 for a
    perfect prediction."""
    gt = np.full((2, 8, 8), -1, np.int32)
    gt[:, :3, :3] = 1
    pred = np.where(gt > 0, gt, 0).astype(np.uint32)
    assert _evaluate(_array(tmp_path / "pred.zarr", pred), _array(tmp_path / "gt.zarr", gt),
                     "--instances") == 2
    assert "The ground truth holds negative ids" in cli_error()


def test_wide_instance_ids_are_not_read_as_an_8_bit_mask(tmp_path, cli_error):
    """uint16 ids 1..200 passed the 0/255 rule (> 127): ids 1-127 became background and a
    perfect prediction scored IoU 36.5."""
    gt = np.zeros((2, 20, 20), np.uint16)
    gt.flat[np.arange(200) * 4] = np.arange(1, 201)
    pred = _prediction(tmp_path / "p.zarr", (gt > 0).astype(np.float32))
    assert _evaluate(pred, _array(tmp_path / "gt.zarr", gt)) == 2
    assert "look like instance ids" in cli_error()


def test_json_lines_are_strict_json(tmp_path, capsys):
    """A metric with no foreground (NaN) is written as null, which every JSON parser reads."""
    prob = _prediction(tmp_path / "prob.zarr", _prob())
    empty = _array(tmp_path / "empty.zarr", np.zeros(SHAPE, np.uint8))
    capsys.readouterr()
    assert _evaluate(prob, empty, "--json") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "NaN" not in line and json.loads(line)["map"] is None


def test_evaluate_checks_the_labels_shape_before_reading_them(tmp_path, cli_error):
    """The ground truth was loaded whole (8 GB for MitoEM as bool) before its shape was
    compared; a label volume of another shape that is no mask at all must get the shape
    sentence, not the binarisation one."""
    prob = _prediction(tmp_path / "prob.zarr", _prob())
    ids = _array(tmp_path / "ids.zarr", np.arange(6 * 40 * 30, dtype=np.uint32).reshape(6, 40, 30))
    assert _evaluate(prob, ids) == 2
    assert "same volume" in cli_error()


def test_evaluate_reads_labels_by_section_with_the_whole_volume_rule(tmp_path, capsys):
    """An anti-aliased 0/255 mask whose first section holds only 0 and 1 is binarised as the
    whole volume says (> 127), as load_labels does, not section by section (> 0)."""
    from masktwins_bio.data.volumes import load_labels
    from masktwins_bio.metrics import evaluate_volumes

    p = _prob()
    gt = np.where(p > 0.6, 255, 0).astype(np.uint8)
    gt[0] = (p[0] > 0.3)          # 0/1 values: background under the volume's rule
    gt[2][(p[2] > 0.55) & (p[2] <= 0.6)] = 90   # anti-aliased edge: background too
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    prob = _prediction(tmp_path / "prob.zarr", p)
    capsys.readouterr()
    assert _evaluate(prob, tmp_path / "gt.tif", "--json") == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = evaluate_volumes(p, load_labels(str(tmp_path / "gt.tif")))
    assert not load_labels(str(tmp_path / "gt.tif"))[0].any()
    for key, value in got.items():
        assert value == pytest.approx(expected[key], nan_ok=True), key
