"""Training augmentations: MONAI dictionary transforms on the CPU, or a batched torch version
that runs wherever the batch lives (the GPU, for 3D crops).

- :func:`default_transforms` – flips on every axis, rot90 in the y/x plane (never mixing the
  anisotropic z axis), intensity scale/shift, Gaussian blur and noise; elastic deformation on
  request. Keys ``image`` (float) and ``label`` (nearest-neighbour, never intensity-changed).
- :func:`apply_seeded` – run a MONAI transform with a given seed (reproducible per item).
- :class:`BatchAugment` – the same flips/rot90/intensity/noise on an (N, C, [Z,] Y, X) tensor
  batch with a torch.Generator, for GPU augmentation of 3D crops.
"""
from __future__ import annotations

import numpy as np


def default_transforms(ndim: int, keys=("image", "label"), elastic: bool = False):
    """A MONAI Compose for channel-first 2D (ndim=2) or 3D (ndim=3) dict samples."""
    from monai.transforms import (Compose, Rand2DElasticd, Rand3DElasticd, RandFlipd,
                                  RandGaussianNoised, RandGaussianSmoothd, RandRotate90d,
                                  RandScaleIntensityd, RandShiftIntensityd)
    keys = list(keys)
    image = [k for k in keys if k == "image"]
    plane = (0, 1) if ndim == 2 else (1, 2)
    ts = [RandFlipd(keys, prob=0.5, spatial_axis=a, allow_missing_keys=True)
          for a in range(ndim)]
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


class BatchAugment:
    """Flips, y/x rot90, intensity scale/shift and noise on a batch, on the batch's device.

    ``aug(image, label=None, seed=step)`` returns augmented (image, label); the same spatial
    transform is applied to image and label of one sample; each sample draws its own.
    """

    def __init__(self, flip_prob=0.5, rot90_prob=0.5, scale=0.1, shift=0.1, noise_std=0.05,
                 noise_prob=0.15):
        self.flip_prob, self.rot90_prob = flip_prob, rot90_prob
        self.scale, self.shift = scale, shift
        self.noise_std, self.noise_prob = noise_std, noise_prob

    def __call__(self, image, label=None, seed: int = 0):
        import torch
        gen = torch.Generator().manual_seed(int(seed))
        n, spatial = image.shape[0], image.ndim - 2
        out_img, out_lab = [], []
        for b in range(n):
            x = image[b]
            y = None if label is None else label[b]
            for axis in range(1, spatial + 1):
                if torch.rand(1, generator=gen).item() < self.flip_prob:
                    x = x.flip(axis)
                    y = None if y is None else y.flip(axis)
            if torch.rand(1, generator=gen).item() < self.rot90_prob:
                k = int(torch.randint(1, 4, (1,), generator=gen))
                dims = (spatial - 1, spatial)
                x = torch.rot90(x, k, dims)
                y = None if y is None else torch.rot90(y, k, dims)
            factor = 1 + (torch.rand(1, generator=gen).item() * 2 - 1) * self.scale
            offset = (torch.rand(1, generator=gen).item() * 2 - 1) * self.shift
            x = x * factor + offset
            if torch.rand(1, generator=gen).item() < self.noise_prob:
                noise = torch.randn(x.shape, generator=gen).to(x.device)
                x = x + noise * self.noise_std
            out_img.append(x)
            out_lab.append(y)
        image = torch.stack(out_img)
        label = None if label is None else torch.stack(out_lab)
        return image, label


def seed_for(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))
