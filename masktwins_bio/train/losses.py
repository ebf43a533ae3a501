"""Loss terms of one UDA iteration, for binary (one-logit) segmentation.

- ``SegmentationLoss``: BCE + soft Dice on logits, Dice pooled over the whole batch (a crop
  without foreground then does not push its logits towards minus infinity). Written out rather
  than taken from MONAI's ``DiceCELoss`` (same formula, smooth 1e-5) because under data
  parallelism the Dice sums must run over every rank's share of the batch.
- ``pseudo_label``: the teacher's hard labels and the scalar confidence weight of METHOD.md, the
  fraction of voxels whose confidence max(p, 1-p) reaches tau.
- ``class_balanced_keep``: class-balanced self-training's selection (CBST, Zou et al. 2018):
  the most confident share of each class's pseudo-labels, whatever the teacher's calibration.
- ``twin_consistency``: MSE between the twins' raw logits: symmetric with no stop-gradient
  (METHOD.md), or, given the twins' visibility, pulled from the view that saw each voxel.

Under data parallelism every loss is scaled so that averaging gradients over ranks gives the
gradient of the global-batch loss (see ``distributed.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import (SINGLE, DistContext, global_histogram, global_sum, mean_over_ranks,
                          scale_gradient)

SMOOTH = 1e-5


class SegmentationLoss(torch.nn.Module):
    """BCE-with-logits + soft Dice (batch-pooled), each with weight 1."""

    def __init__(self, ctx: DistContext = SINGLE) -> None:
        super().__init__()
        self.ctx = ctx

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (same shape, 0/1) restricts both terms to the voxels it keeps."""
        logits, target = logits.float(), target.float()
        prob = torch.sigmoid(logits)
        if mask is None:
            bce = F.binary_cross_entropy_with_logits(logits, target)
            inter = global_sum((prob * target).sum(), self.ctx)
            denom = global_sum(prob.sum() + target.sum(), self.ctx)
        else:
            mask = mask.float()
            bce_map = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            # A global mean over the kept voxels: ranks may keep different numbers of them.
            kept = global_sum(mask.sum(), self.ctx).clamp_min(1.0)
            bce = global_sum((mask * bce_map).sum(), self.ctx) / kept
            inter = global_sum((mask * prob * target).sum(), self.ctx)
            denom = global_sum((mask * (prob + target)).sum(), self.ctx)
        dice = 1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)
        if not self.ctx.enabled:
            return bce + dice
        # A global value's gradient reaches only this rank's voxels: scale its gradient by the
        # world size so that it survives the gradient average (the unmasked BCE is a per-rank
        # mean); the value stays what one process with the whole batch computes.
        w = self.ctx.world_size
        return (bce if mask is None else scale_gradient(bce, w)) + scale_gradient(dice, w)


@torch.no_grad()
def pseudo_label(teacher_prob: torch.Tensor, threshold: float, tau: float,
                 ctx: DistContext = SINGLE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels ``p > threshold``, their weight (scalar tensor in [0, 1]) and the
    map of confident voxels (confidence max(p, 1-p) >= tau) the weight counts."""
    labels = (teacher_prob > threshold).to(teacher_prob.dtype)
    confident = (torch.maximum(teacher_prob, 1 - teacher_prob) >= tau).to(teacher_prob.dtype)
    weight = mean_over_ranks(confident.mean(), ctx)
    return labels, weight, confident


# class_balanced_keep ranks voxels by their logit towards their class (log-odds confidence):
# probabilities saturate (a float32 sigmoid is 1.0 beyond a logit of ~17, and a fine grid on
# [0, 1] still puts every |logit| > 7.6 in its top bin), logits keep their order.
SCORE_RANGE = (-16.0, 48.0)
SCORE_BINS = 4096  # 1/64 of a logit per bin


@torch.no_grad()
def class_balanced_keep(teacher_logits: torch.Tensor, labels: torch.Tensor, portion: float,
                        ctx: DistContext = SINGLE) -> torch.Tensor:
    """Map (0/1, float like ``teacher_logits``) of the voxels whose confidence is within the
    top ``portion`` of their pseudo-label class over the batch (all ranks).

    Why: a teacher fresh from a short source warm-up is unsure of background everywhere (on
    VNC -> Lucchi almost no target voxel reaches p <= 0.1 at iteration 1,000, while 6% reach
    p >= 0.9, a third of them false positives: tools/diag_uda.py --warmup-teacher), so a single
    tau keeps foreground only and the pseudo-label loss can then only grow foreground.
    Per-class thresholds keep both classes from the start (measured on bench_uda: no gain).
    The thresholds come from a histogram summed over ranks, so every rank uses the same ones.
    """
    fg = labels > 0.5
    logits = teacher_logits.float()
    score = torch.where(fg, logits, -logits).clamp(*SCORE_RANGE)
    lo, hi = SCORE_RANGE
    width = (hi - lo) / SCORE_BINS
    keep = torch.zeros_like(fg)
    for cls in (fg, ~fg):
        hist = global_histogram(score[cls], lo, hi, SCORE_BINS, ctx)
        total = float(hist.sum())
        if total == 0:
            continue
        from_top = hist.flip(0).cumsum(0)  # voxels at or above each bin, most confident first
        bins_kept = int(torch.searchsorted(from_top, portion * total).clamp(max=SCORE_BINS - 1))
        keep |= cls & (score >= lo + (SCORE_BINS - 1 - bins_kept) * width)
    return keep.to(teacher_logits.dtype)


def twin_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor,
                     visible_a: torch.Tensor | None = None,
                     visible_b: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the two twins' logits.

    Without visibility maps: symmetric, gradients flow into both (METHOD.md). With them
    (``(B, 1, *spatial)``, 1 where a view shows the voxel): at a voxel only one view showed,
    that view's logit is the target (detached) and only the other view's, a guess from context,
    moves; at a voxel both or neither showed, the symmetric term. Why: the symmetric term also
    pulls the view that sees a voxel towards the one that cannot, which makes predictions
    shrink towards the unsure guess. Complementary twins show every voxel to exactly one view,
    so every voxel gets the directed term; two independent masks (``rmask``) give it to half.
    Both forms average over every voxel (and channel), so ``lambda_cm`` keeps its scale.
    """
    a, b = logits_a.float(), logits_b.float()
    if visible_a is None or visible_b is None:
        return F.mse_loss(a, b)
    va, vb = visible_a.float(), visible_b.float()
    only_a, only_b = va * (1 - vb), vb * (1 - va)
    shared = 1 - only_a - only_b
    squared = only_a * (a.detach() - b).square() + only_b * (b.detach() - a).square() \
        + shared * (a - b).square()
    return squared.mean()
