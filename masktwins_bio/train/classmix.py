"""DACS class-mix (Tranheden et al., WACV 2021), as the MaskTwins and MIC official code use it.

Per sample, half of the classes present in the source label (rounded up; never the ignore
label) are cut out of the source crop and pasted onto the target crop. The mixed image is
labelled with the source's ground truth where pasted and the teacher's pseudo-labels elsewhere,
so the student learns on target context with some pixels whose labels are certainly right:
the part of self-training that does not depend on the teacher alone. For binary mitochondria
the two classes are "mitochondrion" and "everything else", so a sample pastes either the
source's mitochondria or its background, each with probability 1/2 (as DACS does).

Written out rather than taken from a library: MONAI has no class-mix, and the DAFormer/MIC
implementation is tied to mmseg's data structures.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def class_mix_masks(src_y: torch.Tensor, gen: torch.Generator,
                    ignore_index: int | None = None) -> torch.Tensor:
    """(B, 1, ...) bool: where each sample pastes its source pixels. ``src_y`` holds class ids
    (0/1 floats for binary labels); ``ignore_index`` (multi-class) is never chosen."""
    masks = torch.zeros(src_y.shape, dtype=torch.bool, device=src_y.device)
    for i, label in enumerate(src_y):
        classes = torch.unique(label)
        if ignore_index is not None:
            classes = classes[classes != ignore_index]
        if classes.numel() == 0:
            continue
        n_chosen = (classes.numel() + 1) // 2
        order = torch.randperm(classes.numel(), generator=gen, device=gen.device)
        chosen = classes[order[:n_chosen].to(classes.device)]
        masks[i] = torch.isin(label, chosen)
    return masks


def class_mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` where ``mask`` is set, ``target`` elsewhere (images or labels alike)."""
    return torch.where(mask, source.to(target.dtype), target)
