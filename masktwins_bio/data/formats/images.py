"""Single 2D images (PNG, JPEG, BMP, 2D TIFF) and folders of 2D slices stacked along z.

A folder is read one slice file at a time: a crop decodes only the slices it covers. Slices are
sorted by name with numbers compared as numbers (``2.png`` before ``10.png``), and must all have
the same shape; files whose dtypes differ (VNC masks mix 1-bit and 8-bit PNGs) are promoted to a
common dtype, while :attr:`SliceStack.raw_slice` keeps each file's own.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import InputError, InputGone
from . import IMAGE_SUFFIXES, TIFF_SUFFIXES, Source

_PIL_MODES = {"1": (np.dtype(bool), 0), "L": (np.dtype(np.uint8), 0),
              "P": (np.dtype(np.uint8), 0), "I;16": (np.dtype(np.uint16), 0),
              "I;16B": (np.dtype(np.uint16), 0), "I;16L": (np.dtype(np.uint16), 0),
              "I": (np.dtype(np.int32), 0), "F": (np.dtype(np.float32), 0),
              "LA": (np.dtype(np.uint8), 2), "RGB": (np.dtype(np.uint8), 3),
              "RGBA": (np.dtype(np.uint8), 4), "CMYK": (np.dtype(np.uint8), 4)}


def natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: ``img2`` < ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _header(path: Path) -> tuple[tuple, np.dtype]:
    """Shape (Y, X[, C]) and dtype of a 2D image file, read from its header only."""
    try:
        if path.name.lower().endswith(TIFF_SUFFIXES):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                if len(tif.pages) > 1:
                    raise InputError(f"'{path}' holds {len(tif.pages)} pages, but a folder of "
                                     "slices needs one 2D image per file; open the file itself.")
                return tuple(series.shape), np.dtype(series.dtype)
        from PIL import Image
        with Image.open(path) as im:
            if im.mode not in _PIL_MODES:
                arr = np.asarray(im)
                return arr.shape, arr.dtype
            dtype, channels = _PIL_MODES[im.mode]
            shape = (im.height, im.width) + ((channels,) if channels else ())
            return shape, dtype
    except InputError:
        raise
    except Exception as err:  # corrupt or not an image at all
        raise InputError(f"Cannot read image '{path}' ({type(err).__name__}: {err}); "
                         "replace or remove the file.") from None


def read_image(path: Path) -> np.ndarray:
    """Decode one 2D image file into its own dtype (PIL mode '1' gives bool)."""
    try:
        if path.name.lower().endswith(TIFF_SUFFIXES):
            import tifffile
            return tifffile.imread(path)
        from PIL import Image
        with Image.open(path) as im:
            return np.asarray(im)
    except (FileNotFoundError, PermissionError) as err:  # there when listed, gone now
        raise InputGone(err, path) from None
    except Exception as err:
        raise InputError(f"Cannot decode image '{path}' ({type(err).__name__}: {err}); "
                         "replace or remove the file.") from None


class SliceStack:
    """(Z, Y, X[, C]) view of a sorted list of 2D image files of one shape."""

    def __init__(self, files: list[Path], shape2d: tuple, dtype: np.dtype):
        self.files = files
        self.shape = (len(files),) + tuple(shape2d)
        self.dtype = dtype

    def raw_slice(self, z: int) -> np.ndarray:
        return read_image(self.files[z])

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        zkey, rest = key[0], key[1:]
        if isinstance(zkey, (int, np.integer)):
            return np.asarray(self.raw_slice(int(zkey))[rest], dtype=self.dtype)
        zs = range(*zkey.indices(self.shape[0]))
        probe = np.empty(self.shape[1:], dtype=self.dtype)[rest]
        out = np.empty((len(zs),) + probe.shape, dtype=self.dtype)
        for i, z in enumerate(zs):
            out[i] = self.raw_slice(z)[rest]
        return out


def open_slice_folder(folder: Path) -> Source:
    files = sorted((p for p in folder.iterdir()
                    if p.is_file() and not p.name.startswith(".")
                    and p.name.lower().endswith(IMAGE_SUFFIXES)),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(f"The folder '{folder}' holds no PNG or TIFF slices; give a folder of "
                         "2D images or a volume file.")
    headers = [_header(p) for p in files]
    common = Counter(shape for shape, _ in headers).most_common(1)[0][0]
    for path, (shape, _) in zip(files, headers):
        if shape != common:
            raise InputError(f"Slice '{path.name}' in '{folder}' has shape {shape} but the other "
                             f"slices have {common}; remove or resize that file.")
    dtype = np.result_type(*{d for _, d in headers})
    stack = SliceStack(files, common, dtype)
    axes = "zyx" if len(common) == 2 else "zyxc"
    return Source(stack, axes=axes, per_slice=stack)


class _LazyImage:
    """A single 2D image decoded on first access and then kept."""

    def __init__(self, path: Path, shape: tuple, dtype: np.dtype):
        self.path, self.shape, self.dtype = path, shape, dtype
        self._data = None

    def __getitem__(self, key):
        if self._data is None:
            self._data = read_image(self.path)
        return self._data[key]


def open_image(path: Path) -> Source:
    shape, dtype = _header(path)
    return Source(_LazyImage(path, shape, dtype), axes="yx" if len(shape) == 2 else "yxc")
