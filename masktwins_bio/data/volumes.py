"""One lazy, read-only (Z, Y, X) grey-volume interface for every EM format users have.

Volume specs
------------
A spec is ``PATH[:KEY][#OPTION=N...]``:

====================================  ============================================================
``raw/``                              folder of 2D slices (png/tif/tiff/jpg), sorted by name with
                                      numbers compared as numbers; one slice per z
``image.png``, ``slice.tif``          a single 2D image; opens as (1, Y, X)
``stack.tif``                         multipage / ImageJ / OME-TIFF, read lazily page by page
``vol.zarr``                          a zarr v2 or v3 array store
``data.zarr:raw``, ``data.zarr:a/b``  an array inside a zarr group
``img.ome.zarr``                      OME-Zarr image, full resolution; voxel size from metadata
``img.ome.zarr#level=2``              the same image at resolution level 2 (``img.ome.zarr:2`` too)
``data.h5:volumes/raw``               an HDF5 dataset (``.h5``/``.hdf5``); the key may be left
                                      out when the file holds one dataset
``vol.nii.gz``                        NIfTI (x, y, z on disk; returned as z, y, x)
``tomo.mrc``                          MRC / REC / MAP (voxel size from the header, Å → nm)
``rgb.tif#channel=1``                 pick one channel of multi-channel or RGB data (``#c=1``)
====================================  ============================================================

Every volume is grey, three-dimensional and indexed (z, y, x); 2D inputs get a z axis of length 1.
``voxel_size`` is in nm, (z, y, x), when the file says so. Indexing reads only what is asked for:
``vol[10, 0:256, 0:256]`` touches one slice (or the chunks it covers). Volumes pickle by spec,
so DataLoader workers each reopen their own file handles.

Problems the user can fix (missing path, wrong key, RGB or 4-D data, unsupported dtype, empty
volume) raise :class:`~masktwins_bio.errors.InputError` with one sentence saying what to do.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from ..errors import InputError, MaskTwinsError
from .formats import Source, open_source
from .spec import parse_spec

_GUESSED_AXES = {2: "yx", 5: "tczyx"}


def _guess_axes(shape: tuple) -> str:
    """Axis letters for an array whose file says nothing about them."""
    if len(shape) == 3:
        return "yxc" if shape[-1] <= 4 < min(shape[0], shape[1]) else "zyx"
    if len(shape) == 4:
        if shape[-1] in (3, 4) and min(shape[1], shape[2]) > 4:
            return "zyxc"  # RGB(A) slices: an x extent of 3-4 beside large y/x is not plausible
        return "zyxc" if shape[-1] <= 4 < shape[0] and shape[0] != 1 else "czyx"
    return _GUESSED_AXES.get(len(shape), "")


def _plan(shape: tuple, axes: str | None, channel: int | None, where: str):
    """Which array axes are fixed at an index (channel, singleton time) and which are z, y, x."""
    axes = axes if axes and len(axes) == len(shape) else _guess_axes(shape)
    if len(shape) > 5 or not axes:
        raise InputError(f"'{where}' is {len(shape)}-D with shape {shape}; give a 2D or 3D "
                         "grey volume (convert or crop it first).")
    fixed, spatial = {}, []
    for i, (ax, n) in enumerate(zip(axes, shape)):
        if ax in "zyx":
            spatial.append(i)
        elif ax == "c":
            if n > 1 and channel is None:
                raise InputError(f"'{where}' has {n} channels (shape {shape}, axes '{axes}') but "
                                 f"grey data is needed; select one with '{where}#channel=0'.")
            index = 0 if channel is None else channel
            if index >= n:
                raise InputError(f"'{where}' has {n} channel(s), so '#channel={channel}' does not "
                                 f"exist; use 0 to {n - 1}.")
            fixed[i] = index
        elif n == 1:
            fixed[i] = 0
        else:
            raise InputError(f"'{where}' has an axis '{ax}' of length {n} (shape {shape}); give a "
                             "single 2D or 3D grey volume, e.g. convert one time point first.")
    if channel not in (None, 0) and not any(axes[i] == "c" for i in fixed):
        raise InputError(f"'{where}' has no channel axis; drop '#channel={channel}'.")
    letters = "".join(axes[i] for i in spatial)
    if letters not in ("yx", "zyx"):
        raise InputError(f"'{where}' has spatial axes '{letters}' (shape {shape}); only z, y, x "
                         "order is supported, so reorder the axes when converting.")
    return fixed, spatial


def _normalise_key(key, shape: tuple):
    """Basic numpy indexing on 3 axes → (reads with positive steps, post-processing per axis)."""
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
    if len(key) > 3:
        raise IndexError(f"too many indices for a 3-D volume: {len(key)} were given")
    key = key + (slice(None),) * (3 - len(key))
    reads, flips = [], []
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n}")
            reads.append(i)
            flips.append(False)
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            count = len(range(start, stop, step))
            if step > 0 or count == 0:
                reads.append(slice(start, start + step * count if count else start, max(step, 1)))
                flips.append(False)
            else:
                last = start + step * (count - 1)
                reads.append(slice(last, start + 1, -step))
                flips.append(True)
        else:
            raise IndexError("a Volume supports basic indexing only (integers, slices, ...); "
                             f"got {type(k).__name__}")
    return reads, flips


class Volume:
    """Lazy, read-only view of a (Z, Y, X) grey volume opened from a spec.

    Attributes: ``path`` (the spec), ``shape`` (Z, Y, X), ``dtype``, ``ndim_source`` (2 for a
    single 2D image or a one-slice folder, else 3), ``voxel_size`` ((z, y, x) nm or None),
    ``pixel_size`` ((y, x) nm or None), ``axes`` ("zyx"), ``channel`` (selected channel or None),
    ``reader`` ("auto", or "fast" for tensorstore on local zarr).
    """

    axes = "zyx"
    ndim = 3

    def __init__(self, spec: str | os.PathLike, reader: str = "auto"):
        self._open(os.fspath(spec), reader)

    def _open(self, spec: str, reader: str = "auto") -> None:
        parsed = parse_spec(spec)
        self.reader = reader
        self.path = spec
        self.channel = parsed.channel
        source: Source = open_source(parsed.path, parsed.key, parsed.options)
        self._source = source
        try:
            array = source.array
            shape = tuple(int(n) for n in array.shape)
            self._fixed, self._spatial = _plan(shape, source.axes, parsed.channel, spec)
            dtype = np.dtype(array.dtype)
            if dtype.kind not in "biuf":
                raise InputError(f"'{spec}' has data type {dtype}, which is not a grey image "
                                 "type; convert it to an integer or float type.")
            spatial_shape = tuple(shape[i] for i in self._spatial)
        except Exception:
            self.close()
            raise
        self._is_2d = len(spatial_shape) == 2
        self.shape = (1,) + spatial_shape if self._is_2d else spatial_shape
        self.dtype = dtype
        one_slice_folder = source.per_slice is not None and self.shape[0] == 1
        self.ndim_source = 2 if self._is_2d or one_slice_folder else 3
        if 0 in self.shape:
            self.close()
            raise InputError(f"'{spec}' is empty (shape {self.shape}); give a volume with data.")
        vs = source.voxel_size
        self.pixel_size = tuple(vs[-2:]) if vs else None
        self.voxel_size = tuple(vs) if vs and len(vs) == 3 else None
        if reader == "fast":
            from .formats.tensorstore_reader import accelerate
            accelerate(self)

    @property
    def reads_in_parallel(self) -> bool:
        """True when this volume is read through tensorstore: thread-safe reads that run
        outside the GIL, so threads of one process can read at once."""
        from .formats.tensorstore_reader import TensorStoreArray
        return isinstance(self._source.array, TensorStoreArray)

    @property
    def output_voxel_size(self) -> tuple | None:
        """(z, y, x) nm for outputs of this volume (predictions, conversions, labels): its
        voxel size, or for a single 2D image its pixel size with a z of 1 (one section, of no
        known thickness), so a 2D image's pixel size is not lost; None when unknown."""
        if self.voxel_size:
            return self.voxel_size
        # a stack of unknown z spacing keeps None: a z of 1 nm would be stored as a fact
        return (1.0, *self.pixel_size) if self.pixel_size and self.ndim_source == 2 else None

    # -- reading -------------------------------------------------------------------------------
    def _array_key(self, reads: list) -> tuple:
        key: list = [None] * (len(self._fixed) + len(self._spatial))
        for axis, index in self._fixed.items():
            key[axis] = index
        for axis, r in zip(self._spatial, reads):
            key[axis] = r
        return tuple(key)

    def __getitem__(self, key) -> np.ndarray:
        reads, flips = _normalise_key(key, self.shape)
        out_shape = tuple(len(range(r.start, r.stop, r.step)) for r in reads
                          if isinstance(r, slice))
        if 0 in out_shape:
            return np.empty(out_shape, dtype=self.dtype)
        with self._reading():
            if self._is_2d:
                data = np.asarray(self._source.array[self._array_key(reads[1:])])
                if isinstance(reads[0], slice):
                    data = data[np.newaxis]
            else:
                data = np.asarray(self._source.array[self._array_key(reads)])
        data = data.astype(self.dtype, copy=False)
        if any(flips):
            kept = [f for f, r in zip(flips, reads) if isinstance(r, slice)]
            data = data[tuple(slice(None, None, -1) if f else slice(None) for f in kept)]
        return data

    def read_many(self, keys: list) -> list[np.ndarray]:
        """``[self[k] for k in keys]``, with the reads issued together where the reader can
        overlap them (tensorstore: one batch of requests, which on 2D training crops costs
        about a fifth less CPU than one request after another)."""
        many = getattr(self._source.array, "read_many", None)
        plans = [_normalise_key(k, self.shape) for k in keys]
        if many is None or self._is_2d or any(any(flips) for _, flips in plans):
            return [self[k] for k in keys]
        with self._reading():
            data = many([self._array_key(reads) for reads, _ in plans])
        return [np.asarray(d).astype(self.dtype, copy=False) for d in data]

    @contextlib.contextmanager
    def _reading(self):
        """Turn a decoder's failure on damaged data (a truncated TIFF strip, a corrupt chunk, a
        short NIfTI) into one sentence that names the file; the file opened, so its header was
        fine and the damage is in the data itself."""
        try:
            yield
        except (MaskTwinsError, MemoryError):
            raise
        except Exception as err:
            detail = " ".join(str(err).split())[:160]
            raise InputError(f"Reading '{self.path}' failed ({type(err).__name__}: {detail}); "
                             "the file looks damaged or incomplete, so re-export or download "
                             "it again.") from err

    def read(self) -> np.ndarray:
        """The whole volume as a (Z, Y, X) array of ``dtype``."""
        return self[:, :, :]

    def raw_slice(self, z: int) -> np.ndarray:
        """Slice ``z`` in its own file's dtype when the source is a folder of slices."""
        stack = self._source.per_slice
        if stack is None:
            return self[z]
        data = stack.raw_slice(z)
        return data if data.ndim == 2 else data[..., self._fixed.get(len(self._spatial), 0)]

    def __array__(self, dtype=None, copy=None):
        data = self.read()
        return data if dtype is None else data.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_source", None) is not None and self._source.close is not None:
            self._source.close()

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # File handles do not cross processes: the unpickled copy reopens the spec there.
        return {"path": self.path, "reader": self.reader}

    def __setstate__(self, state: dict) -> None:
        self._open(state["path"], state.get("reader", "auto"))

    def __repr__(self) -> str:
        vs = f", voxel_size={self.voxel_size}" if self.voxel_size else ""
        return f"Volume('{self.path}', shape={self.shape}, dtype={self.dtype}{vs})"


