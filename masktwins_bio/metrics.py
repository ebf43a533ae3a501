"""Segmentation metrics of the DA-ISC evaluation protocol, computed out-of-core.

The protocol follows DA-ISC (``scripts/dataset/target_dataset.py:metric_map``): for every 2D
slice z of a (Z, Y, X) volume it computes

* ``map``: average precision of the raw probabilities against the labels, exactly as
  ``sklearn.metrics.average_precision_score`` does (step-wise AP = sum_n (R_n - R_{n-1}) P_n over
  the distinct probability values taken as thresholds, never interpolated);
* ``f1``, ``mcc`` and ``iou`` (foreground Jaccard) of ``prob > threshold`` against the labels;

and reports the mean of each over z. ``volume_iou`` and ``volume_dice`` come from TP/FP/FN counted
over the whole volume.

Edge cases are fixed and deterministic:

* a slice without foreground label has no AP; it is skipped in the ``map`` mean (its entry in
  ``per_slice["map"]`` is nan), and ``map`` is nan when no slice has foreground;
* F1, IoU, Dice are 1.0 when both prediction and label are empty;
* MCC is 0.0 when its denominator is zero (sklearn's convention).

Inputs are read one z-slice (or z-slab) at a time with ``a[z]`` slicing, so any array-like with
``shape`` and numpy slicing along z (numpy, zarr, h5py, memmap) works without being loaded whole.
Labels count as foreground where they are non-zero. scikit-learn is only used by the tests.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .errors import InputError

__all__ = ["daisc_slice_metrics", "volume_metrics", "evaluate_volumes", "format_table"]

_SLAB_VOXELS = 1 << 24  # voxels read at once by volume_metrics (64 MB of float32)
_METRIC_KEYS = ("map", "f1", "mcc", "iou")


def _check_inputs(prob, labels) -> None:
    ps, ls = tuple(np.shape(prob)), tuple(np.shape(labels))
    if ps != ls:
        raise InputError(f"The prediction has shape {ps} but the labels have shape {ls}; "
                         "give labels of the same volume.")
    if len(ps) != 3:
        raise InputError(f"The prediction has shape {ps} but metrics need a (Z, Y, X) volume; "
                         "give 3D arrays (add a leading axis of 1 for a single slice).")


def _as_prob(p, where: str) -> np.ndarray:
    """Read ``p`` as a float array (float32 or float64, never rounded) and check it is in [0, 1]."""
    p = np.asarray(p)
    integers = p.dtype.kind in "iu"
    wide = p.dtype.kind == "f" and p.dtype.itemsize >= 8
    p = p.astype(np.float64 if wide else np.float32, copy=False)
    if p.size:
        lo, hi = p.min(), p.max()
        if not (lo >= 0 and hi <= 1):  # also catches NaN, which propagates through min/max
            raise InputError(_range_message(where, lo, hi, integers))
    return p


def _range_message(where: str, lo, hi, integers: bool) -> str:
    if integers:  # whole numbers past 1 are ids or grey values, not probabilities
        return (f"The prediction in {where} holds whole numbers in [{lo:g}, {hi:g}], which look "
                "like labels, not probabilities in [0, 1]; pass --instances to score instance "
                "labels.")
    found = "contain NaN" if np.isnan(lo) else f"range over [{lo:g}, {hi:g}]"
    return (f"The probabilities in {where} {found}; give probabilities in [0, 1] (apply a "
            "sigmoid/softmax first).")


def _counts(pred: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """[TP, FP, FN, TN] of two boolean arrays, as int64."""
    tp = int(np.count_nonzero(pred & lab))
    npred, nlab = int(np.count_nonzero(pred)), int(np.count_nonzero(lab))
    return np.array([tp, npred - tp, nlab - tp, pred.size - npred - nlab + tp], dtype=np.int64)


def _average_precision(p: np.ndarray, lab: np.ndarray) -> float:
    """sklearn's step-wise average precision, vectorised; nan when ``lab`` has no foreground.

    Non-negative IEEE floats order like their bit patterns, so each voxel is packed into one
    unsigned key ``bits << 1 | label`` and a plain ``np.sort`` (several times faster than
    ``argsort``) orders voxels by probability. The shift drops the sign bit, so -0.0 == +0.0.
    Ties are grouped by distinct probability exactly as ``precision_recall_curve`` does, and the
    order of labels inside a tie does not matter because only each group's end is used.
    """
    uint = np.uint64 if p.dtype == np.float64 else np.uint32
    keys = (p.ravel().view(uint) << uint(1)) | lab.ravel().astype(uint)
    keys.sort()
    keys = keys[::-1]  # descending probability
    tps = np.cumsum(keys & uint(1), dtype=np.int64)
    if tps.size == 0 or tps[-1] == 0:
        return math.nan
    score = keys >> uint(1)
    ends = np.append(np.flatnonzero(score[1:] != score[:-1]), score.size - 1)
    tp = tps[ends]
    precision = tp / (ends + 1.0)
    recall_step = np.diff(tp, prepend=0) / float(tp[-1])
    return float(np.sum(recall_step * precision))


def _binary_scores(c: np.ndarray) -> tuple[float, float, float]:
    """F1, MCC and IoU from [TP, FP, FN, TN] with the module's edge-case conventions."""
    tp, fp, fn, tn = (float(v) for v in c)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt(den) if den else 0.0
    return f1, mcc, iou


