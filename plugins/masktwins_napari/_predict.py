"""Sliding-window prediction of a layer region with progress and cancellation (Qt-free).

The numbers are those of ``masktwins-bio predict``: the same network (``load_model``), the same
per-volume normalisation (``compute_stats`` of the whole layer) and the library's
``predict_array`` with the same grouping of slices, so a widget run equals the CLI's output on
the same input. What this module adds is a count of the network's forward passes known
beforehand, a tick after each pass and a cancel check before each one, so a thread can report
progress and stop between passes. 2D networks read the layer ``batch_size`` slices at a time
(never the whole volume); 3D networks read the region at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from masktwins_bio.errors import InputError

from ._layers import Region, check_fits_memory, layer_name


class Cancelled(Exception):
    """Raised inside the network call when the user cancelled the job."""


class _Watched(torch.nn.Module):
    """A network that checks for cancellation before and ticks after every forward pass."""

    def __init__(self, net: torch.nn.Module, tick: Callable[[], None],
                 cancelled: Callable[[], bool]):
        super().__init__()
        self.net = net
        self._tick = tick
        self._cancelled = cancelled

    def forward(self, x):
        if self._cancelled():
            raise Cancelled()
        out = self.net(x)
        self._tick()
        return out


def windows_per_image(shape, roi, overlap: float) -> int:
    """Number of windows MONAI's sliding_window_inference places on one image of ``shape``."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size = tuple(max(int(s), int(r)) for s, r in zip(shape, roi))
    scan = _get_scan_interval(size, tuple(int(r) for r in roi), len(roi),
                              (float(overlap),) * len(roi))
    return len(dense_patch_slices(size, tuple(int(r) for r in roi), scan))


def _slabs(region: Region, step: int):
    """z ranges of ``step`` slices, counted from the region's first slice."""
    z0, z1 = region.start[0], region.stop[0]
    return [(z, min(z + step, z1)) for z in range(z0, z1, step)]


@dataclass
class PredictionPlan:
    """One prediction job: which voxels, with which network and settings."""

    model: torch.nn.Module
    dims: int
    roi: tuple
    volume: object           # lazy (Z, Y, X) array-like, full resolution
    region: Region
    stats: object            # IntensityStats of the whole layer
    overlap: float = 0.25
    batch_size: int = 4
    device: torch.device | str = "cpu"

    @property
    def steps(self) -> int:
        """Forward passes of the network (what the progress bar counts)."""
        _, ny, nx = self.region.shape
        if self.dims == 3:
            return math.ceil(windows_per_image(self.region.shape, self.roi, self.overlap)
                             / self.batch_size)
        per_slice = windows_per_image((ny, nx), self.roi, self.overlap)
        return sum(math.ceil((b - a) * per_slice / self.batch_size)
                   for a, b in _slabs(self.region, self.batch_size))

    def run(self, tick: Callable[[], None] = lambda: None,
            cancelled: Callable[[], bool] = lambda: False) -> np.ndarray:
        """Foreground probability (Z, Y, X) float32 of the region; raises Cancelled."""
        from masktwins_bio.inference.window import predict_array

        net = _Watched(self.model, tick, cancelled)
        if self.dims == 3:
            image = self.stats.apply(np.asarray(self.volume[self.region.slices]))
            return predict_array(net, image, 3, self.roi, self.overlap, self.batch_size,
                                 self.device)
        out = np.empty(self.region.shape, dtype=np.float32)
        z_base = self.region.start[0]
        _, ys, xs = self.region.slices
        for a, b in _slabs(self.region, self.batch_size):
            if cancelled():
                raise Cancelled()
            slab = self.stats.apply(np.asarray(self.volume[a:b, ys, xs]))
            out[a - z_base:b - z_base] = predict_array(net, slab, 2, self.roi, self.overlap,
                                                       self.batch_size, self.device)
        return out


def check_settings(overlap: float, batch_size: int, roi) -> None:
    if not 0.0 <= float(overlap) < 1.0:
        raise InputError(f"Overlap {overlap} must lie in [0, 1).")
    if int(batch_size) < 1:
        raise InputError(f"Batch size {batch_size} must be at least 1.")
    if any(int(r) < 8 for r in roi):
        raise InputError(f"Window {tuple(roi)} must be at least 8 voxels on every axis.")


def plan_prediction(loaded, layer, volume, region: Region, stats, *, roi=None,
                    overlap: float = 0.25, batch_size: int = 4, device="cpu",
                    layer_is_2d: bool = False) -> PredictionPlan:
    """A checked PredictionPlan; InputError for a job that cannot work (one sentence each)."""
    roi = tuple(int(r) for r in (roi or loaded.roi))
    if len(roi) != loaded.dims:
        raise InputError(f"The window {roi} has {len(roi)} sizes but the network is "
                         f"{loaded.dims}D; give {loaded.dims} sizes.")
    check_settings(overlap, batch_size, roi)
    if loaded.dims == 3 and layer_is_2d:
        raise InputError(f"The checkpoint holds a 3D network but layer '{layer_name(layer)}' is "
                         "a single 2D image; use a 2D run or a volume layer.")
    if loaded.dims == 3:
        short = [(ax, n, r) for ax, n, r in zip("zyx", volume.shape, roi) if n < r / 2]
        if short:
            ax, n, r = short[0]
            raise InputError(f"Layer '{layer_name(layer)}' has {n} voxels along {ax}, too few "
                             f"for the 3D network's window of {r}; use a 2D run or more data.")
        check_fits_memory(region.size, 16, "Predicting this region with a 3D network")
    else:
        check_fits_memory(region.size, 5, "Holding the prediction of this region")
    return PredictionPlan(loaded.model, loaded.dims, roi, volume, region, stats, float(overlap),
                          int(batch_size), device)


def instance_labels(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Connected components (face-connected, in 3D) of ``prob > threshold``, uint32 ids."""
    from scipy import ndimage

    labels, _ = ndimage.label(prob > threshold)
    return labels.astype(np.uint32, copy=False)
