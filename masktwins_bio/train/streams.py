"""A training domain read from disk crop by crop, for volumes larger than memory.

``StreamedDomain`` wraps the data layer's ``CropDataset`` (chunked reads, stored per-volume
statistics, optional foreground-balanced sampling) in the data layer's loader (threads of this
process for zarr and in-memory volumes, else DataLoader worker processes).
Item ``i`` of the dataset depends only on its seed and ``i``; iteration ``t`` takes items
``[t*n, (t+1)*n)``, so a resumed run reads exactly the crops an uninterrupted run would.
Spatial flips and rotations are drawn per iteration, as for in-memory domains.
"""
from __future__ import annotations

import numpy as np

from ..data.sampling import CropDataset, make_loader
from ..data.stats import DEFAULT_PCT, volume_stats
from .domains import _spatial_augment


class StreamedDomain:
    labels = None  # labels travel with each batch, never as a whole volume

    def __init__(self, name: str, image_spec, label_spec, crop: tuple[int, ...], batch: int,
                 seed: int, foreground_prob: float = 0.0, workers: int | None = None,
                 pct: tuple[float, float] = DEFAULT_PCT):
        self.name, self.batch_size, self.workers = name, int(batch), workers
        # the clip percentiles of the run (data.low_pct/high_pct), as in-memory domains and
        # predict use them: a streamed volume is normalised as it will be predicted
        stats = volume_stats(image_spec, low_pct=pct[0], high_pct=pct[1])
        self.dataset = CropDataset(image_spec, label_spec, crop=crop, length=2**62, seed=seed,
                                   foreground_prob=foreground_prob, normalise=stats,
                                   transform=None)
        self.stats = self.dataset.stats
        self.has_labels = label_spec is not None
        self._iter, self._next = None, None

    def draw(self, iteration: int, rng: np.random.Generator, flip: bool, rot90: bool):
        """The batch of ``iteration``: images (n, 1, *crop) and labels or None."""
        if self._iter is None or self._next != iteration:
            self._iter = iter(make_loader(self.dataset, self.batch_size,
                                          start=iteration * self.batch_size,
                                          workers=self.workers, pin_memory=False))
        batch = next(self._iter)
        self._next = iteration + 1
        images = batch["image"].numpy()
        labels = batch["label"].numpy() if self.has_labels else None
        out_img, out_lab = [], []
        for k in range(images.shape[0]):
            parts = [images[k, 0]] + ([labels[k, 0]] if labels is not None else [])
            parts = _spatial_augment(parts, rng, flip, rot90)
            out_img.append(parts[0])
            if labels is not None:
                out_lab.append(parts[1])
        img = np.stack(out_img)[:, None].astype(np.float32, copy=False)  # stack copied already
        lab = np.stack(out_lab)[:, None].astype(np.float32, copy=False) if out_lab else None
        return img, lab
