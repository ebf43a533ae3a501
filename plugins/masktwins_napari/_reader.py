"""Open the toolkit's zarr outputs and datasets in napari (npe2 reader).

* an OME-Zarr image (``masktwins-bio convert`` / ``download``): a multiscale image layer over
  all resolution levels and one labels layer per ``labels/<name>`` image;
* a plain zarr array, e.g. the probability written by ``masktwins-bio predict``: an image layer
  (probabilities get a [0, 1] colour range);
* a zarr group of plain arrays: one layer per array (integer/bool arrays named like labels or
  masks become labels layers).

Arrays stay lazy (read through :func:`masktwins_bio.data.volumes.open_volume`, as (Z, Y, X)) and
the voxel size in nm becomes the layer scale, so images, labels and predictions overlay in
physical units. Anything else returns None, so napari can try another reader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from masktwins_bio.errors import MaskTwinsError

LABEL_HINTS = ("label", "mask", "seg", "gt", "mito")


def _is_zarr(path: Path) -> bool:
    if path.name.rstrip("/").endswith(".zarr"):
        return path.exists()
    return path.is_dir() and any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))


def get_reader(path):
    """napari ``get_reader`` hook: a reader function for a toolkit zarr, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path))
    if not _is_zarr(p):
        return None
    try:
        _layers_of(p)
    except (MaskTwinsError, OSError, KeyError, ValueError, TypeError):
        return None
    return read_zarr


class LazyLayerArray:
    """A :class:`~masktwins_bio.data.volumes.Volume` with the array attributes napari reads
    (``size``, ``ndim``); indexing reads only the voxels asked for."""

    ndim = 3

    def __init__(self, volume):
        self.volume = volume
        self.shape = tuple(volume.shape)
        self.dtype = np.dtype(volume.dtype)
        self.size = int(np.prod(self.shape))
        self.voxel_size, self.pixel_size = volume.voxel_size, volume.pixel_size
        self.output_voxel_size = volume.output_voxel_size

    def __getitem__(self, key):
        return self.volume[key]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.volume.read(), dtype=dtype)

    def __len__(self) -> int:
        return self.shape[0]


def _open(spec: str) -> LazyLayerArray:
    from masktwins_bio.data.volumes import open_volume

    return LazyLayerArray(open_volume(spec))


def _scale_meta(vol) -> dict:
    vs = vol.output_voxel_size
    if not vs:
        return {}
    return {"scale": tuple(float(v) for v in vs), "units": ("nm", "nm", "nm")}


def _open_levels(spec: str, n_levels: int) -> list:
    return [_open(f"{spec}#level={k}") for k in range(n_levels)]


def _n_levels(group) -> int:
    from masktwins_bio.data.formats.zarr_store import multiscales

    ms = multiscales(group)
    return len(ms[0].get("datasets", [])) if ms else 0


def _image_or_labels(name: str, vol) -> str:
    integer = np.dtype(vol.dtype).kind in "biu"
    return "labels" if integer and any(h in name.lower() for h in LABEL_HINTS) else "image"


def _probability_style(array_attrs: dict) -> dict:
    info = array_attrs.get("masktwins_bio") or {}
    if info.get("kind") == "foreground_probability":
        return {"colormap": "magma", "contrast_limits": (0.0, 1.0), "blending": "additive",
                "metadata": {"masktwins_bio": dict(info)}}
    return {}


def _layers_of(path: Path) -> list[tuple]:
    import zarr

    from masktwins_bio.data.formats.zarr_store import array_keys

    node = zarr.open(store=str(path), mode="r")
    stem = path.name.split(".")[0]
    if isinstance(node, zarr.Array):
        vol = _open(str(path))
        meta = {"name": stem, **_scale_meta(vol), **_probability_style(dict(node.attrs))}
        return [(vol, meta, _image_or_labels(stem, vol))]
    levels = _n_levels(node)
    if levels:
        vols = _open_levels(str(path), levels)
        meta = {"name": stem, **_scale_meta(vols[0])}
        intensity = (dict(node.attrs).get("masktwins") or {}).get("intensity")
        if intensity:
            meta["metadata"] = {"masktwins_intensity": dict(intensity)}
        layers = [(vols if levels > 1 else vols[0], meta, "image")]
        if "labels" in node:
            for name in sorted(k for k, v in node["labels"].groups()):
                spec = f"{path}:labels/{name}"
                n = _n_levels(node["labels"][name]) or 1
                lvols = _open_levels(spec, n) if n > 1 else [_open(spec)]
                layers.append((lvols if n > 1 else lvols[0],
                               {"name": f"{stem} {name}", **_scale_meta(lvols[0])}, "labels"))
        return layers
    keys = array_keys(node, limit=50)
    if not keys:
        raise ValueError(f"{path} holds no arrays")
    layers = []
    for key in keys:
        vol = _open(f"{path}:{key}")
        arr_attrs = dict(node[key].attrs)
        meta = {"name": f"{stem} {key}", **_scale_meta(vol), **_probability_style(arr_attrs)}
        layers.append((vol, meta, _image_or_labels(key, vol)))
    return layers


def read_zarr(path) -> list[tuple]:
    """napari reader function: ``[(data, kwargs, layer_type), ...]``."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return _layers_of(Path(str(path)))
