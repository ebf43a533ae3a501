"""HDF5 datasets: ``file.h5:group/dataset`` (the key may be left out when there is one dataset).

Reads go through h5py, chunk by chunk. Voxel size is taken from the common attributes
``resolution`` (nm, z/y/x, CREMI), ``element_size_um`` (µm, z/y/x, ilastik/Fiji) or
``voxel_size`` (nm), when present.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from . import Source, key_list
from .units import to_nm, voxel_tuple

_VOXEL_ATTRS = (("resolution", "nm"), ("voxel_size", "nm"), ("element_size_um", "um"))


def dataset_keys(h5file, limit: int | None = None) -> list[str]:
    """Paths of the datasets in a file, sorted, at most ``limit`` (None: all)."""
    import h5py
    keys: list[str] = []
    h5file.visititems(lambda name, obj: keys.append(name)
                      if isinstance(obj, h5py.Dataset) else None)
    return sorted(keys)[:limit]


def _voxel_size(dataset) -> tuple | None:
    for name, unit in _VOXEL_ATTRS:
        if name in dataset.attrs:
            try:
                values = [float(v) for v in dataset.attrs[name]]
            except (TypeError, ValueError):
                continue
            n = min(dataset.ndim, 3)
            if len(values) >= 2:
                return voxel_tuple([to_nm(v, unit) for v in values[-n:]])
    return None


def open_hdf5(path: Path, key: str) -> Source:
    import h5py
    try:
        h5file = h5py.File(path, "r")
    except Exception as err:
        raise InputError(f"Cannot open '{path}' as HDF5 ({type(err).__name__}); check that the "
                         "file is complete and really HDF5.") from None
    try:
        if not key:
            keys = dataset_keys(h5file)
            if len(keys) != 1:
                raise InputError(f"'{path}' holds {len(keys)} datasets; add ':KEY' to pick one "
                                 f"(datasets present: {key_list(keys)}).")
            key = keys[0]
        node = h5file.get(key)
        if not isinstance(node, h5py.Dataset):
            raise InputError(f"'{path}' has no dataset '{key}'; datasets present: "
                             f"{key_list(dataset_keys(h5file))}.")
        axes = None
        if node.ndim == 3 and node.shape[-1] > 4:
            axes = "zyx"  # a 3-D HDF5 volume is almost always z, y, x; never guess RGB here
        return Source(node, axes=axes, voxel_size=_voxel_size(node), close=h5file.close)
    except Exception:
        h5file.close()
        raise
