"""masktwins_bio.metrics agrees with scikit-learn and handles edge cases and zarr volumes."""
import math

import numpy as np
import pytest

from masktwins_bio import metrics
from masktwins_bio.errors import InputError
from masktwins_bio.metrics import (daisc_slice_metrics, evaluate_volumes, format_table,
                                   volume_metrics)

skm = pytest.importorskip("sklearn.metrics")


def _random_volume(seed, quantise=None, dtype=np.float64, shape=(5, 24, 32)):
    """Probabilities correlated with labels; slice 1 has no foreground, slice 2 nothing at all."""
    rng = np.random.default_rng(seed)
    labels = rng.random(shape) < 0.3
    prob = np.clip(0.35 * labels + 0.65 * rng.random(shape), 0, 1)
    if quantise:
        prob = np.round(prob / quantise) * quantise
    labels[1] = False
    labels[2], prob[2] = False, 0.1 * prob[2]
    return prob.astype(dtype), labels


def _sklearn_reference(prob, labels, t=0.5):
    per = {"map": [], "f1": [], "mcc": [], "iou": []}
    for p, y in zip(prob, labels):
        p, y, pred = p.ravel(), y.ravel(), p.ravel() > t
        per["map"].append(skm.average_precision_score(y, p) if y.any() else math.nan)
        per["f1"].append(skm.f1_score(y, pred, zero_division=1.0))
        per["mcc"].append(skm.matthews_corrcoef(y, pred))
        per["iou"].append(skm.jaccard_score(y, pred, zero_division=1.0))
    return per


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("quantise,dtype", [(None, np.float64), (None, np.float32),
                                            (0.1, np.float64), (0.01, np.float32)])
def test_slice_metrics_match_sklearn(seed, quantise, dtype):
    prob, labels = _random_volume(seed, quantise, dtype)
    ref = _sklearn_reference(prob, labels)
    got = daisc_slice_metrics(prob, labels)
    for k, values in ref.items():
        np.testing.assert_allclose(got["per_slice"][k], values, atol=1e-6, equal_nan=True)
        assert got[k] == pytest.approx(np.nanmean(values), abs=1e-6)
    assert math.isnan(got["per_slice"]["map"][1])  # no foreground: skipped in the mAP mean


@pytest.mark.parametrize("seed", [0, 1])
def test_volume_metrics_match_sklearn(seed):
    prob, labels = _random_volume(seed, 0.1)
    y, pred = labels.ravel(), prob.ravel() > 0.5
    got = volume_metrics(prob, labels)
    assert got["volume_iou"] == pytest.approx(skm.jaccard_score(y, pred), abs=1e-12)
    assert got["volume_dice"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)


def test_hand_computed_tiny_cases():
    # Distinct scores 0.9 0.8 0.7 0.6 with labels 1 0 1 0: AP = 1 * 1/2 + 2/3 * 1/2.
    p = np.array([[[0.9, 0.8, 0.7, 0.6]]])
    y = np.array([[[1, 0, 1, 0]]], dtype=bool)
    r = daisc_slice_metrics(p, y)
    assert r["map"] == pytest.approx(1 / 2 + 1 / 3)
    # prediction 1 1 1 1: TP 2, FP 2, FN 0, TN 0 -> F1 2/3, IoU 1/2, MCC 0 (zero denominator).
    assert (r["f1"], r["iou"], r["mcc"]) == pytest.approx((2 / 3, 1 / 2, 0.0))
    # A tie: both 0.5 scores form one threshold, so AP = recall step 1 times precision 1/3.
    p = np.array([[[0.5, 0.5, 0.9]]])
    y = np.array([[[1, 0, 0]]], dtype=bool)
    r = daisc_slice_metrics(p, y)
    assert r["map"] == pytest.approx(1 / 3)
    # prediction 0 0 1: TP 0, FP 1, FN 1, TN 1 -> MCC (0 - 1) / sqrt(1 * 1 * 2 * 2) = -0.5.
    assert (r["f1"], r["iou"], r["mcc"]) == pytest.approx((0.0, 0.0, -0.5))