def _scan(prob, labels, threshold: float) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (AP, [TP, FP, FN, TN]) per z-slice, reading one slice of each input at a time."""
    _check_inputs(prob, labels)
    for z in range(np.shape(prob)[0]):
        p = _as_prob(prob[z], f"slice z={z}")
        lab = np.asarray(labels[z]) != 0
        yield _average_precision(p, lab), _counts(p > threshold, lab)


def _summarise(prob, labels, threshold: float) -> tuple[dict, np.ndarray]:
    per = {k: [] for k in _METRIC_KEYS}
    total = np.zeros(4, dtype=np.int64)
    for ap, c in _scan(prob, labels, threshold):
        total += c
        per["map"].append(ap)
        for k, v in zip(("f1", "mcc", "iou"), _binary_scores(c)):
            per[k].append(v)
    aps = [a for a in per["map"] if not math.isnan(a)]
    out = {"map": float(np.mean(aps)) if aps else math.nan}
    for k in ("f1", "mcc", "iou"):
        out[k] = float(np.mean(per[k])) if per[k] else math.nan
    out["per_slice"] = per
    return out, total


def _volume_scores(c: np.ndarray) -> dict:
    tp, fp, fn = (int(v) for v in c[:3])
    if tp + fp + fn == 0:
        return {"volume_iou": 1.0, "volume_dice": 1.0}
    return {"volume_iou": tp / (tp + fp + fn), "volume_dice": 2 * tp / (2 * tp + fp + fn)}


def daisc_slice_metrics(prob, labels, threshold: float = 0.5) -> dict:
    """Per-slice mAP, F1, MCC and IoU averaged over z (DA-ISC protocol, see module docstring).

    Returns ``{"map", "f1", "mcc", "iou", "per_slice": {"map": [...], "f1": [...], ...}}``;
    ``per_slice["map"]`` holds nan for slices without foreground, which ``map`` skips.
    """
    return _summarise(prob, labels, threshold)[0]


def volume_metrics(prob, labels, threshold: float = 0.5) -> dict:
    """``volume_iou`` and ``volume_dice`` of ``prob > threshold`` over the whole volume.

    Reads z-slabs of about 16M voxels (aligned to the array's z-chunks when it has ``chunks``),
    so zarr/h5py volumes larger than memory are fine. Empty prediction and label give 1.0.
    """
    _check_inputs(prob, labels)
    nz, ny, nx = np.shape(prob)
    step = max(1, _SLAB_VOXELS // max(1, ny * nx))
    zchunk = (getattr(prob, "chunks", None) or (1,))[0]
    step = max(zchunk, step // zchunk * zchunk)
    total = np.zeros(4, dtype=np.int64)
    for z0 in range(0, nz, step):
        p = _as_prob(prob[z0:z0 + step], f"slices z={z0}..{min(nz, z0 + step) - 1}")
        total += _counts(p > threshold, np.asarray(labels[z0:z0 + step]) != 0)
    return _volume_scores(total)


def evaluate_volumes(prob, labels, threshold: float = 0.5) -> dict:
    """All metrics in one out-of-core pass: ``map, f1, mcc, iou, volume_iou, volume_dice``.

    Also returns ``per_slice`` (as in :func:`daisc_slice_metrics`), ``threshold`` and ``slices``
    (the number of z-slices). Each slice of ``prob`` and ``labels`` is read exactly once.
    """
    out, total = _summarise(prob, labels, threshold)
    out.update(_volume_scores(total))
    out["threshold"] = float(threshold)
    out["slices"] = len(out["per_slice"]["map"])
    return out


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (tuple, list)):
        mean, std = v
        return f"{_cell(mean)} ± {100 * float(std):.1f}"
    v = float(v)
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}"


def format_table(rows: dict[str, dict], keys=("iou", "f1", "mcc", "map")) -> str:
    """A plain-text table, one row per method, metrics shown as percentages with one decimal.

    A value may be a number in [0, 1] (``0.75`` -> ``75.0``) or a ``(mean, std)`` tuple
    (-> ``75.0 ± 1.2``); a missing key shows ``-`` and nan shows ``n/a``.
    """
    header = ["method", *keys]
    body = [[str(name), *(_cell(m.get(k)) for k in keys)] for name, m in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(r):
        return "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


# -- MitoEM instance metric (appended for issue 4) ----------------------------------------------

def _instance_overlaps(pred, gt):
    """Voxel counts of every predicted id, every GT id and every overlapping (pred, gt) pair,
    read in z-slabs of about ``_SLAB_VOXELS`` voxels (ids > 0 only)."""
    nz, ny, nx = np.shape(pred)
    step = max(1, _SLAB_VOXELS // max(1, ny * nx))
    sizes_p: dict = {}
    sizes_g: dict = {}
    pairs: dict = {}

    def add(target, keys, counts):
        for k, c in zip(keys.tolist(), counts.tolist()):
            target[k] = target.get(k, 0) + c

    for z0 in range(0, nz, step):
        p = _instance_ids(pred[z0:z0 + step], "prediction", z0)
        g = _instance_ids(gt[z0:z0 + step], "ground truth", z0)
        add(sizes_p, *np.unique(p[p > 0], return_counts=True))
        add(sizes_g, *np.unique(g[g > 0], return_counts=True))
        both = (p > 0) & (g > 0)
        keys, counts = np.unique(np.stack([p[both], g[both]], axis=1), axis=0,
                                 return_counts=True)
        for (a, b), c in zip(keys.tolist(), counts.tolist()):
            pairs[(a, b)] = pairs.get((a, b), 0) + c
    return sizes_p, sizes_g, pairs


def _instance_ids(slab, role: str, z0: int) -> np.ndarray:
    """A slab's ids as flat uint64; negative ids (a -1 'unlabelled' convention) would wrap to
    2**64 - 1 and count as one more instance, so they are refused."""
    a = np.asarray(slab)
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise InputError(f"The {role} holds negative ids (in the slices from z={z0}); give "
                         "instance ids >= 0, with 0 for background.")
    return a.astype(np.uint64).ravel()


def instance_ap(pred, gt, iou_threshold: float = 0.75, scores: dict | None = None) -> dict:
    """MitoEM instance average precision (AP-75 by default) of two (Z, Y, X) label volumes.

    Follows the MitoEM evaluation (``mAP_3Dvolume``, COCO-style): predictions are ranked by
    ``scores`` (id -> confidence; by default their size in voxels, largest first), each is
    matched to the unmatched ground-truth instance of highest IoU, a match with IoU >=
    ``iou_threshold`` is a true positive, and AP is the mean over the 101 recall thresholds
    0, 0.01, ..., 1 of the interpolated precision (0 past the largest recall). Label 0 is
    background. Returns ``{"ap", "tp", "fp", "fn", "n_pred", "n_gt"}``; ``ap`` is nan without
    ground-truth instances. Volumes are read in z-slabs, so zarr/h5py inputs stay on disk.
    """
    _check_inputs(pred, gt)
    sizes_p, sizes_g, pairs = _instance_overlaps(pred, gt)
    by_pred: dict = {}
    for (a, b), inter in pairs.items():
        iou = inter / (sizes_p[a] + sizes_g[b] - inter)
        by_pred.setdefault(a, []).append((iou, b))
    score = scores or sizes_p
    order = sorted(sizes_p, key=lambda k: (-score.get(k, 0), k))
    matched, tp = set(), []
    for a in order:
        best = max(((iou, b) for iou, b in by_pred.get(a, []) if b not in matched),
                   default=(0.0, None))
        hit = best[1] is not None and best[0] >= iou_threshold
        if hit:
            matched.add(best[1])
        tp.append(hit)
    n_gt = len(sizes_g)
    tp_arr = np.asarray(tp, dtype=bool)
    ntp = int(tp_arr.sum())
    out = {"tp": ntp, "fp": len(tp) - ntp, "fn": n_gt - ntp, "n_pred": len(tp), "n_gt": n_gt}
    if n_gt == 0:
        return {"ap": math.nan, **out}
    tps, fps = np.cumsum(tp_arr), np.cumsum(~tp_arr)
    recall = tps / n_gt
    precision = tps / np.maximum(tps + fps, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    thresholds = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, thresholds, side="left")
    q = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0) \
        if len(precision) else np.zeros_like(thresholds)
    return {"ap": float(q.mean()), **out}


# -- Semantic segmentation of scenes: mIoU over 19 / 16 / 13 classes (appended for issue 7) -----

def confusion_matrix(pred, labels, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(C, C) int64 counts, rows = label class, columns = predicted class; pixels whose label
    is ``ignore_index`` (or outside [0, C)) are left out. Sum it over images (the benchmark
    protocol pools all pixels of the split before dividing)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise InputError(f"The prediction has shape {pred.shape} but the labels have shape "
                         f"{labels.shape}; give labels of the same image.")
    lab = labels.astype(np.int64).ravel()
    keep = (lab != ignore_index) & (lab >= 0) & (lab < num_classes)
    idx = lab[keep] * num_classes + pred.astype(np.int64).ravel()[keep]
    return np.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def class_iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); nan for a class absent from labels and prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def scene_miou(conf: np.ndarray, names, subsets: dict, headline: int | None = None) -> dict:
    """mIoU over each subset of class ids (``{19: range(19), 16: ..., 13: ...}``) from one
    pooled confusion matrix, as mmseg/DAFormer report it (nan classes skipped in the mean).

    Returns ``{"miou19": ..., "miou16": ..., "miou13": ..., "per_class": {name: iou},
    "miou": headline}``; ``iou`` repeats the headline so that code selecting the best
    checkpoint by ``iou`` works unchanged.
    """
    ious = class_iou(conf)
    out: dict = {}
    for n, ids in subsets.items():
        vals = [ious[i] for i in ids if not math.isnan(ious[i])]
        out[f"miou{n}"] = float(np.mean(vals)) if vals else math.nan
    head = headline if headline is not None else max(subsets)
    out["miou"] = out["iou"] = out[f"miou{head}"]
    out["per_class"] = {str(names[i]): float(ious[i]) for i in range(len(names))}
    return out


def format_class_table(result: dict, subsets: dict) -> str:
    """Per-class IoU (%) with the subsets each class belongs to, then the mIoU rows."""
    per = result["per_class"]
    names = list(per)
    sizes = sorted(subsets, reverse=True)
    width = max(len(n) for n in names + ["mIoU (19)"])
    head = f"{'class'.ljust(width)}  {'IoU':>5}  " + "  ".join(f"{s:>3}" for s in sizes)
    lines = [head, "-" * len(head)]
    for i, name in enumerate(names):
        marks = "  ".join(f"{'x' if i in subsets[s] else '':>3}" for s in sizes)
        lines.append(f"{name.ljust(width)}  {_cell(per[name]):>5}  {marks}")
    lines.append("-" * len(head))
    for s in sizes:
        lines.append(f"{f'mIoU ({s})'.ljust(width)}  {_cell(result.get(f'miou{s}')):>5}")
    return "\n".join(lines)
