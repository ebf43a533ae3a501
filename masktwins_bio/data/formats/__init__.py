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


def key_list(keys: list[str], limit: int = 20) -> str:
    """``a, b, c`` (or ``none``), cut after ``limit`` names with ``and N more``."""
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} and {len(keys) - limit} more"


_KIND_NAMES = {"nifti": "NIfTI", "mrc": "MRC", "tiff": "TIFF", "image": "2D image"}


def _check_options(path: Path, key: str, options: dict, kind: str) -> None:
    """A key or level that a format cannot use is refused rather than silently ignored."""
    if key and kind != "hdf5":
        raise InputError(f"'{path}' is a single {_KIND_NAMES[kind]} file, so it has no key "
                         f"'{key}'; only zarr and HDF5 files take ':KEY', so give the path "
                         "without it.")
    if options.get("level") is not None:
        raise InputError(f"'{path}' has no resolution levels, so '#level={options['level']}' "
                         "does not apply; only OME-Zarr images take '#level', so drop it.")


def _kind(path: Path) -> str | None:
    """The reader for a file, from its suffix."""
    name = path.name.lower()
    for kind, suffixes in (("hdf5", HDF5_SUFFIXES), ("nifti", NIFTI_SUFFIXES),
                           ("mrc", MRC_SUFFIXES), ("tiff", TIFF_SUFFIXES),
                           ("image", IMAGE_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def open_source(path: Path, key: str, options: dict) -> Source:
    """Pick the reader from the path's type and suffix; InputError when none fits."""
    if _is_zarr(path):
        return _reader("zarr_store").open_zarr(path, key, options)
    if path.is_dir():
        if key:
            raise InputError(f"'{path}' is a folder of images, which has no key '{key}'; "
                             "give the folder without ':key'.")
        _check_options(path, key, options, "folder")  # '#level' only; the key is refused above
        return _reader("images").open_slice_folder(path)
    if not os.access(path, os.R_OK):
        raise InputError(f"Cannot read '{path}' (permission denied); check its permissions.")
    kind = _kind(path)
    if kind is None:
        raise InputError(f"Unsupported file type '{path.name}'; give a zarr/OME-Zarr, HDF5 "
                         "(file.h5:key), TIFF, PNG, NIfTI or MRC file, or a folder of 2D "
                         "slices.")
    _check_options(path, key, options, kind)
    if kind == "hdf5":
        return _reader("hdf5").open_hdf5(path, key)
    if kind == "nifti":
        return _reader("nifti").open_nifti(path)
    if kind == "mrc":
        return _reader("mrc").open_mrc(path)
    if kind == "tiff":
        return _reader("tiff").open_tiff(path)
    return _reader("images").open_image(path)
