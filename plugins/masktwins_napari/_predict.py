"""Prediction of a layer region through the library's out-of-core engine, with progress and
cancellation (Qt-free).

The numbers are those of ``masktwins-bio predict``: the same network (``load_model``), the same
per-volume normalisation (``compute_stats`` of the whole layer), the same block plan
(``make_plan``), ``Predictor`` options and engine (``run_tiles``: read → predict → blend →
write), so a widget run over the whole layer writes the CLI's bytes. The layer is read lazily,
window row by window row (numpy, dask, zarr or one level of a multiscale pyramid). The output is
a numpy array when it fits comfortably in memory, else a zarr array in a temporary folder that
napari shows lazily. Such a scratch folder lives as long as a layer shows it: it is deleted
when its job is cancelled or fails, when no layer names it any more (replaced by a newer result,
or removed) and, for whatever is left, when the Python process exits. What this module adds: the
number of forward passes known beforehand, a tick after each pass and a cancel check before
each one.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from masktwins_bio.errors import InputError

from ._layers import Region, RegionView, layer_name

# Results up to this fraction of the free memory stay in memory; larger ones go to zarr.
IN_MEMORY_FRACTION = 0.25

# Temporary folders of out-of-core results this process made (never a folder the user chose):
# a 4096² x 500 probability is 33 GB, so each one goes as soon as no layer shows it. Layers that
# show one name it in their metadata under SCRATCH_TAG.
SCRATCH_TAG = "masktwins_scratch"
_SCRATCH: set[Path] = set()   # made, not yet deleted
_SHOWN: set[Path] = set()     # of those, the ones a layer has shown (a running job's are not)
_SCRATCH_LOCK = threading.Lock()


def scratch_folder() -> Path:
    """A new temporary folder for one out-of-core result, removed at the latest at exit."""
    folder = Path(tempfile.mkdtemp(prefix="masktwins-napari-"))
    with _SCRATCH_LOCK:
        _SCRATCH.add(folder)
    return folder


def discard_scratch(folder: Path | None) -> None:
    """Delete ``folder`` if it is one of this process's scratch folders; anything else (a folder
    the user chose, None) is left alone."""
    with _SCRATCH_LOCK:
        if folder not in _SCRATCH:
            return
        _SCRATCH.discard(folder)
        _SHOWN.discard(folder)
    shutil.rmtree(folder, ignore_errors=True)


def scratch_of(result) -> Path | None:
    """The scratch folder holding an out-of-core result (a zarr array), else None."""
    root = getattr(getattr(result, "store", None), "root", None)
    if root is None:
        return None
    folder = Path(root).parent
    with _SCRATCH_LOCK:
        return folder if folder in _SCRATCH else None


def mark_shown(folder: Path) -> None:
    """``folder``'s result is on layers now: it goes when the last of them does."""
    with _SCRATCH_LOCK:
        if folder in _SCRATCH:
            _SHOWN.add(folder)


def release_unshown(layers) -> None:
    """Delete the shown scratch folders that none of ``layers`` names any more (replaced or
    removed layers)."""
    named = {Path(m[SCRATCH_TAG]) for layer in layers
             if SCRATCH_TAG in (m := (getattr(layer, "metadata", None) or {}))}
    with _SCRATCH_LOCK:
        gone = [f for f in _SHOWN if f not in named]
    for folder in gone:
        discard_scratch(folder)


@atexit.register
def _discard_all_scratch() -> None:
    for folder in list(_SCRATCH):
        discard_scratch(folder)


class Cancelled(Exception):
    """Raised inside the engine's forward pass when the user cancelled the job."""


class _WatchedPredictor:
    """The engine's Predictor, with a cancel check before and a tick after every pass."""

    def __init__(self, predictor, tick: Callable[[], None], cancelled: Callable[[], bool]):
        self._predictor, self._tick, self._cancelled = predictor, tick, cancelled

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def __call__(self, batch):
        if self._cancelled():
            raise Cancelled()
        out = self._predictor(batch)
        self._tick()
        return out


class ZarrArraySink:
    """Blocks of the engine written into a zarr array (one chunk per block, so the engine's
    writer threads never share a chunk)."""

    def __init__(self, path: Path, shape, block):
        import zarr

        self.array = zarr.create_array(store=str(path), shape=tuple(shape),
                                       chunks=tuple(block), dtype="float32", fill_value=0,
                                       zarr_format=3)

    def write(self, block, slices, prob) -> None:
        self.array[slices] = prob

    def close(self) -> None:
        pass


def _free_memory() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # psutil comes with napari; without it, assume the result fits
        return None


