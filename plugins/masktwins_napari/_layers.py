"""Napari layers as (Z, Y, X) volumes, and the region of one that a widget works on.

Qt-free and napari-free: functions take layer-like objects (``data``, ``multiscale``, ``rgb``,
``scale``, ``translate``, ``world_to_data``) and viewer-like objects, so the logic is tested
without a display. Shapes are (Z, Y, X); a 2D layer is one slice, ``(1, Y, X)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from masktwins_bio.errors import InputError

REGION_MODES = ("view", "slice", "layer")


class _Plane:
    """A 2D array-like seen as (1, Y, X): reads go to the wrapped array, nothing is copied."""

    ndim = 3

    def __init__(self, array):
        self._array = array
        self.shape = (1, *tuple(int(n) for n in array.shape))
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        z, rest = key[0], key[1:]
        data = np.asarray(self._array[rest])
        if isinstance(z, slice):
            return data[np.newaxis][z]
        if z not in (0, -1):
            raise IndexError(f"index {z} is out of bounds for an axis of size 1")
        return data

    def __array__(self, dtype=None, copy=None):
        data = np.asarray(self._array)[np.newaxis]
        return data if dtype is None else data.astype(dtype)


def layer_name(layer) -> str:
    return getattr(layer, "name", "the layer")


def full_resolution(layer):
    """Level 0 of a multiscale layer, else the layer's data (numpy, dask or zarr: not read)."""
    data = layer.data
    return data[0] if getattr(layer, "multiscale", False) else data


def layer_volume(layer):
    """A grey layer's full-resolution data as a lazy (Z, Y, X) array-like.

    Raises InputError for RGB layers and for layers that are not 2D or 3D.
    """
    if layer is None:
        raise InputError("No image layer is selected; open or add an image first (sample "
                         "data: File > Open Sample > MaskTwins QA).")
    if getattr(layer, "rgb", False):
        raise InputError(f"Layer '{layer_name(layer)}' is RGB; give a grey image layer "
                         "(split the channels first).")
    data = full_resolution(layer)
    ndim = len(data.shape)
    if ndim == 3:
        return data
    if ndim == 2:
        return _Plane(data)
    raise InputError(f"Layer '{layer_name(layer)}' is {ndim}-D with shape {tuple(data.shape)}; "
                     "give a 2D or 3D grey image layer.")


def is_2d(layer) -> bool:
    return len(full_resolution(layer).shape) == 2


@dataclass(frozen=True)
class Region:
    """A box of voxels ``[start, stop)`` in a layer's full-resolution (Z, Y, X) data."""

    start: tuple
    stop: tuple

    @property
    def shape(self) -> tuple:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def slices(self) -> tuple:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def whole(cls, shape) -> "Region":
        return cls((0, 0, 0), tuple(int(n) for n in shape))

    def describe(self) -> str:
        return ", ".join(f"{ax} {a}:{b}" for ax, a, b in zip("zyx", self.start, self.stop))


def _span(center: float, length: int, size: int) -> tuple[int, int]:
    """``length`` voxels centred on ``center``, shifted to lie inside ``[0, size)``."""
    length = min(int(length), size)
    start = int(round(center - length / 2))
    start = min(max(start, 0), size - length)
    return start, start + length


def cap_region(region: Region, limits, shape) -> Region:
    """Shrink each axis of ``region`` to at most ``limits[i]`` voxels, keeping its centre."""
    start, stop = [], []
    for a, b, lim, n in zip(region.start, region.stop, limits, shape):
        if lim is not None and b - a > lim:
            a, b = _span((a + b) / 2, lim, n)
        start.append(a)
        stop.append(b)
    return Region(tuple(start), tuple(stop))


def grow_region(region: Region, minimum, shape) -> Region:
    """Grow each axis to at least ``minimum[i]`` voxels (or the whole axis), keeping its centre.

    A network's sliding window pads crops smaller than itself; growing the crop to the window
    instead keeps the prediction on real voxels.
    """
    start, stop = [], []
    for a, b, m, n in zip(region.start, region.stop, minimum, shape):
        if b - a < m:
            a, b = _span((a + b) / 2, m, n)
        start.append(a)
        stop.append(b)
    return Region(tuple(start), tuple(stop))


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _canvas_size(viewer) -> np.ndarray:
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) if canvas is not None else None
    if size is None:
        size = getattr(viewer, "_canvas_size", (600, 800))
    return np.asarray(size, dtype=float)


