"""Convert any volume spec into a chunked, compressed OME-Zarr image, out of core and atomically.

``convert_volume(src, "out.ome.zarr")`` copies shard-aligned blocks (bounded memory, whatever
the input size), writes NGFF 0.5 metadata with the voxel size (from the input, or given), an
optional pyramid (``levels``), optional label images under ``labels/<name>``, and the volume's
intensity statistics (``attrs["masktwins"]["intensity"]``, sampled while copying, so the
sampler never recomputes them). The result appears only when complete: it is written to a hidden
sibling folder and renamed into place; an existing output is kept unless ``overwrite=True``.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from .normalize import compute_stats
from .ome_zarr import copy_blocks, create_level, downsample_level, multiscales_meta
from .volumes import Volume, binarise_labels, open_volume

DEFAULT_CHUNKS = (4, 128, 128)  # cheap 2D and 3D random crops (see tools/bench_loader.py)
_STATS_SAMPLES = 4_000_000


def _check_output(out: Path, overwrite: bool, sources: list[Volume]) -> None:
    if not out.name.endswith(".zarr"):
        raise InputError(f"Output '{out}' must be a folder name ending in .zarr, e.g. "
                         "'volume.ome.zarr'.")
    if out.exists() and not overwrite:
        raise InputError(f"'{out}' already exists; pass --overwrite to replace it or choose "
                         "another output.")
    for vol in sources:
        src = Path(vol.path.split("#")[0]).resolve()
        if out.resolve() == src or out.resolve() in src.parents:
            raise InputError(f"Output '{out}' would replace its own input '{vol.path}'; choose "
                             "another output.")


class _StatsSampler:
    """Evenly strided voxels collected from each block while it is copied."""

    def __init__(self, shape: tuple):
        stride = max(1, math.ceil(math.prod(shape) / _STATS_SAMPLES))
        self.step = max(1, round(stride ** (1 / 3)))
        self.parts: list = []

    def __call__(self, block, data) -> None:
        offsets = [(-s.start) % self.step for s in block]
        part = data[offsets[0]::self.step, offsets[1]::self.step, offsets[2]::self.step]
        self.parts.append(np.asarray(part, dtype=np.float32).ravel())

    def stats(self):
        sample = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        return compute_stats(sample[np.newaxis, np.newaxis])


def _label_reader(vol: Volume, rule: str):
    def read(b):
        data = vol[b]
        if rule == "nonzero":
            return (data > 0).astype(np.uint8)
        if vol._source.per_slice is not None:  # a folder may mix 1-bit and 8-bit files
            return np.stack([binarise_labels(vol.raw_slice(z)[b[1], b[2]])
                             for z in range(b[0].start, b[0].stop)]).astype(np.uint8)
        return binarise_labels(data).astype(np.uint8)
    return read


def _progress(total: int, what: str, show: bool):
    from tqdm.auto import tqdm
    bar = tqdm(total=total, unit="vox", unit_scale=True, desc=what, disable=None if show else True,
               leave=False)
    return bar


def _write_image(group, vol_or_read, shape, dtype, chunks, levels, voxel_size, name,
                 is_label, show, on_block=None) -> None:
    bar = _progress(math.prod(shape), name, show)
    try:
        level0 = create_level(group, "0", shape, dtype, chunks, is_label)
        read = vol_or_read if callable(vol_or_read) else (lambda b: vol_or_read[b])
        copy_blocks(read, level0, bar.update, on_block)
        prev = level0
        for k in range(1, levels):
            small = tuple([prev.shape[0]] + [max(1, -(-n // 2)) for n in prev.shape[1:]])
            level = create_level(group, str(k), small, dtype, chunks, is_label)
            downsample_level(prev, level, is_label, bar.update)
            prev = level
    finally:
        bar.close()
    group.attrs["ome"] = {"version": "0.5",
                          "multiscales": [multiscales_meta(name, levels, voxel_size)]}


def convert_volume(src, out, *, chunks: tuple = DEFAULT_CHUNKS, overwrite: bool = False,
                   levels: int = 1, voxel_size: tuple | None = None,
                   labels: dict | None = None, label_rule: str = "binarise",
                   show_progress: bool = True) -> Path:
    """Write ``src`` (a spec or Volume) as an OME-Zarr image at ``out`` and return its path.

    ``labels`` maps a label name to a spec of the same shape, written as a uint8 0/1 label image
    (``label_rule`` "binarise": :func:`binarise_labels`; "nonzero": instance ids > 0).
    ``voxel_size`` (z, y, x nm) overrides the input's. ``chunks`` are the inner chunks (z, y, x).
    """
    import zarr
    out = Path(out)
    vol = open_volume(src)
    label_vols = {name: open_volume(spec) for name, spec in (labels or {}).items()}
    _check_output(out, overwrite, [vol, *label_vols.values()])
    if not 1 <= int(levels) <= 12:
        raise InputError(f"--levels {levels} is out of range; give 1 to 12 resolution levels.")
    for name, lab in label_vols.items():
        if lab.shape != vol.shape:
            raise InputError(f"Labels '{lab.path}' have shape {lab.shape} but the image has "
                             f"{vol.shape}; give labels of the same shape.")
    voxel_size = tuple(voxel_size) if voxel_size else vol.voxel_size
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        sampler = _StatsSampler(vol.shape)
        _write_image(root, vol, vol.shape, vol.dtype, chunks, levels, voxel_size,
                     out.name.split(".")[0], False, show_progress, on_block=sampler)
        extra = {"source": str(vol.path), "intensity": sampler.stats().to_dict()}
        if label_vols:
            group = root.create_group("labels")
            for name, lab in label_vols.items():
                _write_image(group.create_group(name), _label_reader(lab, label_rule), vol.shape,
                             np.uint8, chunks, levels, voxel_size, name, True, show_progress)
                group[name].attrs["image-label"] = {"version": "0.5",
                                                    "source": {"image": "../../"}}
            group.attrs["ome"] = {"version": "0.5", "labels": list(label_vols)}
        attrs = dict(root.attrs)
        attrs["masktwins"] = extra
        root.attrs.update(attrs)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        vol.close()
        for lab in label_vols.values():
            lab.close()
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old output is removed only after the swap."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
