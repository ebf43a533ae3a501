"""Loss terms of one UDA iteration, for binary (one-logit) segmentation.

- ``segmentation_loss``: BCE + soft Dice on logits (MONAI ``DiceCELoss``; Dice pooled over the
  batch so a crop without foreground does not push logits towards minus infinity).
- ``pseudo_label``: the teacher's hard labels and the scalar confidence weight of METHOD.md, the
  fraction of voxels whose confidence max(p, 1-p) reaches tau.
- ``twin_consistency``: symmetric MSE between the twins' raw logits, no stop-gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class SegmentationLoss(torch.nn.Module):
    """BCE-with-logits + soft Dice, each with weight 1."""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.loss = DiceCELoss(sigmoid=True, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), target.float())


@torch.no_grad()
def pseudo_label(teacher_prob: torch.Tensor, threshold: float, tau: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels ``p > threshold`` and their weight (scalar tensor in [0, 1])."""
    labels = (teacher_prob > threshold).to(teacher_prob.dtype)
    confidence = torch.maximum(teacher_prob, 1 - teacher_prob)
    weight = (confidence >= tau).float().mean()
    return labels, weight


def twin_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """MSE between the two twins' logits; gradients flow into both."""
    return F.mse_loss(logits_a.float(), logits_b.float())
