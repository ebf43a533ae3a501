"""Photometric augmentation of a batch on its own device, from an explicit generator.

Written here rather than with MONAI's per-sample dictionary transforms because it runs on whole
batches on the GPU and draws every random number from one ``torch.Generator`` seeded per
iteration, which is what makes a resumed run bit-identical to an uninterrupted one. Both twins
receive the same augmented image (METHOD.md: augmentation before masking).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import AugmentConfig


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _gaussian_kernel(sigma: float, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(round(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def _blur_inplane(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur along the last two (in-plane) axes of one sample (1, C, ...)."""
    k = _gaussian_kernel(sigma, x.dtype).to(x.device)
    n = k.numel()
    spatial = x.shape[2:]
    flat = x.reshape(-1, 1, spatial[-2], spatial[-1])
    flat = F.conv2d(F.pad(flat, (n // 2, n // 2, 0, 0), mode="reflect"), k.view(1, 1, 1, n))
    flat = F.conv2d(F.pad(flat, (0, 0, n // 2, n // 2), mode="reflect"), k.view(1, 1, n, 1))
    return flat.reshape(x.shape)


def photometric(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Contrast, brightness, blur and noise per sample; x is (B, C, *spatial), normalised."""
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    contrast = _uniform(gen, b, 1 - cfg.contrast, 1 + cfg.contrast).view(view).to(x)
    shift = _uniform(gen, b, -cfg.brightness, cfg.brightness).view(view).to(x)
    out = x * contrast + shift
    blur_draw = torch.rand(b, generator=gen)
    sigmas = _uniform(gen, b, 0.3, max(cfg.blur_sigma, 0.3))
    if cfg.blur_sigma > 0 and cfg.blur_prob > 0:
        parts = []
        for i in range(b):
            sample = out[i:i + 1]
            parts.append(_blur_inplane(sample, float(sigmas[i]))
                         if blur_draw[i] < cfg.blur_prob else sample)
        out = torch.cat(parts)
    if cfg.noise > 0:
        std = _uniform(gen, b, 0.0, cfg.noise).view(view).to(x)
        noise = torch.randn(x.shape, generator=gen).to(x)
        out = out + std * noise
    return out
