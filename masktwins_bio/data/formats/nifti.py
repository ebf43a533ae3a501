"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel.

NIfTI stores voxels as (x, y, z[, t, c]); the volume is served with axes reversed, (z, y, x),
in stored voxel order (the affine's orientation is not applied). Crops read through nibabel's
array proxy; a ``.nii.gz`` must still be decompressed up to the crop, so prefer ``convert``
for large gzipped files. Voxel size comes from the header zooms and spatial unit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import InputError
from . import Source
from .units import to_nm, voxel_tuple


class _Reversed:
    """The proxy with every axis reversed: key (z, y, x) reads dataobj[x, y, z]."""

    def __init__(self, dataobj, dtype):
        self._obj = dataobj
        self.shape = tuple(dataobj.shape)[::-1]
        self.dtype = dtype

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        data = np.asarray(self._obj[tuple(key)[::-1]])
        return data.transpose(tuple(range(data.ndim))[::-1])


def open_nifti(path: Path) -> Source:
    import nibabel
    try:
        img = nibabel.load(str(path))
        proxy = img.dataobj
        probe = np.asarray(proxy[(slice(0, 1),) * len(proxy.shape)])
    except Exception as err:
        raise InputError(f"Cannot read NIfTI '{path}' ({type(err).__name__}); check that the "
                         "file is complete.") from None
    ndim = len(proxy.shape)
    unit = img.header.get_xyzt_units()[0]
    zooms = [to_nm(z, unit) for z in img.header.get_zooms()[:min(ndim, 3)]]
    voxel = voxel_tuple(zooms[::-1]) if len(zooms) >= 2 else None
    axes = "ctzyx"[-ndim:] if ndim <= 5 else None
    return Source(_Reversed(proxy, probe.dtype), axes=axes, voxel_size=voxel)