def test_empty_prediction_and_labels():
    r = evaluate_volumes(np.zeros((3, 4, 4)), np.zeros((3, 4, 4), dtype=bool))
    assert math.isnan(r["map"])
    assert (r["f1"], r["iou"], r["mcc"]) == (1.0, 1.0, 0.0)
    assert (r["volume_iou"], r["volume_dice"]) == (1.0, 1.0)
    assert r["slices"] == 3 and r["threshold"] == 0.5


def test_negative_zero_counts_as_zero():
    p = np.array([[[-0.0, 0.0, 0.4]]], dtype=np.float32)
    y = np.array([[[1, 0, 1]]], dtype=bool)
    assert daisc_slice_metrics(p, y)["map"] == pytest.approx(skm.average_precision_score(
        y.ravel(), np.abs(p.ravel())))


def test_evaluate_volumes_keys_and_consistency():
    prob, labels = _random_volume(5, 0.1)
    r = evaluate_volumes(prob, labels, threshold=0.4)
    assert set(r) == {"map", "f1", "mcc", "iou", "volume_iou", "volume_dice", "per_slice",
                      "threshold", "slices"}
    assert all(isinstance(r[k], float) for k in ("map", "f1", "mcc", "iou", "volume_iou",
                                                 "volume_dice"))
    slice_r, vol_r = daisc_slice_metrics(prob, labels, 0.4), volume_metrics(prob, labels, 0.4)
    for k in ("map", "f1", "mcc", "iou"):
        assert r[k] == slice_r[k]
    assert r["volume_iou"] == vol_r["volume_iou"] and r["volume_dice"] == vol_r["volume_dice"]
    assert r["slices"] == 5 and len(r["per_slice"]["iou"]) == 5


def test_zarr_volumes_equal_numpy(tmp_path, monkeypatch):
    zarr = pytest.importorskip("zarr")
    prob, labels = _random_volume(7, 0.1, np.float32, shape=(7, 16, 20))
    zp = zarr.create_array(store=str(tmp_path / "p.zarr"), shape=prob.shape,
                           chunks=(2, 16, 20), dtype="float32")
    zl = zarr.create_array(store=str(tmp_path / "l.zarr"), shape=labels.shape,
                           chunks=(3, 8, 8), dtype="bool")
    zp[:], zl[:] = prob, labels
    monkeypatch.setattr(metrics, "_SLAB_VOXELS", 3 * 16 * 20)  # several slabs, one partial
    assert volume_metrics(zp, zl) == volume_metrics(prob, labels)
    a, b = evaluate_volumes(zp, zl), evaluate_volumes(prob, labels)
    np.testing.assert_equal(a, b)


def test_shape_mismatch_raises():
    with pytest.raises(InputError, match=r"shape \(2, 4, 4\) but the labels have shape "
                                         r"\(2, 4, 5\); give labels of the same volume\."):
        evaluate_volumes(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), dtype=bool))
    with pytest.raises(InputError, match="Z, Y, X"):
        volume_metrics(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool))


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan])
def test_probabilities_out_of_range_raise(bad):
    p = np.full((2, 3, 3), 0.2)
    p[1, 1, 1] = bad
    y = np.zeros((2, 3, 3), dtype=bool)
    for fn in (daisc_slice_metrics, volume_metrics, evaluate_volumes):
        with pytest.raises(InputError, match=r"\[0, 1\]"):
            fn(p, y)


def test_format_table():
    text = format_table({"source only": {"iou": 0.75, "f1": 0.8571, "mcc": 0.8, "map": 0.9},
                         "masktwins": {"iou": (0.75, 0.012), "f1": float("nan")}})
    lines = text.splitlines()
    assert lines[0].split() == ["method", "iou", "f1", "mcc", "map"]
    assert "75.0" in lines[2] and "85.7" in lines[2] and "90.0" in lines[2]
    assert "75.0 ± 1.2" in lines[3] and "n/a" in lines[3] and "-" in lines[3]
    assert len({len(line) for line in lines}) == 1  # columns are aligned
