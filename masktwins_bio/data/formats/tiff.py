"""TIFF files of any size: single 2D images, multipage stacks, ImageJ hyperstacks, OME-TIFF.

Pixels are read lazily through tifffile's zarr interface (``series.aszarr()``), so a crop reads
only the pages and tiles it covers. Contiguous RGB (``YXS``) needs ``#channel=N``; planar
(``SYX``) samples are read as z slices, since that is how a small grey stack often ends up.
Voxel size comes from OME-XML, ImageJ metadata (``spacing`` and ``unit``) or the resolution
tags, in that order.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import numpy as np

from ...errors import InputError
from . import Source
from .images import SliceStack
from .units import to_nm, voxel_tuple

# tifffile axis letters: Q/I (unnamed pages) are treated as z; S = samples (RGB), C = channel.
_AXIS_MAP = {"Q": "z", "I": "z", "Z": "z", "Y": "y", "X": "x", "S": "c", "C": "c", "T": "t"}


def _ome_sizes(tif) -> list | None:
    """[z, y, x] nm from OME-XML, None for an axis it does not give (None without OME-XML)."""
    xml = tif.ome_metadata
    if not xml:
        return None
    sizes = []
    for ax in "ZYX":
        m = re.search(rf'PhysicalSize{ax}="([^"]+)"', xml)
        u = re.search(rf'PhysicalSize{ax}Unit="([^"]+)"', xml)
        sizes.append(to_nm(m.group(1), u.group(1) if u else "µm") if m else None)
    return sizes


# ResolutionUnit codes with a physical meaning. Inches (2, the TIFF default) are left out: they
# carry the 72/96/300 dpi print setting of generic image software, which would read as a pixel
# of 0.35 mm; no EM acquisition writes its pixel size in inches.
_RESOLUTION_UNITS = {3: "cm", 4: "mm", 5: "um"}


def _resolution_nm(page, unit: str | None) -> tuple | None:
    """(y, x) pixel size from the X/YResolution tags (pixels per unit)."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    if unit is None:
        code = int(getattr(tags.get("ResolutionUnit"), "value", 1))
        unit = _RESOLUTION_UNITS.get(code)
    sizes = []
    for name in ("YResolution", "XResolution"):
        num, den = tags[name].value
        sizes.append(to_nm(den / num, unit) if num else None)
    return voxel_tuple(sizes)


def _voxel_size(tif, ndim_spatial: int) -> tuple | None:
    """(z, y, x) nm, or (y, x) alone when the file gives no z spacing (a 2D image, or a stack
    whose section thickness is unknown: never guessed)."""
    sizes = _ome_sizes(tif)
    if sizes is not None:
        if ndim_spatial == 3 and sizes[0] is not None:
            return voxel_tuple(sizes)
        return voxel_tuple(sizes[1:])
    ij = tif.imagej_metadata or {}
    yx = _resolution_nm(tif.pages[0], ij.get("unit") if ij else None)
    if yx is None or ndim_spatial == 2:
        return yx
    z = to_nm(ij.get("spacing"), ij.get("unit")) if ij else None
    return yx if z is None else (z,) + yx


# What tifffile logs (and then falls back to the first page) when a file's page chain or
# metadata is cut short: such a stack would open as one slice, silently.
_DAMAGE = ("invalid page offset", "failed to reshape", "invalid or corrupted")


class _TiffLog(logging.Handler):
    """Collects tifffile's warnings while a file is opened."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class _PageStack(SliceStack):
    """Equal 2D series of one file (a stack written page by page, one series per page) as one
    lazy (Z, Y, X) array: a slice stack whose slices are pages, decoded as they are read."""

    def __init__(self, series):
        super().__init__(list(series), series[0].shape, series[0].dtype)
        self._lock = threading.Lock()  # one file handle, shared by every reading thread

    def raw_slice(self, z: int) -> np.ndarray:
        with self._lock:
            return self.files[z].asarray()


def _page_stack(tif):
    """The file's series as one stack when there are several 2D ones of one shape and type
    (tifffile makes a series per page of a file written page by page), else None."""
    series = tif.series
    first = series[0]
    if len(series) < 2 or len(first.shape) != 2 or tif.is_ome or tif.is_imagej:
        return None
    if all(s.shape == first.shape and s.dtype == first.dtype for s in series):
        return _PageStack(series)
    return None  # thumbnails, pyramids: the first series is the image


def open_tiff(path: Path) -> Source:
    import tifffile
    import zarr
    log, catch = logging.getLogger("tifffile"), _TiffLog()
    log.addHandler(catch)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:
        log.removeHandler(catch)
        raise InputError(f"Cannot read TIFF '{path}' ({type(err).__name__}: {err}); check that "
                         "the file is a complete TIFF.") from None
    try:
        try:
            series = tif.series[0]
            stack = _page_stack(tif)
        finally:
            log.removeHandler(catch)
        damage = next((m for m in catch.messages if any(d in m for d in _DAMAGE)), None)
        if damage is not None:
            raise InputError(f"TIFF '{path}' is truncated or damaged (tifffile: "
                             f"{damage.split('> ', 1)[-1]}); download or export it again.")
        if stack is not None:
            return Source(stack, axes="zyx", voxel_size=_voxel_size(tif, 3), close=tif.close)
        axes = "".join(_AXIS_MAP.get(a, a.lower()) for a in series.axes)
        if series.axes.startswith("S") and "z" not in axes:
            # Planar-separate samples: what tifffile writes for a (3|4, Y, X) grey stack saved
            # without photometric='minisblack'. EM data is grey, so read them as z slices.
            axes = "z" + axes[1:]
        if axes.count("z") > 1:  # e.g. 'QQYX': several unnamed page axes; flatten them to z
            axes = None
        store = series.aszarr()
        array = zarr.open_array(store, mode="r")
        n_spatial = sum(a in "zyx" for a in axes) if axes else 3
        voxel = _voxel_size(tif, n_spatial)
    except InputError:
        tif.close()
        raise
    except Exception as err:
        tif.close()
        raise InputError(f"Cannot read TIFF '{path}' ({type(err).__name__}: {err}); check that "
                         "the file is a complete TIFF.") from None

    def close():
        store.close()
        tif.close()
    return Source(array, axes=axes, voxel_size=voxel, close=close)
