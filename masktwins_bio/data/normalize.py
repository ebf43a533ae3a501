"""Per-volume intensity normalisation.

Statistics are computed once per volume, slab by slab (never the whole volume in memory), and
then applied to every crop. After normalisation a volume has robust zero mean and unit standard
deviation, so a masked voxel (set to 0) sits at the volume's mean intensity, as METHOD.md asks.
Each volume gets its own statistics: this alone removes much of the contrast gap between
microscopes, which is why we never reuse the source's statistics on the target.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

# Enough voxels for stable 0.5/99.5 percentiles while reading at most a few MB at a time.
_MAX_SAMPLES = 4_000_000


@dataclass(frozen=True)
class IntensityStats:
    """Clip range and moments of one volume; ``apply`` maps raw intensities to ~N(0, 1)."""

    low: float
    high: float
    mean: float
    std: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Clip to [low, high] and standardise; returns float32 of the same shape."""
        x = np.clip(np.asarray(x, dtype=np.float32), self.low, self.high)
        return (x - np.float32(self.mean)) / np.float32(self.std)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IntensityStats":
        return cls(**{k: float(d[k]) for k in ("low", "high", "mean", "std")})


def _sample_voxels(volume, max_samples: int = _MAX_SAMPLES) -> np.ndarray:
    """A deterministic, evenly strided sample of voxels, read slab by slab along z."""
    shape = tuple(volume.shape)
    n = int(np.prod(shape))
    stride = max(1, int(np.ceil(n / max_samples)))
    # Stride within each slice; take every z when slices are small, else step in z as well.
    per_slice = shape[-1] * shape[-2]
    z_step = max(1, int(stride // per_slice)) if per_slice < stride else 1
    xy_step = max(1, int(np.ceil(np.sqrt(stride / z_step))))
    parts = []
    for z in range(0, shape[0], z_step):
        parts.append(np.asarray(volume[z, ::xy_step, ::xy_step], dtype=np.float32).ravel())
    return np.concatenate(parts)


def compute_stats(volume, low_pct: float = 0.5, high_pct: float = 99.5,
                  name: str | None = None) -> IntensityStats:
    """Robust statistics of a (Z, Y, X) array-like, reading one slice at a time.

    Raises InputError for an empty volume, NaN/inf values or a constant volume; the message
    names ``name`` (default: the volume's ``path``, when it has one).
    """
    name = name if name is not None else getattr(volume, "path", None)
    subject = f"'{name}'" if name else "The volume"
    if int(np.prod(volume.shape)) == 0:
        raise InputError(f"{subject} is empty (a zero-sized axis); give a volume with data.")
    sample = _sample_voxels(volume)
    if not np.all(np.isfinite(sample)):
        raise InputError(f"{subject} contains NaN or infinite values; clean or mask them first.")
    low, high = np.percentile(sample, [low_pct, high_pct])
    clipped = np.clip(sample, low, high)
    std = float(clipped.std())
    if std < 1e-8:
        raise InputError(f"{subject} has a constant intensity, so it cannot be normalised; "
                         "check that the right file was given.")
    return IntensityStats(float(low), float(high), float(clipped.mean()), std)