def _current_z(layer, viewer, nz: int) -> int:
    if len(full_resolution(layer).shape) == 2:
        return 0
    z = float(layer.world_to_data(np.asarray(viewer.dims.point))[0])
    return int(min(max(round(z), 0), nz - 1))


def _visible_yx(layer, viewer, shape) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (y, x) data ranges visible on the canvas in 2D display."""
    dims = viewer.dims
    displayed = tuple(dims.displayed)
    world_ndim = len(dims.point)
    if displayed != (world_ndim - 2, world_ndim - 1):
        raise InputError("Region 'view' needs the y–x plane on screen; reset the axis order "
                         "(the dims transpose/roll buttons) or choose region 'whole layer'.")
    camera = _camera(viewer)
    center = np.asarray(camera.center, dtype=float)[-2:]
    half = _canvas_size(viewer) / max(float(camera.zoom), 1e-9) / 2
    corners = []
    for sign in (-1, 1):
        point = np.asarray(dims.point, dtype=float).copy()
        point[-2:] = center + sign * half
        corners.append(np.asarray(layer.world_to_data(point), dtype=float)[-2:])
    lo, hi = np.minimum(*corners), np.maximum(*corners)
    ranges = []
    for axis in (0, 1):
        n = shape[1 + axis]
        a = int(min(max(math.floor(lo[axis] + 0.5), 0), n))
        b = int(min(max(math.ceil(hi[axis] + 0.5), 0), n))
        ranges.append((a, b))
    if any(b <= a for a, b in ranges):
        raise InputError(f"The view shows no part of layer '{layer_name(layer)}'; pan to the "
                         "data or choose region 'whole layer'.")
    return ranges[0], ranges[1]


def pick_region(layer, viewer, mode: str, depth: int = 1) -> Region:
    """The box a widget works on, in the layer's full-resolution (Z, Y, X) voxels.

    ``mode``: ``"view"`` (the y–x field of view on the canvas, ``depth`` slices around the
    current one), ``"slice"`` (the whole current slice, ``depth`` slices deep) or ``"layer"``
    (everything). In 3D display, ``"view"`` falls back to ``"slice"``.
    """
    if mode not in REGION_MODES:
        raise InputError(f"Unknown region '{mode}'; choose one of {', '.join(REGION_MODES)}.")
    shape = tuple(int(n) for n in layer_volume(layer).shape)
    if mode == "layer":
        return Region.whole(shape)
    z = _current_z(layer, viewer, shape[0])
    z0, z1 = _span(z + 0.5, max(1, int(depth)), shape[0])
    if mode == "view" and viewer.dims.ndisplay == 2:
        (y0, y1), (x0, x1) = _visible_yx(layer, viewer, shape)
    else:
        (y0, y1), (x0, x1) = (0, shape[1]), (0, shape[2])
    return Region((z0, y0, x0), (z1, y1, x1))


def placement(layer, region: Region, squeeze_2d: bool) -> dict:
    """``scale`` and ``translate`` that put an array of ``region``'s voxels over ``layer``."""
    scale = np.asarray(layer.scale, dtype=float)
    translate = np.asarray(layer.translate, dtype=float)
    start = np.asarray(region.start, dtype=float)
    if squeeze_2d:
        start = start[1:]
    offset = translate + start[-len(scale):] * scale
    return {"scale": tuple(scale), "translate": tuple(offset)}


class RegionView:
    """A lazy (Z, Y, X) window ``region`` into another array-like (the whole array if it is)."""

    ndim = 3

    def __init__(self, array, region: Region):
        self._array, self._region = array, region
        self.shape = region.shape
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        outer = []
        for k, a, n in zip(key, self._region.start, self.shape):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                outer.append(slice(a + start, a + stop, step))
            else:
                outer.append(a + (int(k) + n if k < 0 else int(k)))
        return np.asarray(self._array[tuple(outer)])


def read_region(volume, region: Region) -> np.ndarray:
    """The voxels of ``region`` as a numpy array (dask and zarr are read here, in one go)."""
    return np.asarray(volume[region.slices])
