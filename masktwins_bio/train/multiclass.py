"""Loss terms for multi-class segmentation (``model.num_classes > 1``, e.g. Cityscapes' 19).

- ``MultiClassLoss``: cross-entropy over the pixels whose label is not ``ignore_index`` (255),
  plus an optional batch-pooled soft Dice (``natural.dice_weight``; 0 by default, as DAFormer,
  HRDA, MIC and MaskTwins' official code train with CE alone).
- ``multiclass_pseudo_label``: the teacher's argmax and the scalar weight of METHOD.md, the
  fraction of pixels whose softmax maximum reaches tau (0.968), as DAFormer computes it
  (``pseudo_prob.ge(tau)`` over all pixels of the batch).

Under data parallelism both are global over ranks, exactly as the binary terms in
``losses.py``: the CE is divided by the count of valid pixels over all ranks and scaled by the
world size, so averaging gradients gives the gradient of the global-batch loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import RunConfig
from .distributed import SINGLE, DistContext, global_sum, mean_over_ranks, scale_gradient
from .losses import SMOOTH, SegmentationLoss


def _labels(target: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) or (B, ...) class ids of any dtype -> (B, ...) int64."""
    if target.dim() >= 2 and target.shape[1] == 1:
        target = target[:, 0]
    return target.long()


class MultiClassLoss(torch.nn.Module):
    """Cross-entropy ignoring ``ignore_index`` (+ ``dice_weight`` x soft Dice)."""

    def __init__(self, ctx: DistContext = SINGLE, ignore_index: int = 255,
                 dice_weight: float = 0.0) -> None:
        super().__init__()
        self.ctx, self.ignore_index, self.dice_weight = ctx, int(ignore_index), dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, labels = logits.float(), _labels(target)
        valid = labels != self.ignore_index
        ce_sum = F.cross_entropy(logits, labels, ignore_index=self.ignore_index,
                                 reduction="sum")
        count = global_sum(valid.sum().float(), self.ctx).detach().clamp_min(1.0)
        # This rank's share of the global mean, times the world size: the gradient survives the
        # average over ranks, and the value is this rank's own mean when ranks hold as many
        # valid pixels.
        loss = ce_sum / count * self.ctx.world_size
        if self.dice_weight > 0:   # a global value: only its gradient is scaled
            dice = self._dice(logits, labels, valid)
            loss = loss + self.dice_weight * scale_gradient(dice, self.ctx.world_size)
        return loss

    def _dice(self, logits, labels, valid) -> torch.Tensor:
        """1 - mean over classes of the batch-pooled soft Dice, on valid pixels only."""
        n = logits.shape[1]
        prob = torch.softmax(logits, dim=1) * valid.unsqueeze(1)
        onehot = F.one_hot(torch.where(valid, labels, 0), n).movedim(-1, 1)
        onehot = onehot.to(prob.dtype) * valid.unsqueeze(1)
        axes = [0] + list(range(2, logits.dim()))
        inter = global_sum((prob * onehot).sum(axes), self.ctx)
        denom = global_sum(prob.sum(axes) + onehot.sum(axes), self.ctx)
        return 1.0 - ((2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()


@torch.no_grad()
def multiclass_pseudo_label(teacher_logits: torch.Tensor, tau: float,
                            ctx: DistContext = SINGLE
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard labels (B, 1, ...) int64 = argmax of the softmax, their weight (scalar tensor):
    the fraction of pixels whose maximum class probability is at least ``tau``, and the map of
    those confident pixels (B, 1, ...) bool."""
    prob = torch.softmax(teacher_logits.float(), dim=1)
    confidence, labels = prob.max(dim=1, keepdim=True)
    confident = confidence >= tau
    weight = mean_over_ranks(confident.float().mean(), ctx)
    return labels, weight, confident


def label_view(labels_or_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A class map scaled to [0, 1] (B, 1, ...) for the TensorBoard grid."""
    x = labels_or_logits.detach()
    if x.dim() >= 2 and x.shape[1] == num_classes and num_classes > 1:
        x = x.argmax(dim=1, keepdim=True)
    return x.float() / max(1, num_classes - 1)


def make_seg_loss(cfg: RunConfig, ctx: DistContext = SINGLE) -> torch.nn.Module:
    """The supervised loss of a run: binary BCE + Dice, or multi-class CE (+ Dice)."""
    if cfg.model.num_classes > 1:
        return MultiClassLoss(ctx, cfg.natural.ignore_index, cfg.natural.dice_weight)
    return SegmentationLoss(ctx)
