"""Zarr arrays and groups (v2 and v3 stores, through the zarr v3 API), including OME-Zarr.

``data.zarr`` opens an array store directly; a group needs ``data.zarr:path/to/array`` unless it
holds exactly one array. An OME-Zarr image (a group with ``multiscales`` metadata, NGFF 0.4 or
0.5) opens at its full-resolution level; ``image.ome.zarr#level=2`` or ``image.ome.zarr:2``
selects a coarser one. Voxel size (nm) and axis names come from the multiscale metadata.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from . import Source, key_list
from .units import to_nm, voxel_tuple


def multiscales(group) -> list | None:
    """The NGFF ``multiscales`` list of a group (0.4: in attrs; 0.5: under attrs['ome'])."""
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def array_keys(group, limit: int | None = 20) -> list[str]:
    """Paths of the arrays inside a group, sorted, at most ``limit`` (None: all)."""
    import zarr
    keys = [name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
    return sorted(keys)[:limit]


def _scale(transforms: list | None) -> list | None:
    for t in transforms or []:
        if t.get("type") == "scale":
            return list(t["scale"])
    return None


def _ome_meta(ms: dict, dataset_path: str, ndim: int) -> tuple[str | None, tuple | None]:
    """Axis letters and spatial voxel size (nm, z/y/x order) of one multiscale level."""
    axes_meta = ms.get("axes")
    if not axes_meta:  # NGFF 0.1-0.3: no axes, implicitly tczyx for 5-D
        return ("tczyx"[-ndim:] if ndim <= 5 else None), None
    names = [a if isinstance(a, str) else a.get("name", "?") for a in axes_meta]
    types = [None if isinstance(a, str) else a.get("type") for a in axes_meta]
    units = [None if isinstance(a, str) else a.get("unit") for a in axes_meta]
    letters = "".join("c" if t == "channel" else "t" if t == "time" else str(n).lower()[:1]
                      for n, t in zip(names, types))
    dataset = next((d for d in ms.get("datasets", []) if d.get("path") == dataset_path), None)
    scale = _scale(dataset.get("coordinateTransformations") if dataset else None)
    outer = _scale(ms.get("coordinateTransformations"))
    if scale is None or len(scale) != len(letters):
        return letters, None
    if outer is not None and len(outer) == len(scale):
        scale = [a * b for a, b in zip(scale, outer)]
    sizes = {ch: to_nm(s, u) for ch, s, u in zip(letters, scale, units) if ch in "zyx"}
    spatial = [ch for ch in letters if ch in "zyx"]
    return letters, voxel_tuple([sizes[ch] for ch in spatial])


def _from_multiscale(group, ms_list, level, where: str):
    ms = ms_list[0]
    datasets = [d["path"] for d in ms.get("datasets", [])]
    level = 0 if level is None else level
    if level >= len(datasets):
        raise InputError(f"'{where}' has {len(datasets)} resolution levels (0-"
                         f"{len(datasets) - 1}); choose one of those with '#level=N'.")
    return group[datasets[level]], ms, datasets[level]


def open_zarr(path: Path, key: str, options: dict) -> Source:
    import zarr
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as err:
        raise InputError(f"Cannot open '{path}' as zarr ({type(err).__name__}); check that it is "
                         "a zarr v2/v3 array or group.") from None
    where = f"{path}:{key}" if key else str(path)
    level = options.get("level")
    if isinstance(node, zarr.Array):
        if key:
            raise InputError(f"'{path}' is a single zarr array, so it has no key '{key}'; give "
                             "the path without ':key'.")
        if level is not None:
            raise InputError(f"'{where}' is a plain array, not an OME-Zarr image; drop '#level'.")
        level_of = _image_level_meta(path, node)  # img.ome.zarr/0 given as a path
        if level_of is not None:
            return Source(node, axes=level_of[0], voxel_size=level_of[1])
        return Source(node, axes=None, voxel_size=_toolkit_voxel_size(node))
    group = node
    if key:
        try:
            node = group[key]
        except KeyError:
            raise InputError(f"'{path}' has no array '{key}'; arrays present: "
                             f"{key_list(array_keys(group, None))}.") from None
    if isinstance(node, zarr.Group):
        ms_list = multiscales(node)
        if ms_list:
            array, ms, dpath = _from_multiscale(node, ms_list, level, where)
            axes, voxel = _ome_meta(ms, dpath, array.ndim)
            return Source(array, axes=axes, voxel_size=voxel)
        keys = array_keys(node, None)
        if not keys:
            raise InputError(f"'{where}' is a zarr group that holds no arrays; give a zarr array "
                             "or a group that holds one.")
        if len(keys) != 1:
            raise InputError(f"'{where}' is a zarr group; add ':KEY' to pick an array "
                             f"(arrays present: {key_list(keys)}).")
        node, key = node[keys[0]], f"{key}/{keys[0]}".strip("/")
    if level is not None:
        raise InputError(f"'{where}' is a plain array, not an OME-Zarr image; drop '#level'.")
    # An array that is one level of an OME-Zarr image still gets the image's metadata.
    parent_path, _, name = key.rpartition("/")
    parent = group[parent_path] if parent_path else group
    ms_list = multiscales(parent)
    if ms_list and name in [d.get("path") for d in ms_list[0].get("datasets", [])]:
        axes, voxel = _ome_meta(ms_list[0], name, node.ndim)
        return Source(node, axes=axes, voxel_size=voxel)
    return Source(node, axes=None, voxel_size=_toolkit_voxel_size(node))


def _image_level_meta(path: Path, array):
    """(axes, voxel size) of an array opened by its own path that is one level of the OME-Zarr
    image in the folder above (``img.ome.zarr/0``), as ``img.ome.zarr:0`` gets them; else None."""
    import zarr
    try:
        parent = zarr.open_group(store=str(Path(path).parent), mode="r")
    except Exception:  # no zarr group above: a plain array
        return None
    ms_list = multiscales(parent)
    name = Path(path).name
    if not ms_list or name not in [d.get("path") for d in ms_list[0].get("datasets", [])]:
        return None
    return _ome_meta(ms_list[0], name, array.ndim)


def _toolkit_voxel_size(array) -> tuple | None:
    """The voxel size (nm) the toolkit stores on a plain zarr array it wrote (a ``predict``
    output named ``*.zarr``: ``masktwins_bio.voxel_size_nm``), so ``segment``, ``evaluate`` and
    napari keep it; None for other arrays or a size that does not fit the array."""
    try:
        meta = dict(array.attrs).get("masktwins_bio") or {}
        vs = tuple(float(v) for v in meta.get("voxel_size_nm") or ())
    except (TypeError, ValueError, AttributeError):
        return None
    return vs if len(vs) in (2, 3) and len(vs) <= array.ndim and all(v > 0 for v in vs) \
        else None
