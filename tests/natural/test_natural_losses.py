"""Multi-class CE with ignore 255, Dice, and the 0.968 confidence-fraction pseudo-labels."""
import math

import torch
import torch.nn.functional as F

from masktwins_bio.config import build_config
from masktwins_bio.train.losses import SegmentationLoss
from masktwins_bio.train.multiclass import (MultiClassLoss, make_seg_loss,
                                            multiclass_pseudo_label)


def test_ce_ignores_255_like_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 6, 7, generator=g)
    target = torch.randint(0, 19, (2, 1, 6, 7), generator=g)
    target[0, 0, :3] = 255
    expected = F.cross_entropy(logits, target[:, 0], ignore_index=255)
    torch.testing.assert_close(MultiClassLoss()(logits, target), expected)


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(1, 19, 4, 4, requires_grad=True)
    loss = MultiClassLoss(dice_weight=1.0)(logits, torch.full((1, 1, 4, 4), 255))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_dice_term_is_small_for_confident_correct_logits():
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    logits = F.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 30
    assert MultiClassLoss(dice_weight=1.0)(logits, target).item() < 1e-3


def test_pseudo_labels_are_argmax_weighted_by_confident_fraction():
    p = torch.tensor([[0.98, 0.01, 0.01], [0.5, 0.3, 0.2], [0.01, 0.97, 0.02],
                      [0.1, 0.1, 0.8]])                      # 4 pixels, 3 classes
    logits = p.log().T.reshape(1, 3, 2, 2)
    labels, weight, confident = multiclass_pseudo_label(logits, tau=0.968)
    assert labels.shape == (1, 1, 2, 2) and labels.flatten().tolist() == [0, 0, 1, 2]
    assert confident.flatten().tolist() == [True, False, True, False]
    assert math.isclose(weight.item(), 0.5)                   # 0.98 and 0.97 reach tau


def test_loss_choice_follows_num_classes():
    assert isinstance(make_seg_loss(build_config()), SegmentationLoss)
    cfg = build_config({"model": {"num_classes": 19}, "data": {"kind": "natural"},
                        "natural": {"dice_weight": 0.5}})
    loss = make_seg_loss(cfg)
    assert isinstance(loss, MultiClassLoss) and loss.ignore_index == 255
    assert loss.dice_weight == 0.5
