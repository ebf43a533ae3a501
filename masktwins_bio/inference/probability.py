"""Probability maps as ``segment`` and ``evaluate`` read them.

A probability map is a float volume in [0, 1], or an integer output of ``predict --dtype uint8``
whose attributes carry ``"scale": 255`` (see :mod:`.store`): it is read back as value / scale,
so it scores like the float output it was made from. Other integer volumes (instance labels,
raw EM) are not probabilities, and a prediction whose metadata says ``complete: false`` was
stopped half-way: its missing blocks read as 0, so results from it would be silently wrong.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

SAMPLE_BLOCKS = 8  # blocks whose values segment checks before it writes anything


def prediction_attrs(vol) -> dict:
    """The ``masktwins_bio`` attributes of a volume written by ``predict`` ({} for others)."""
    array = getattr(getattr(vol, "_source", None), "array", None)
    try:
        meta = dict(getattr(array, "attrs", None) or {}).get("masktwins_bio")
    except (TypeError, ValueError, OSError):  # formats whose attributes are not a mapping
        return {}
    return meta if isinstance(meta, dict) else {}


def check_finished(meta: dict, where: str) -> None:
    if meta.get("complete") is False:
        raise InputError(f"'{where}' is an unfinished prediction (its run stopped before the "
                         "last block); finish it with `masktwins-bio predict --resume` first.")


def _scale(vol, meta: dict) -> float | None:
    """The stored scale of an integer prediction, None when the volume carries none."""
    scale = meta.get("scale")
    dtype = np.dtype(vol.dtype)
    if dtype.kind == "u" and dtype.itemsize <= 2 and isinstance(scale, (int, float)) \
            and scale > 1:
        return float(scale)
    return None


def _where_in(key) -> str:
    starts = [k.start if isinstance(k, slice) else k for k in key]
    return "the block at " + ", ".join(f"{a}={s or 0}" for a, s in zip("zyx", starts))


class ProbabilityView:
    """Read-only (Z, Y, X) probabilities of a volume: values / ``scale``, and with ``check``
    every read must lie in [0, 1] (InputError naming the block otherwise). float64 maps stay
    float64 (rounding to float32 would move 0.5 + 1e-9 onto a 0.5 threshold, and ``evaluate``
    keeps them exact); every other map reads as float32."""

    ndim = 3

    def __init__(self, vol, scale: float = 1.0, where: str = "", check: bool = True):
        self.vol, self.scale, self.where, self.check = vol, scale, where, check
        self.shape = tuple(vol.shape)
        self.dtype = np.dtype(np.float64 if np.dtype(vol.dtype) == np.float64 else np.float32)

    def __getitem__(self, key) -> np.ndarray:
        data = np.asarray(self.vol[key])
        p = data.astype(self.dtype, copy=False)
        if self.scale != 1.0:
            p = p / self.dtype.type(self.scale)
        if self.check:
            self._check_range(p, key if isinstance(key, tuple) else (key,))
        return p

    def _check_range(self, p: np.ndarray, key) -> None:
        if not p.size:
            return
        lo, hi = p.min(), p.max()
        if lo >= 0 and hi <= 1:  # False for NaN as well
            return
        found = "NaN" if np.isnan(lo) or np.isnan(hi) else f"values in [{lo:g}, {hi:g}]"
        raise InputError(f"'{self.where}' holds {found} in {_where_in(key)}, not probabilities "
                         "in [0, 1]; give a probability map such as the output of "
                         "`masktwins-bio predict`.")

    def check_sample(self, block, count: int | None = None) -> None:
        """Read ``count`` (default SAMPLE_BLOCKS) blocks spread over the volume, first and last
        included, so a volume that is no probability map is refused before any output exists;
        a bad block elsewhere is caught when it is read."""
        count = max(count or SAMPLE_BLOCKS, 1)
        grid = [-(-n // b) for n, b in zip(self.shape, block)]
        picks = np.unique(np.linspace(0, int(np.prod(grid)) - 1, count).round())
        for flat in picks.astype(np.int64):
            index = np.unravel_index(int(flat), grid)
            self[tuple(slice(i * b, min((i + 1) * b, n))
                       for i, b, n in zip(index, block, self.shape))]


def segment_source(vol, where: str) -> ProbabilityView:
    """``vol`` as the probabilities ``segment`` thresholds; InputError for anything else."""
    meta = prediction_attrs(vol)
    check_finished(meta, where)
    if np.dtype(vol.dtype).kind == "f":
        return ProbabilityView(vol, 1.0, where)
    scale = _scale(vol, meta)
    if scale is None:
        raise InputError(f"'{where}' holds {vol.dtype} values, not probabilities (labels or a "
                         "raw image?); give a float probability map in [0, 1] or the output "
                         "of `masktwins-bio predict`.")
    return ProbabilityView(vol, scale, where)


def evaluate_source(vol, where: str):
    """``vol`` as ``evaluate`` scores it: integer predictions read back through their scale;
    metrics.py checks the values of every slice itself."""
    meta = prediction_attrs(vol)
    check_finished(meta, where)
    scale = _scale(vol, meta)
    return vol if scale is None else ProbabilityView(vol, scale, where, check=False)


PREDICTED_INSTANCES = "prediction"   # roles of check_instance_labels
TRUE_INSTANCES = "ground truth"


def check_instance_labels(vol, where: str, role: str = PREDICTED_INSTANCES) -> None:
    """Instance ids are what AP-75 scores (``evaluate --instances``, ``segment --labels``); a
    probability map or float volume holds none. The advice depends on the volume's ``role``:
    a prediction can be segmented, ground truth must be given as integer ids."""
    meta = prediction_attrs(vol)
    check_finished(meta, where)
    if np.dtype(vol.dtype).kind == "f" or meta.get("kind") == "foreground_probability":
        if role == TRUE_INSTANCES:
            raise InputError(f"'{where}' holds {vol.dtype} values, not instance labels; give "
                             "the ground truth as integer instance ids (0 = background).")
        raise InputError(f"'{where}' holds probabilities, not instance labels; turn them into "
                         "labels with `masktwins-bio segment` first, or drop --instances.")
