"""Instance norm that takes its statistics from the visible voxels of a masked view.

MONAI's UNet normalises every feature map by its own spatial mean and variance. A masked
target view is half blank, so those statistics are the blank half's as much as the image's:
the first layer's variance is about halved and every visible feature is scaled up by ~sqrt(2)
against the same image seen whole. The student then learns the target on features it never
computes at test time, where it sees whole volumes. With ``mask.visible_norm`` the masked
views are normalised by the (area-weighted) statistics of their visible voxels, an estimate
of the whole crop's, while unmasked inputs (source, teacher, inference) are
normalised exactly as by ``nn.InstanceNorm``.

The swap keeps the module tree and state dict: instance norm here has no affine weights or
running statistics (MONAI's default), so checkpoints load into a plain UNet unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class _Visibility:
    """The visible share of each voxel of the batch being forwarded; shared by all the norms
    of one network, empty (``None``) outside :func:`visible_statistics`. Pooled once per
    feature-map size: a UNet's norms share a handful of sizes."""

    def __init__(self):
        self.weights: torch.Tensor | None = None
        self._pooled: dict[tuple[int, ...], torch.Tensor] = {}

    def set(self, weights: torch.Tensor | None) -> None:
        self.weights, self._pooled = weights, {}

    def at(self, size: torch.Size) -> torch.Tensor:
        """The float32 visibility average-pooled to ``size``."""
        key = tuple(size)
        if key not in self._pooled:
            self._pooled[key] = _POOL[len(key)](self.weights.to(torch.float32), key)
        return self._pooled[key]


class VisibleInstanceNorm(nn.Module):
    """``nn.InstanceNormNd(affine=False)`` whose statistics are weighted by the visibility
    set for the current forward: ``(B, 1, *spatial)`` at input resolution, average-pooled to
    each feature map's size (a deep cell half covered by visible blocks counts half)."""

    def __init__(self, eps: float, visibility: _Visibility):
        super().__init__()
        self.eps, self.visibility = eps, visibility

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.visibility.weights is None:
            return F.instance_norm(x, eps=self.eps)
        axes = tuple(range(2, x.ndim))
        # statistics in float32 whatever autocast gives (bf16 sums over a 256² map lose digits)
        xf = x.float()
        w = self.visibility.at(x.shape[2:])
        total = w.sum(dim=axes, keepdim=True).clamp_min(1e-6)  # an all-hidden view: no NaN
        mean = (xf * w).sum(dim=axes, keepdim=True) / total
        var = ((xf - mean).square() * w).sum(dim=axes, keepdim=True) / total
        return ((xf - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)


def use_visible_norm(model: nn.Module) -> int:
    """Replace every affine-free, stat-free instance norm of ``model`` in place; returns how
    many. Norms with weights or running statistics are left alone (none in our UNets)."""
    visibility = _Visibility()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _INSTANCE_NORMS and not child.affine \
                    and not child.track_running_stats:
                setattr(parent, name, VisibleInstanceNorm(child.eps, visibility))
                swapped += 1
    return swapped


@contextmanager
def visible_statistics(model: nn.Module, weights: torch.Tensor | None):
    """Within the block, ``model``'s visible norms weight their statistics by ``weights``
    (``(B, 1, *spatial)``, 1 visible, 0 hidden); a model without them is unaffected."""
    norms = [m for m in model.modules() if isinstance(m, VisibleInstanceNorm)]
    states = {id(n.visibility): n.visibility for n in norms}
    for state in states.values():
        state.set(weights)
    try:
        yield
    finally:
        for state in states.values():
            state.set(None)
