"""MRC / CCP4 files (``.mrc``, ``.rec``, ``.map``, ``.mrcs``, ``.st``) through mrcfile.

The data is memory-mapped, so a crop reads only its bytes. Axes are (z, y, x) as mrcfile gives
them; voxel size comes from the header (Å, converted to nm) when it is set.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from . import Source


def open_mrc(path: Path) -> Source:
    import mrcfile
    try:
        mrc = mrcfile.mmap(str(path), mode="r", permissive=True)
        data = mrc.data
        if data is None:
            raise ValueError("no data block")
    except Exception as err:
        raise InputError(f"Cannot read MRC '{path}' ({type(err).__name__}: {err}); check that "
                         "the file is complete.") from None
    vs = mrc.voxel_size
    xyz = [float(vs.x), float(vs.y), float(vs.z)]
    voxel = None
    if all(v > 0 for v in xyz[:2]):
        zyx = [v / 10.0 for v in xyz[::-1]]  # Å → nm
        voxel = tuple(zyx) if data.ndim == 3 and xyz[2] > 0 else tuple(zyx[1:])
    axes = "zyx" if data.ndim == 3 else "yx" if data.ndim == 2 else None
    return Source(data, axes=axes, voxel_size=voxel, close=mrc.close)