def open_volume(spec: str | os.PathLike, reader: str = "auto") -> Volume:
    """Open a spec lazily as a (Z, Y, X) :class:`Volume`; nothing is read but headers.

    ``reader="fast"`` reads local zarr arrays through tensorstore (many small random crops);
    the default uses each format's own library.
    """
    if isinstance(spec, Volume):
        return spec
    return Volume(spec, reader)


def _as_zyx(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        return arr[np.newaxis]
    if arr.ndim != 3:
        raise InputError(f"The {what} array has shape {arr.shape}; give a 2D or 3D grey array "
                         "(select one channel first).")
    return arr


def load_image(spec) -> np.ndarray:
    """The whole (Z, Y, X) volume in its stored dtype (a numpy array passes through as 3-D)."""
    if isinstance(spec, np.ndarray):
        return _as_zyx(spec, "image")
    with open_volume(spec) as vol:
        return vol.read()


def binarise_labels(arr: np.ndarray, where: str | None = None) -> np.ndarray:
    """A boolean mask from a label image.

    bool stays as is; values only in {0, 1} → ``> 0``; uint8 data reaching 128 (0/255 or
    anti-aliased masks) and exactly 0/255 in wider integer types → ``> 127``; anything else
    (integers up to 127 beyond 0/1 and other values of wider types, which are instance ids,
    negative values, ids above 255, fractional floats) raises InputError, naming ``where`` (the
    spec) when given.
    """
    arr = np.asarray(arr)
    of = f" of '{where}'" if where else ""
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        raise InputError(f"Label values{of} of type {arr.dtype} cannot be binarised; give a mask "
                         "with values 0/1 or 0/255.")
    lo, hi = arr.min(), arr.max()
    if arr.dtype.kind == "f" and not np.all(np.isfinite([lo, hi])):
        raise InputError(f"The label values{of} contain NaN or infinity and cannot be "
                         "binarised; give a mask with values 0/1 or 0/255.")
    if lo >= 0 and hi <= 1 and (arr.dtype.kind != "f" or np.all((arr == 0) | (arr == 1))):
        return arr > 0
    # 0/255 and anti-aliased 8-bit masks reach 255; other integers above 1 are instance ids,
    # which the 8-bit rule (> 127) would turn into background without a word: small ids in any
    # type, and in types wider than 8 bits anything but exactly 0/255 (ids 1-200 of a uint16
    # volume are no anti-aliased mask)
    wide = arr.dtype.itemsize > 1 and hi <= 255 and not np.isin(arr, (0, 255)).all()
    if arr.dtype.kind in "iu" and lo >= 0 and (2 <= hi <= 127 or wide):
        raise InputError(f"Label values in [{lo}, {hi}] ({arr.dtype}){of} look like instance "
                         "ids, not a mask; give a binary mask (0/1 or 0/255), or compare "
                         "instances (evaluate --instances, convert --instances).")
    if arr.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        return arr > 127
    raise InputError(f"Label values in [{lo}, {hi}] ({arr.dtype}){of} cannot be binarised; give "
                     "a binary mask (0/1 or 0/255), or derive one from instance labels (ids > 0).")


def binarise_region(vol, box: tuple) -> np.ndarray:
    """``binarise_labels`` of ``vol[box]`` (``box``: z index or slice, then y and x slices). A
    folder of slices is binarised slice by slice: one stack may mix 1-bit and 8-bit files, and
    their values together would make the 1-bit slices' foreground (1) read as background."""
    stack = getattr(getattr(vol, "_source", None), "per_slice", None)
    if stack is None:
        return binarise_labels(np.asarray(vol[box]), getattr(vol, "path", None))
    z, plane = box[0], tuple(box[1:])
    if isinstance(z, (int, np.integer)):
        return binarise_labels(vol.raw_slice(int(z))[plane], vol.path)
    return np.stack([binarise_labels(vol.raw_slice(k)[plane], vol.path)
                     for k in range(*z.indices(vol.shape[0]))])


# Distinct values past which a label volume is no mask under binarise_labels' rules (uint8
# has 256): reading stops there, and the rule refuses what it has seen.
_MASK_VALUES = 257
_RULE_SLAB_BYTES = 64 << 20


def mask_threshold(vol) -> float | None:
    """The threshold ``t`` such that ``vol > t`` is :func:`binarise_labels` of the *whole*
    volume, read slab by slab (out of core); None for a folder of slices, which is binarised
    file by file. InputError, as binarise_labels raises it, for a volume that is no mask.

    Block-wise conversion needs this: binarise_labels chooses its rule from the values it is
    given, so a block of an anti-aliased 0/255 mask holding only 0 and 1 would otherwise be
    read as ``> 0`` there and ``> 127`` elsewhere."""
    if getattr(vol._source, "per_slice", None) is not None:
        return None
    nz, ny, nx = vol.shape
    step = max(1, _RULE_SLAB_BYTES // max(1, ny * nx * np.dtype(vol.dtype).itemsize))
    seen = np.zeros(0, vol.dtype)
    for z0 in range(0, nz, step):
        slab = np.asarray(vol[z0:z0 + step])
        if slab.dtype == np.uint8:  # bincount: several times faster than unique on bytes
            values = np.flatnonzero(np.bincount(slab.ravel(), minlength=256)).astype(np.uint8)
        else:
            values = np.unique(slab)
        seen = np.union1d(seen, values)
        if seen.size >= _MASK_VALUES:
            break
    foreground = binarise_labels(seen, vol.path)  # the rule on every value, or its InputError
    background = seen[~foreground]
    return float(background.max()) if background.size else -np.inf


def load_labels(spec) -> np.ndarray:
    """A boolean (Z, Y, X) mask; a folder of slices is binarised slice by slice, since one
    stack may mix 1-bit, 0/1 and anti-aliased 8-bit files (the VNC masks mix 1-bit and 8-bit)."""
    if isinstance(spec, np.ndarray):
        return binarise_labels(_as_zyx(spec, "label"))
    with open_volume(spec) as vol:
        if vol._source.per_slice is None:
            return binarise_labels(vol.read(), vol.path)
        out = np.empty(vol.shape, dtype=bool)
        for z in range(vol.shape[0]):
            out[z] = _file_mask(vol, z)
        return out


def _file_mask(vol, z: int) -> np.ndarray:
    """Section ``z`` of a folder of slices, binarised by itself (see :func:`load_labels`)."""
    try:
        return binarise_labels(vol.raw_slice(z))
    except InputError:
        name = vol._source.per_slice.files[z].name
        raise InputError(f"Slice '{name}' of '{vol.path}' has values that cannot be "
                         "binarised; give binary masks (0/1 or 0/255).") from None


class MaskSections:
    """An open label volume read as a boolean mask one z-section at a time: what
    :func:`load_labels` returns, without holding the volume in memory (a MitoEM-size ground
    truth is 8 GB as bool). The rule comes from the whole volume (:func:`mask_threshold`)."""

    def __init__(self, vol):
        self.vol, self.shape = vol, tuple(vol.shape)
        self._threshold = mask_threshold(vol)

    def __getitem__(self, z: int) -> np.ndarray:
        if self._threshold is None:
            return _file_mask(self.vol, z)
        return np.asarray(self.vol[z:z + 1])[0] > self._threshold
