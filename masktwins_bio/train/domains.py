"""The two domains of a run, in memory, and deterministic crop batches drawn from them.

A ``Domain`` holds one volume normalised with its own statistics (and, for the source, its
labels). ``draw_batch`` is a pure function of (seed, iteration, stream): no sampler state has to
be saved, and a resumed run sees exactly the crops an uninterrupted one would. Spatial
augmentation (flips, in-plane 90 degree rotations) happens here so image and label stay aligned.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.normalize import IntensityStats, compute_stats
from ..errors import InputError

# Separate random streams for the two domains and for what the trainer draws itself.
STREAM_SOURCE, STREAM_TARGET, STREAM_TRAIN, STREAM_GLOBAL = 1, 2, 3, 4


def iteration_rng(seed: int, iteration: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(iteration), int(stream)])


@dataclass
class Domain:
    name: str
    image: np.ndarray                 # (Z, Y, X) float32, normalised
    stats: IntensityStats
    labels: np.ndarray | None = None  # (Z, Y, X) bool
    foreground: np.ndarray | None = None  # (N, 3) coordinates of a subsample of foreground voxels

    @classmethod
    def from_arrays(cls, name: str, image: np.ndarray, labels: np.ndarray | None = None,
                    low_pct: float = 0.5, high_pct: float = 99.5) -> "Domain":
        if labels is not None and labels.shape != image.shape:
            raise InputError(f"The {name} image has shape {image.shape} but its labels have "
                             f"shape {labels.shape}; give labels of the same volume.")
        stats = compute_stats(image, low_pct, high_pct)
        fg = None
        if labels is not None:
            coords = np.argwhere(labels)
            if len(coords) > 100_000:  # a subsample keeps memory small and draws uniform enough
                coords = coords[np.random.default_rng(0).choice(len(coords), 100_000, False)]
            fg = coords
        return cls(name, stats.apply(image), stats,
                   None if labels is None else labels.astype(bool), fg)

    def check_crop(self, crop: tuple[int, ...], dims: int,
                   fix: str = "set a smaller data.crop") -> None:
        spatial = self.image.shape[-dims:]
        if any(c > s for c, s in zip(crop, spatial)):
            raise InputError(f"The crop {list(crop)} is larger than the {self.name} volume "
                             f"{list(spatial)}; {fix}.")


def _corner(shape, crop, rng, centre=None) -> tuple[int, ...]:
    corner = []
    for axis, (s, c) in enumerate(zip(shape, crop)):
        if centre is None:
            corner.append(int(rng.integers(0, s - c + 1)))
        else:
            corner.append(int(np.clip(centre[axis] - c // 2 + rng.integers(-c // 4, c // 4 + 1),
                                      0, s - c)))
    return tuple(corner)


def _spatial_augment(arrays: list[np.ndarray], rng: np.random.Generator, flip: bool,
                     rot90: bool) -> list[np.ndarray]:
    """Same random flips / in-plane rotation for every array (image and label) of one crop."""
    nd = arrays[0].ndim
    if flip:
        for axis in range(nd):
            if rng.random() < 0.5:
                arrays = [np.flip(a, axis) for a in arrays]
    if rot90 and arrays[0].shape[-1] == arrays[0].shape[-2]:
        k = int(rng.integers(0, 4))
        arrays = [np.rot90(a, k, axes=(nd - 2, nd - 1)) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def draw_batch(domain: Domain, n: int, crop: tuple[int, ...], dims: int,
               rng: np.random.Generator, foreground_prob: float = 0.0, flip: bool = True,
               rot90: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` crops (n, 1, *crop) float32 and, for a labelled domain, labels (n, 1, *crop)."""
    images, labels = [], []
    z_len = domain.image.shape[0]
    for _ in range(n):
        centre = None
        if domain.foreground is not None and len(domain.foreground) and \
                rng.random() < foreground_prob:
            centre = domain.foreground[rng.integers(0, len(domain.foreground))]
        if dims == 2:
            z = int(centre[0]) if centre is not None else int(rng.integers(0, z_len))
            y, x = _corner(domain.image.shape[1:], crop, rng,
                           None if centre is None else centre[1:])
            window = (z, slice(y, y + crop[0]), slice(x, x + crop[1]))
        else:
            corner = _corner(domain.image.shape, crop, rng, centre)
            window = tuple(slice(c, c + s) for c, s in zip(corner, crop))
        parts = [domain.image[window]]
        if domain.labels is not None:
            parts.append(domain.labels[window])
        parts = _spatial_augment(parts, rng, flip, rot90)
        images.append(parts[0])
        if domain.labels is not None:
            labels.append(parts[1])
    img = np.stack(images)[:, None].astype(np.float32)
    lab = np.stack(labels)[:, None].astype(np.float32) if labels else None
    return img, lab
