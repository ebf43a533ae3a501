"""Validation on labelled driving scenes (Cityscapes val): sliding window, pooled mIoU.

Like the official code (mmseg's ``slide_inference``, as HRDA/MIC/MaskTwins evaluate at
1024x1024 windows with stride 512): windows start every ``stride`` pixels, the last one is
moved back to end at the image border, the logits of overlapping windows are averaged, and an
image smaller than the window is predicted whole. When training rescaled the target
(``natural.target_scale``), the image is rescaled the same way and its logits are resized back
(bilinear) to the label resolution before the argmax, as mmseg does. One confusion matrix is
pooled over all images; mIoU over 19, 16 and 13 classes comes from it (``metrics.scene_miou``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.natural.domain import RGBStats, rescaled_size, resize_rgb
from ..data.natural.labels import CLASSES, SUBSETS
from ..metrics import confusion_matrix, scene_miou
from .device import autocast


def _starts(size: int, window: int, stride: int) -> list[int]:
    n = max(size - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + window, size) - window, 0) for i in range(n)})


def _padded_forward(model: torch.nn.Module, patch: torch.Tensor, step: int) -> torch.Tensor:
    """``model(patch)``, the patch padded at its far sides to a multiple of ``step`` with the
    mean colour (0 after normalisation) and the logits cropped back: a window that the image
    is smaller than (after ``natural.target_scale``) is not a size the UNet takes."""
    h, w = patch.shape[2:]
    ph, pw = -h % step, -w % step
    if ph or pw:
        patch = F.pad(patch, (0, pw, 0, ph))
    return model(patch)[:, :, :h, :w]


@torch.no_grad()
def slide_logits(model: torch.nn.Module, image: torch.Tensor, num_classes: int, window,
                 stride, step: int = 32) -> torch.Tensor:
    """Logits (1, C, H, W) float32 of a normalised image (1, 3, H, W), mmseg's slide mode."""
    _, _, h, w = image.shape
    out = torch.zeros((1, num_classes, h, w), dtype=torch.float32, device=image.device)
    count = torch.zeros((1, 1, h, w), dtype=torch.float32, device=image.device)
    for y in _starts(h, window[0], stride[0]):
        for x in _starts(w, window[1], stride[1]):
            y2, x2 = min(y + window[0], h), min(x + window[1], w)
            out[:, :, y:y2, x:x2] += _padded_forward(model, image[:, :, y:y2, x:x2],
                                                     step).float()
            count[:, :, y:y2, x:x2] += 1
    return out / count


class SceneValidator:
    """``validator(model, device) -> metrics`` over a labelled :class:`SceneDataset`."""

    def __init__(self, dataset, num_classes: int, window, stride, scale=None,
                 ignore_index: int = 255, limit: int = 0, headline: int = 19,
                 amp_dtype: torch.dtype | None = None, step: int = 32):
        self.dataset, self.num_classes = dataset, int(num_classes)
        self.window, self.stride = tuple(window), tuple(stride)
        self.scale, self.ignore_index, self.headline = scale, ignore_index, headline
        self.count = len(dataset) if not limit else min(limit, len(dataset))
        self.amp_dtype, self.step = amp_dtype, int(step)  # the network's downsampling
        self.stats = RGBStats()

    def predict(self, model: torch.nn.Module, index: int, device) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, labels) of image ``index``, both (H, W) at the label resolution."""
        image, label = self.dataset.read_pair(index)
        size = rescaled_size(*image.shape[:2], self.scale)
        x = torch.from_numpy(self.stats.apply(resize_rgb(image, size)))[None].to(device)
        with autocast(torch.device(device), self.amp_dtype):
            logits = slide_logits(model, x, self.num_classes, self.window, self.stride,
                                  self.step)
        if tuple(logits.shape[2:]) != label.shape:
            logits = F.interpolate(logits, size=label.shape, mode="bilinear",
                                   align_corners=False)
        return logits[0].argmax(0).cpu().numpy().astype(np.uint8), label

    def __call__(self, model: torch.nn.Module, device) -> dict:
        model.eval()
        conf = np.zeros((self.num_classes, self.num_classes), np.int64)
        for i in range(self.count):
            pred, label = self.predict(model, i, device)
            conf += confusion_matrix(pred, label, self.num_classes, self.ignore_index)
        names = list(CLASSES[:self.num_classes]) + [f"class {i}" for i in
                                                    range(len(CLASSES), self.num_classes)]
        subsets = {n: [c for c in ids if c < self.num_classes] for n, ids in SUBSETS.items()}
        out = scene_miou(conf, names, subsets, self.headline)
        out["images"] = self.count
        return out
