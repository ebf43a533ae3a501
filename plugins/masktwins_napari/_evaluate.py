"""Metrics of a prediction layer against a labels layer (Qt-free).

The numbers are ``masktwins_bio.metrics.evaluate_volumes``: DA-ISC per-slice mAP, F1, MCC and
IoU averaged over z, and volume IoU / Dice. A prediction of a sub-region (what the Predict
widget adds for region 'view') is matched to the labels under it through the layers' scale and
translate, so it is scored against the same voxels.
"""
from __future__ import annotations

import numpy as np

from masktwins_bio.errors import InputError

from ._layers import Region, RegionView, layer_name, layer_volume

ROWS = (("map", "mAP", "per slice"), ("f1", "F1", "per slice"), ("mcc", "MCC", "per slice"),
        ("iou", "IoU", "per slice"), ("volume_iou", "IoU", "volume"),
        ("volume_dice", "Dice", "volume"))


def _offset(pred_layer, label_layer, pred_shape, label_shape) -> Region:
    """Where the prediction's voxels lie inside the labels' voxels; InputError if nowhere."""
    def transform(layer, shape):
        scale = np.ones(3)
        translate = np.zeros(3)
        s, t = np.asarray(layer.scale, float), np.asarray(layer.translate, float)
        scale[3 - len(s):], translate[3 - len(t):] = s, t
        return scale, translate

    ps, pt = transform(pred_layer, pred_shape)
    ls, lt = transform(label_layer, label_shape)
    mismatch = InputError(
        f"The prediction '{layer_name(pred_layer)}' (shape {tuple(pred_shape)}) and the labels "
        f"'{layer_name(label_layer)}' (shape {tuple(label_shape)}) do not cover the same voxels; "
        "pick the labels of the predicted image.")
    if not np.allclose(ps, ls):
        raise mismatch
    start = (pt - lt) / ls
    if not np.allclose(start, np.round(start), atol=1e-3):
        raise mismatch
    start = np.round(start).astype(int)
    stop = start + np.asarray(pred_shape)
    if np.any(start < 0) or np.any(stop > np.asarray(label_shape)):
        raise mismatch
    return Region(tuple(int(v) for v in start), tuple(int(v) for v in stop))


def aligned_volumes(pred_layer, label_layer):
    """``(prob, labels)`` lazy (Z, Y, X) array-likes of the same shape."""
    if pred_layer is None or label_layer is None:
        raise InputError("Pick both a prediction layer and a labels layer to evaluate.")
    if pred_layer is label_layer:
        raise InputError("The prediction and the labels are the same layer; pick the labels "
                         "layer that belongs to the image.")
    prob, labels = layer_volume(pred_layer), layer_volume(label_layer)
    if tuple(prob.shape) == tuple(labels.shape):
        return prob, labels
    region = _offset(pred_layer, label_layer, prob.shape, labels.shape)
    return prob, RegionView(labels, region)


def evaluate_layers(pred_layer, label_layer, threshold: float = 0.5) -> dict:
    """``evaluate_volumes`` of two layers (see module docstring)."""
    from masktwins_bio.metrics import evaluate_volumes

    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"Threshold {threshold} must lie strictly between 0 and 1.")
    prob, labels = aligned_volumes(pred_layer, label_layer)
    try:
        return evaluate_volumes(prob, labels, float(threshold))
    except InputError as err:
        if "--instances" not in str(err):
            raise
        # the library speaks of the CLI's flag; here the fix is picking another layer
        raise InputError(f"The prediction layer '{layer_name(pred_layer)}' holds whole numbers "
                         "(an image or labels), not probabilities in [0, 1]; pick a "
                         "probability layer, e.g. one the Predict widget made.") from None


def table_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(metric, kind, value in %) rows for the widget's table; nan shows as 'n/a'."""
    rows = []
    for key, name, kind in ROWS:
        v = float(metrics[key])
        rows.append((name, kind, "n/a" if np.isnan(v) else f"{100 * v:.1f}"))
    return rows