@dataclass
class PredictionPlan:
    """One prediction job: which voxels, with which network and settings."""

    loaded: object           # masktwins_bio.inference.model_io.LoadedModel
    volume: object           # lazy (Z, Y, X) array-like, full resolution
    region: Region
    stats: object = None     # IntensityStats of the whole layer (set before ``run``)
    roi: tuple = ()
    overlap: float = 0.25
    batch_size: int = 4
    device: object = "cpu"
    out_dir: str | None = None   # where an out-of-core result goes (a temp folder if None)
    zoom: float = 1.0            # in-plane resampling to the network's pixel size (1: none)
    block_plan: object = field(init=False, repr=False)

    def __post_init__(self):
        from masktwins_bio.inference.forward import input_window
        from masktwins_bio.inference.plan import make_plan

        self.roi = tuple(int(r) for r in (self.roi or self.loaded.roi))
        self.block_plan = make_plan(self.region.shape, input_window(self.roi, self.zoom),
                                    self.loaded.dims, self.overlap, None, self.batch_size)

    @property
    def dims(self) -> int:
        return self.loaded.dims

    @property
    def steps(self) -> int:
        """Forward passes of the network (what the progress bar counts)."""
        from masktwins_bio.inference.schedule import TileWork

        return sum(len(TileWork(self.block_plan, t).batches) for t in self.block_plan.tiles())

    @property
    def in_memory(self) -> bool:
        free = _free_memory()
        return free is None or self.region.size * 4 <= IN_MEMORY_FRACTION * free

    def _predictor(self):
        from masktwins_bio.inference.forward import Predictor
        from masktwins_bio.inference.predict import PredictOptions, make_predictor

        options = PredictOptions(overlap=self.overlap, batch_size=self.batch_size,
                                 pixel_zoom=self.zoom)
        if self.roi == tuple(self.loaded.roi):
            return make_predictor(self.loaded, self.device, options, quiet=True)
        return Predictor(self.loaded.model, self.loaded.dims, self.roi, self.device,
                         amp=options.amp, optimize=options.optimize, quiet=True,
                         zoom=self.zoom)

    def run(self, tick: Callable[[], None] = lambda: None,
            cancelled: Callable[[], bool] = lambda: False):
        """Foreground probability (Z, Y, X) float32 of the region: a numpy array, or a zarr
        array on disk for results too large for memory. Raises Cancelled."""
        from masktwins_bio.inference.engine import pending_works, run_tiles
        from masktwins_bio.inference.store import ArraySink

        if cancelled():
            raise Cancelled()
        predictor = _WatchedPredictor(self._predictor(), tick, cancelled)
        folder = None
        if self.in_memory:
            sink = ArraySink(self.region.shape)
        else:
            folder = Path(self.out_dir) if self.out_dir else scratch_folder()
            sink = ZarrArraySink(folder / "probability.zarr", self.region.shape,
                                 self.block_plan.block)
        source = RegionView(self.volume, self.region)
        try:
            run_tiles(pending_works(self.block_plan, set()), source, self.stats, predictor, sink)
        except BaseException:  # cancelled or failed: no layer will show this partial result
            discard_scratch(folder)
            raise
        return sink.out if isinstance(sink, ArraySink) else sink.array


def check_settings(overlap: float, batch_size: int, roi) -> None:
    if not 0.0 <= float(overlap) < 1.0:
        raise InputError(f"Overlap {overlap} must lie in [0, 1).")
    if int(batch_size) < 1:
        raise InputError(f"Batch size {batch_size} must be at least 1.")
    if any(int(r) < 8 for r in roi):
        raise InputError(f"Window {tuple(roi)} must be at least 8 voxels on every axis.")


# nm per unit of a layer's scale; napari (0.5+) keeps units as pint units, named in full
_NM_PER_UNIT = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micrometer": 1e3,
                "micron": 1e3}


def layer_pixel_nm(layer) -> float | None:
    """The layer's in-plane pixel size in nm when its scale is a length (this plugin's reader
    sets nm from the file's voxel size), else None (napari's default unit is the pixel)."""
    units = getattr(layer, "units", None)
    per_unit = _NM_PER_UNIT.get(str(units[-1])) if units else None
    if per_unit is None:
        return None
    value = float(layer.scale[-1]) * per_unit
    return value if value > 0 else None


def plan_prediction(loaded, layer, volume, region: Region, stats, *, roi=None,
                    overlap: float = 0.25, batch_size: int = 4, device="cpu",
                    layer_is_2d: bool = False) -> PredictionPlan:
    """A checked PredictionPlan; InputError for a job that cannot work (one sentence each).

    A layer whose scale is a length and differs from the network's pixel size by more than 20% is
    predicted through resampled windows, as ``masktwins-bio predict`` does by default."""
    from masktwins_bio.data.resample import network_pixel_nm, source_zoom

    roi = tuple(int(r) for r in (roi or loaded.roi))
    if len(roi) != loaded.dims:
        raise InputError(f"The window {roi} has {len(roi)} sizes but the network is "
                         f"{loaded.dims}D; give {loaded.dims} sizes.")
    check_settings(overlap, batch_size, roi)
    if loaded.dims == 3 and layer_is_2d:
        raise InputError(f"The checkpoint holds a 3D network but layer '{layer_name(layer)}' is "
                         "a single 2D image; use a 2D run or a volume layer.")
    if region.size == 0:
        raise InputError(f"The region of layer '{layer_name(layer)}' is empty; choose another.")
    zoom = source_zoom(layer_pixel_nm(layer), network_pixel_nm(loaded.config.data), None)
    return PredictionPlan(loaded, volume, region, stats, roi, float(overlap), int(batch_size),
                          device, zoom=zoom)


def instance_labels(prob, threshold: float):
    """Connected components (face-connected, in 3D) of ``prob > threshold`` as uint32 ids for an
    in-memory result; for a zarr result, the lazy 0/1 mask (components need the whole volume).
    """
    if isinstance(prob, np.ndarray):
        from scipy import ndimage

        labels, _ = ndimage.label(prob > threshold)
        return labels.astype(np.uint32, copy=False)
    import dask.array as da

    return (da.from_array(prob, chunks=prob.chunks) > threshold).astype(np.uint8)
