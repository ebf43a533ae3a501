"""mIoU over 19/16/13 classes from a pooled confusion matrix; mmseg-style sliding window."""
import math

import numpy as np
import torch

from masktwins_bio.data.natural.labels import CLASSES, SUBSETS
from masktwins_bio.metrics import (class_iou, confusion_matrix, format_class_table,
                                   scene_miou)
from masktwins_bio.train.scene_eval import _starts, slide_logits


def test_confusion_and_iou_by_hand():
    label = np.array([[0, 0, 1, 255], [1, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 0], [1, 2, 2, 0]])
    conf = confusion_matrix(pred, label, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]  # the 255 pixel is left out
    np.testing.assert_allclose(class_iou(conf), [1 / 3, 2 / 3, 2 / 3])


def test_miou_subsets_skip_absent_classes():
    conf = np.zeros((19, 19), np.int64)
    conf[0, 0], conf[9, 9], conf[3, 3], conf[3, 0] = 10, 5, 1, 1   # road, terrain, wall
    out = scene_miou(conf, CLASSES, SUBSETS, headline=13)
    road, wall = 10 / 11, 1 / 2
    assert math.isclose(out["miou19"], (road + 1.0 + wall) / 3)
    assert math.isclose(out["miou16"], (road + wall) / 2)       # terrain is not in 16
    assert math.isclose(out["miou13"], road)                    # nor wall in 13
    assert out["iou"] == out["miou"] == out["miou13"]
    assert math.isnan(out["per_class"]["sky"])
    table = format_class_table(out, SUBSETS)
    assert "terrain" in table and "mIoU (13)" in table and "90.9" in table


def test_window_starts_match_mmseg_slide_inference():
    def mmseg(size, crop, stride):
        grids = max(size - crop + stride - 1, 0) // stride + 1
        return [max(min(i * stride + crop, size) - crop, 0) for i in range(grids)]
    for size, crop, stride in [(2048, 1024, 512), (1024, 1024, 512), (1100, 1024, 512),
                               (700, 1024, 512), (97, 32, 16)]:
        assert _starts(size, crop, stride) == mmseg(size, crop, stride)


def test_sliding_window_averages_to_the_full_image_prediction():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 5, 1)                  # per-pixel: windows must agree
    image = torch.randn(1, 3, 40, 70)
    got = slide_logits(model, image, 5, (32, 32), (16, 16))
    torch.testing.assert_close(got, model(image), rtol=1e-5, atol=1e-5)


def test_an_image_smaller_than_the_window_is_padded_to_the_networks_step():
    """After natural.target_scale an image may be smaller than the validation window, and
    then is predicted whole: at a size the UNet's downsampling does not divide, it crashed."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 1)

    def model(x):
        assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0, x.shape
        return conv(x)
    image = torch.randn(1, 3, 48, 80)
    got = slide_logits(model, image, 5, (64, 128), (32, 64), step=32)
    torch.testing.assert_close(got, conv(image), rtol=1e-5, atol=1e-5)
