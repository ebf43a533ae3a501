"""TIFF files of any size: single 2D images, multipage stacks, ImageJ hyperstacks, OME-TIFF.

Pixels are read lazily through tifffile's zarr interface (``series.aszarr()``), so a crop reads
only the pages and tiles it covers. Contiguous RGB (``YXS``) needs ``#channel=N``; planar
(``SYX``) samples are read as z slices, since that is how a small grey stack often ends up.
Voxel size comes from OME-XML, ImageJ metadata (``spacing`` and ``unit``) or the resolution
tags, in that order.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import InputError
from . import Source
from .units import to_nm, voxel_tuple

# tifffile axis letters: Q/I (unnamed pages) are treated as z; S = samples (RGB), C = channel.
_AXIS_MAP = {"Q": "z", "I": "z", "Z": "z", "Y": "y", "X": "x", "S": "c", "C": "c", "T": "t"}


def _ome_voxel_size(tif) -> tuple | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    sizes = []
    for ax in "ZYX":
        m = re.search(rf'PhysicalSize{ax}="([^"]+)"', xml)
        u = re.search(rf'PhysicalSize{ax}Unit="([^"]+)"', xml)
        sizes.append(to_nm(m.group(1), u.group(1) if u else "µm") if m else None)
    if sizes[0] is None and sizes[1] is not None:
        sizes[0] = sizes[1]  # a 2D OME-TIFF has no z size; isotropic is the only sensible guess
    return voxel_tuple(sizes)


def _resolution_nm(page, unit: str | None) -> tuple | None:
    """(y, x) pixel size from the X/YResolution tags (pixels per unit)."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    if unit is None:
        code = int(getattr(tags.get("ResolutionUnit"), "value", 1))
        unit = {2: "inch", 3: "cm"}.get(code)
    sizes = []
    for name in ("YResolution", "XResolution"):
        num, den = tags[name].value
        sizes.append(to_nm(den / num, unit) if num else None)
    return voxel_tuple(sizes)


def _voxel_size(tif, ndim_spatial: int) -> tuple | None:
    vs = _ome_voxel_size(tif)
    if vs is not None:
        return vs if ndim_spatial == 3 else vs[1:]
    ij = tif.imagej_metadata or {}
    yx = _resolution_nm(tif.pages[0], ij.get("unit") if ij else None)
    if yx is None:
        return None
    if ndim_spatial == 2:
        return yx
    z = to_nm(ij.get("spacing"), ij.get("unit")) if ij else None
    return None if z is None else (z,) + yx


def open_tiff(path: Path) -> Source:
    import tifffile
    import zarr
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:
        raise InputError(f"Cannot read TIFF '{path}' ({type(err).__name__}: {err}); check that "
                         "the file is a complete TIFF.") from None
    try:
        series = tif.series[0]
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
