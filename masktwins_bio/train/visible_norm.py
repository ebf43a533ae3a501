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


class _WeightedInstanceNorm(torch.autograd.Function):
    """``(x - mean) / sqrt(var + eps)`` with per-(sample, channel) statistics weighted by
    ``w``, computed in float32 at least (bf16 sums over a 256² map lose digits).

    Written out by hand, not left to autograd, for speed: autograd keeps a float32 copy of
    every intermediate (the centred map, its square, the weighted products) and runs an op per
    intermediate backwards; the written-out gradient needs only the normalised output and two
    sums per channel. With ``W = sum(w)`` and ``y = (x - mean) * r``, ``r = 1/sqrt(var+eps)``:
    ``dx = r * (g - w/W * (sum(g) + y * sum(g*y)))``, sums over the whole map (the mean's
    term in the variance's gradient drops out because ``sum(w*(x-mean)) = 0``)."""

    @staticmethod
    def forward(ctx, x, w, eps):
        axes = tuple(range(2, x.ndim))
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        w = w.to(xf.dtype)
        total = w.sum(dim=axes, keepdim=True).clamp_min(1e-6)  # an all-hidden view: no NaN
        share = w / total
        mean = (xf * share).sum(dim=axes, keepdim=True)
        centred = xf - mean
        r = torch.rsqrt((centred.square() * share).sum(dim=axes, keepdim=True) + eps)
        y = centred.mul_(r)
        ctx.save_for_backward(y, share, r)
        ctx.out_dtype = x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        y, share, r = ctx.saved_tensors
        axes = tuple(range(2, y.ndim))
        g = grad.to(y.dtype)
        s1 = g.sum(dim=axes, keepdim=True)
        s2 = (g * y).sum(dim=axes, keepdim=True)
        dx = (g - share * (s1 + y * s2)).mul_(r)
        return dx.to(ctx.out_dtype), None, None


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
        return _WeightedInstanceNorm.apply(x, self.visibility.at(x.shape[2:]), self.eps)


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
