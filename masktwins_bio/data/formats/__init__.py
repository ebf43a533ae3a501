"""Format readers: each turns a parsed spec into a :class:`Source` (a lazy array plus metadata).

A reader does not decide what is grey or spatial; :mod:`masktwins_bio.data.volumes` does, from
``Source.axes`` (letters such as ``"zyx"``, ``"yxs"``, ``"tczyx"``; ``None`` when unknown).
Readers are imported lazily so optional libraries (nibabel, mrcfile) are only needed when used.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...errors import InputError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MRC_SUFFIXES = (".mrc", ".mrcs", ".rec", ".map", ".st", ".ali")


@dataclass
class Source:
    """A lazily read N-D array and what the reader knows about it.

    ``array`` supports ``.shape``, ``.dtype`` and numpy basic indexing (ints and slices with a
    positive step). ``voxel_size`` is in nm, for the spatial axes in (z, y, x) order (or (y, x)).
    """

    array: Any
    axes: str | None = None
    voxel_size: tuple | None = None
    close: Callable[[], None] | None = None
    per_slice: Any = None  # a stack of 2D files: raw_slice(z) returns one file's own dtype


def _is_zarr(path: Path) -> bool:
    if path.name.endswith(".zarr"):
        return True
    return path.is_dir() and any((path / n).exists() for n in
                                 ("zarr.json", ".zarray", ".zgroup", ".zattrs"))


def _reader(module: str) -> Any:
    return importlib.import_module(f"{__name__}.{module}")


def open_source(path: Path, key: str, options: dict) -> Source:
    """Pick the reader from the path's type and suffix; InputError when none fits."""
    name = path.name.lower()
    if _is_zarr(path):
        return _reader("zarr_store").open_zarr(path, key, options)
    if path.is_dir():
        if key:
            raise InputError(f"'{path}' is a folder of images, which has no key '{key}'; "
                             "give the folder without ':key'.")
        return _reader("images").open_slice_folder(path)
    if not os.access(path, os.R_OK):
        raise InputError(f"Cannot read '{path}' (permission denied); check its permissions.")
    if name.endswith(HDF5_SUFFIXES):
        return _reader("hdf5").open_hdf5(path, key)
    if name.endswith(NIFTI_SUFFIXES):
        return _reader("nifti").open_nifti(path)
    if name.endswith(MRC_SUFFIXES):
        return _reader("mrc").open_mrc(path)
    if name.endswith(TIFF_SUFFIXES):
        return _reader("tiff").open_tiff(path)
    if name.endswith(IMAGE_SUFFIXES):
        return _reader("images").open_image(path)
    raise InputError(f"Unsupported file type '{path.name}'; give a zarr/OME-Zarr, HDF5 "
                     "(file.h5:key), TIFF, PNG, NIfTI or MRC file, or a folder of 2D slices.")
