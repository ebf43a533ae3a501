"""Per-item training augmentations as MONAI dictionary transforms (CPU, in loader workers).

- :func:`default_transforms` – flips on every axis, rot90 in the y/x plane (never mixing the
  anisotropic z axis), intensity scale/shift, Gaussian blur and noise; elastic deformation on
  request. Keys ``image`` (float) and ``label`` (nearest-neighbour, never intensity-changed).
- :func:`apply_seeded` – run a MONAI transform with a given seed (reproducible per item).

This is what :class:`~.sampling.CropDataset` applies when it is used as a loader on its own.
The UDA trainer instead draws flips/rot90 per crop (``train/domains.py``) and applies its
photometric augmentation to whole batches on their device, the GPU included
(``train/augment.py``): it needs the un-augmented target as the teacher's weak view and one
generator per iteration for bit-identical resumes, which per-item transforms in workers cannot give.
"""
from __future__ import annotations

import numpy as np


def default_transforms(ndim: int, keys=("image", "label"), elastic: bool = False,
                       square: bool = True):
    """A MONAI Compose for channel-first 2D (ndim=2) or 3D (ndim=3) dict samples; ``square``
    tells whether the crops' y and x sides are equal (otherwise no 90° turns, which would
    swap them: the flips of both axes still give the 180° turn)."""
    from monai.transforms import (Compose, Rand2DElasticd, Rand3DElasticd, RandFlipd,
                                  RandGaussianNoised, RandGaussianSmoothd, RandRotate90d,
                                  RandScaleIntensityd, RandShiftIntensityd)
    keys = list(keys)
    image = [k for k in keys if k == "image"]
    plane = (0, 1) if ndim == 2 else (1, 2)
    ts = [RandFlipd(keys, prob=0.5, spatial_axis=a, allow_missing_keys=True)
          for a in range(ndim)]
    if square:
        ts.append(RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=plane,
                                allow_missing_keys=True))
    if elastic:
        modes = ["bilinear" if k == "image" else "nearest" for k in keys]
        if ndim == 2:
            ts.append(Rand2DElasticd(keys, spacing=(32, 32), magnitude_range=(1, 3), prob=0.2,
                                     mode=modes, padding_mode="reflection",
                                     allow_missing_keys=True))
        else:
            ts.append(Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(20, 60),
                                     prob=0.2, mode=modes, padding_mode="reflection",
                                     allow_missing_keys=True))
    ts += [RandScaleIntensityd(image, factors=0.1, prob=0.5),
           RandShiftIntensityd(image, offsets=0.1, prob=0.5),
           RandGaussianSmoothd(image, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0),
                               sigma_z=(0.5, 1.0), prob=0.1),
           RandGaussianNoised(image, std=0.05, prob=0.15)]
    return Compose(ts)


def apply_seeded(transform, sample: dict, seed: int) -> dict:
    """Apply a MONAI transform (or any callable) with its random state set from ``seed``."""
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=int(seed) % (2**32))
    return transform(sample)


def seed_for(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))
