"""A one-image overview of an iteration for TensorBoard: target, twins, their predictions, the
teacher's and (with class-mix) the mixed image, side by side (first sample; middle section of a
3D crop)."""
from __future__ import annotations

import numpy as np

ORDER = ("target", "twin_a", "twin_b", "pred_a", "pred_b", "teacher", "mixed")


def _plane(t) -> np.ndarray:
    a = t[0, 0].float().cpu().numpy()
    if a.ndim == 3:
        a = a[a.shape[0] // 2]
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def view_grid(views: dict) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the available views in ORDER, separated by a thin gap."""
    planes = [_plane(views[k]) for k in ORDER if k in views]
    gap = np.ones((planes[0].shape[0], 2), np.float32)
    parts = []
    for p in planes:
        parts += [p.astype(np.float32), gap]
    return np.concatenate(parts[:-1], axis=1)
