import math

import torch

import pytest

from masktwins_bio.train.losses import (SegmentationLoss, class_balanced_keep, pseudo_label,
                                        twin_consistency)


def test_segmentation_loss_is_bce_plus_batch_dice_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)
    got = SegmentationLoss()(logits, target)
    torch.testing.assert_close(got, bce + dice, rtol=1e-5, atol=1e-6)


def test_segmentation_loss_is_small_for_confident_correct_logits():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 2:5] = 1
    logits = (target * 2 - 1) * 20
    assert SegmentationLoss()(logits, target).item() < 1e-3


def test_pseudo_label_and_confidence_weight_by_hand():
    prob = torch.tensor([0.99, 0.97, 0.6, 0.4, 0.02, 0.5])
    labels, weight, confident = pseudo_label(prob, threshold=0.5, tau=0.968)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]
    # confident (max(p, 1-p) >= 0.968): 0.99, 0.97, 0.02 -> 3 of 6
    assert confident.tolist() == [1, 1, 0, 0, 1, 0]
    assert math.isclose(weight.item(), 0.5)
    assert not labels.requires_grad


def test_masked_loss_equals_the_loss_over_the_kept_voxels_only():
    logits = torch.tensor([0.0, 2.0, -1.0, 1.0, 3.0, -4.0])
    target = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    keep = mask.bool()
    got = SegmentationLoss()(logits, target, mask)
    torch.testing.assert_close(got, SegmentationLoss()(logits[keep], target[keep]))
    # dropped voxels receive no gradient at all
    x = logits.clone().requires_grad_(True)
    SegmentationLoss()(x, target, mask).backward()
    assert x.grad[~keep].abs().sum() == 0 and x.grad[keep].abs().sum() > 0


def test_twin_consistency_is_symmetric_mse_with_gradients_into_both():
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([1.0, 0.0, 5.0], requires_grad=True)
    loss = twin_consistency(a, b)
    assert math.isclose(loss.item(), (0 + 4 + 4) / 3, rel_tol=1e-6)
    assert math.isclose(twin_consistency(b, a).item(), loss.item(), rel_tol=1e-6)
    loss.backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, -b.grad)


def test_directed_twin_consistency_moves_only_the_view_that_did_not_see_the_voxel():
    torch.manual_seed(0)
    a = torch.randn(2, 1, 4, 4, requires_grad=True)
    b = torch.randn(2, 1, 4, 4, requires_grad=True)
    seen = (torch.rand(2, 1, 4, 4) > 0.5).float()
    # complementary twins: every voxel seen by exactly one view
    loss = twin_consistency(a, b, seen, 1 - seen)
    # same value as the symmetric MSE (each voxel's squared gap, averaged over all voxels) ...
    assert math.isclose(loss.item(), twin_consistency(a, b).item(), rel_tol=1e-6)
    loss.backward()
    # ... but a voxel's gradient reaches only the view that hid it, pulling it towards the other
    assert a.grad[seen.bool()].abs().sum() == 0 and b.grad[~seen.bool()].abs().sum() == 0
    hidden_a = ~seen.bool()
    torch.testing.assert_close(a.grad[hidden_a], 2 * (a - b).detach()[hidden_a] / a.numel())
    # voxels both views (or neither) saw keep the symmetric term, gradients into both
    a.grad = b.grad = None
    both = torch.ones_like(seen)
    twin_consistency(a, b, both, seen).backward()
    shared = seen.bool()
    torch.testing.assert_close(a.grad[shared], -b.grad[shared])
    assert a.grad[shared].abs().sum() > 0
    assert a.grad[~shared].abs().sum() == 0 and b.grad[~shared].abs().sum() > 0  # a only saw


def test_class_balanced_keep_takes_each_class_top_share_whatever_the_calibration():
    # An unsure teacher: foreground 0.55..0.95, background 0.15..0.45 (never <= 0.1, so a single
    # tau of 0.9 would keep foreground only).
    prob = torch.cat([torch.linspace(0.55, 0.95, 100), torch.linspace(0.15, 0.45, 300)])
    logits = torch.logit(prob)
    labels = (prob > 0.5).float()
    keep = class_balanced_keep(logits, labels, portion=0.25).bool()
    assert keep[:100].sum() in (25, 26) and keep[100:].sum() in (75, 76)
    # the most confident of each class: foreground highest, background lowest
    assert keep[:100][-25:].all() and not keep[:100][:70].any()
    assert keep[100:][:75].all() and not keep[100:][-220:].any()


def test_class_balanced_keep_still_ranks_a_confident_teacher():
    """Probabilities saturate (every |logit| > 7.6 fell in the top bin of a [0, 1] grid, so any
    portion kept ~90% of each class); logits keep their order."""
    gen = torch.Generator().manual_seed(0)
    fg = torch.rand(100_000, generator=gen) < 0.1
    logits = torch.where(fg, 8 + 2 * torch.randn(100_000, generator=gen),
                         -10 + 2 * torch.randn(100_000, generator=gen))
    labels = (logits > 0).float()
    for portion in (0.2, 0.5):
        keep = class_balanced_keep(logits, labels, portion).bool()
        for cls in (labels > 0, labels == 0):
            assert abs(keep[cls].float().mean().item() - portion) < 0.01


@pytest.mark.parametrize("portion", [1.0, 0.5])
def test_class_balanced_keep_with_one_class_only_and_all_voxels(portion):
    logits = torch.full((2, 1, 4, 4), -1.5)
    labels = (logits > 0).float()
    keep = class_balanced_keep(logits, labels, portion)
    assert keep.dtype == logits.dtype
    # equal confidences are kept or dropped together: none of them is "less sure"
    assert keep.all()
