"""A driving-scene training domain: deterministic batches of RGB crops read from disk.

``SceneDomain.draw(iteration, ...)`` follows the trainer's protocol for domains it does not hold
in memory. Batch ``t`` is a pure function of (seed, t): a resumed run reads exactly the crops
an uninterrupted run would, whatever happened before. The next batch is decoded in a background
thread while the network trains on the current one.

Per sample, as in DAFormer/HRDA's pipelines: pick an image (rare class sampling for a labelled
source, else uniformly), rescale it keeping its aspect ratio to fit ``scale`` = (long edge,
short edge) like mmseg's ``img_scale``, take a random crop (padding with the mean and ignore
labels when the image is smaller), flip horizontally with p = 0.5 and normalise with the
ImageNet mean and std, so a masked pixel (0) is the mean colour. Driving scenes have an up, so
vertical flips and 90 degree rotations never happen here.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from .labels import IGNORE

RCS_RETRIES = 10


@dataclass(frozen=True)
class RGBStats:
    """Fixed ImageNet normalisation on 0-255 RGB (mmseg's ``img_norm_cfg``)."""

    mean: tuple = (123.675, 116.28, 103.53)
    std: tuple = (58.395, 57.12, 57.375)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (3, H, W), normalised."""
        x = np.asarray(rgb, np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}


def rescaled_size(h: int, w: int, scale) -> tuple[int, int]:
    """(H, W) after mmcv's keep-ratio rescale to ``scale`` = (long edge, short edge)."""
    if not scale:
        return h, w
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB uint8 image to (H, W) (unchanged when already that size)."""
    from PIL import Image
    if rgb.shape[:2] == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map to (H, W)."""
    from PIL import Image
    if labels.shape == tuple(size):
        return labels
    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


class SceneDomain:
    """Batches (n, 3, *crop) float32 and, for a labelled domain, (n, 1, *crop) int64 labels."""

    channels = 3
    labels = None  # labels travel with each batch

    def __init__(self, name: str, dataset, crop, batch: int, seed: int, scale=None,
                 with_labels: bool = True, rcs=None, last_iteration: int | None = None,
                 prefetch: bool = True):
        self.name, self.dataset = name, dataset
        self.crop = tuple(int(c) for c in crop)
        self.batch_size, self.seed, self.scale = int(batch), int(seed), scale
        self.with_labels = with_labels and dataset.has_labels
        self.rcs = rcs if self.with_labels else None
        self.stats = RGBStats()
        self.last_iteration = last_iteration
        self._pool = ThreadPoolExecutor(1) if prefetch else None
        self._ahead: dict[int, Future] = {}

    # -- one sample ------------------------------------------------------------------------
    def sample(self, seed: int, flip: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """One normalised crop (3, *crop) and its labels (*crop) uint8, from ``seed`` alone."""
        rng = np.random.default_rng(seed)
        if self.rcs is not None:
            c, index = self.rcs.draw(rng)
        else:
            c, index = None, int(rng.integers(len(self.dataset)))
        if self.with_labels:
            image, label = self.dataset.read_pair(index)
        else:
            image, label = self.dataset.read_image(index), None
        size = rescaled_size(*image.shape[:2], self.scale)
        image = resize_rgb(image, size)
        label = None if label is None else resize_labels(label, size)
        for _ in range(RCS_RETRIES + 1):
            y, x = (int(rng.integers(0, max(s - c_, 0) + 1)) for s, c_ in zip(size, self.crop))
            window = (slice(y, y + self.crop[0]), slice(x, x + self.crop[1]))
            mirror = flip and rng.random() < 0.5
            img = image[window]
            lab = None if label is None else label[window]
            if c is None or self.rcs.accepts(lab, c):
                break
        x = self.stats.apply(img)
        if mirror:
            x = x[:, :, ::-1]
            lab = None if lab is None else lab[:, ::-1]
        pad = [(0, max(0, t - s)) for s, t in zip(x.shape[1:], self.crop)]
        if any(p[1] for p in pad):  # image smaller than the crop: mean colour, ignore labels
            x = np.pad(x, [(0, 0), *pad])
            lab = None if lab is None else np.pad(lab, pad, constant_values=IGNORE)
        return np.ascontiguousarray(x), (None if lab is None else np.ascontiguousarray(lab))

    def batch(self, iteration: int, flip: bool = True):
        """The batch of ``iteration``: a pure function of (seed, iteration)."""
        rng = np.random.default_rng([self.seed, int(iteration)])
        seeds = rng.integers(0, 2**63 - 1, size=self.batch_size)
        parts = [self.sample(int(s), flip) for s in seeds]
        img = np.stack([p[0] for p in parts]).astype(np.float32)
        if not self.with_labels:
            return img, None
        lab = np.stack([p[1] for p in parts])[:, None].astype(np.int64)
        return img, lab

    # -- the trainer's protocol ------------------------------------------------------------
    def draw(self, iteration: int, rng=None, flip: bool = True, rot90: bool = False):
        """Batch of ``iteration`` (``rng`` and ``rot90`` are unused: see the module doc)."""
        future = self._ahead.pop(iteration, None)
        if self._pool is None:
            return self.batch(iteration, flip)
        if future is None:
            future = self._pool.submit(self.batch, iteration, flip)
        self._ahead.clear()  # a jump (resume) drops stale work
        nxt = iteration + 1
        if self.last_iteration is None or nxt <= self.last_iteration:
            self._ahead[nxt] = self._pool.submit(self.batch, nxt, flip)
        return future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
