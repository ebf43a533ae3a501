"""Convert any volume spec into a chunked, compressed OME-Zarr image, out of core and atomically.

``convert_volume(src, "out.ome.zarr")`` copies shard-aligned blocks (bounded memory, whatever
the input size), writes NGFF 0.5 metadata with the voxel size (from the input, or given), an
optional pyramid (``levels``), optional label images under ``labels/<name>``, and the volume's
intensity statistics (``attrs["masktwins"]["intensity"]``, sampled while copying, so the
sampler never recomputes them). The result appears only when complete: it is written to a hidden
sibling folder and renamed into place; an existing output is kept unless ``overwrite=True``. A
stopped conversion continues with ``resume=True`` and gives the bytes an uninterrupted one gives
(:mod:`.partial`).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError, job_stopped
from ..inference.outputs import check_replaceable
from .normalize import compute_stats
from .ome_zarr import copy_blocks, create_level, downsample_level, multiscales_meta
from .partial import PartialOutput, describe_inputs
from .paths import make_parents, remove_empty
from .spec import parse_spec
from .volumes import Volume, binarise_region, mask_threshold, open_volume

DEFAULT_CHUNKS = (4, 128, 128)  # cheap 2D and 3D random crops (see tools/bench_loader.py)
_STATS_SAMPLES = 4_000_000
# A label image is stored as the zarr group labels/<name>: no '/', and not '.' or '..'.
_LABEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_output(out: Path, overwrite: bool, sources: list[Volume]) -> None:
    if not out.name.endswith(".zarr"):
        raise InputError(f"Output '{out}' must be a folder name ending in .zarr, e.g. "
                         "'volume.ome.zarr'.")
    for vol in sources:
        _check_apart(out, vol.path)
    if os.path.lexists(out) and not overwrite:
        raise InputError(f"'{out}' already exists; pass --overwrite to replace it or choose "
                         "another output.")
    if os.path.lexists(out):
        check_replaceable(out)  # --overwrite replaces a zarr store, never a user's other data


def _check_apart(out: Path, spec: str) -> None:
    """The output must neither be, hold nor lie inside an input (compared by the input's path,
    without its ':key' or '#options')."""
    src, dst = parse_spec(spec).path.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise InputError(f"Output '{out}' would replace its own input '{spec}'; choose "
                         "another output.")
    if src in dst.parents:
        raise InputError(f"Output '{out}' lies inside its input '{spec}'; choose an output "
                         "outside it.")


def check_label_names(names) -> None:
    """Label names become folder names under ``labels/``: plain names only."""
    for name in names:
        if not _LABEL_NAME.fullmatch(str(name)) or name in (".", ".."):
            raise InputError(f"Label name '{name}' does not fit: use letters, digits, '_', '-' "
                             "or '.' (not '.' or '..' alone), e.g. --labels mito=labels.tif.")


def check_voxel_size(values) -> tuple | None:
    """Three positive, finite numbers (z, y, x nm), or None."""
    if values is None:
        return None
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        floats = ()
    if len(floats) != 3 or not all(math.isfinite(v) and v > 0 for v in floats):
        raise InputError(f"Voxel size {values} does not fit: give three positive, finite "
                         "numbers z,y,x in nm, e.g. 50,4.6,4.6.")
    return floats


class _StatsSampler:
    """Evenly strided voxels collected from each block while it is copied; each block's part is
    also kept in the partial output, so a resumed run samples exactly what an uninterrupted one
    does."""

    def __init__(self, shape: tuple, partial: PartialOutput):
        stride = max(1, math.ceil(math.prod(shape) / _STATS_SAMPLES))
        self.step = max(1, round(stride ** (1 / 3)))
        self.partial = partial
        self.parts: dict = {}

    def __call__(self, block, data) -> None:
        offsets = [(-s.start) % self.step for s in block]
        part = data[offsets[0]::self.step, offsets[1]::self.step, offsets[2]::self.step]
        corner = tuple(s.start for s in block)
        self.parts[corner] = np.asarray(part, dtype=np.float32).ravel()
        self.partial.save_sample(corner, self.parts[corner])

    def resumed(self, corners) -> None:
        for corner in corners:
            self.parts[corner] = self.partial.load_sample(corner)

    def stats(self, name: str):
        parts = [self.parts[c] for c in sorted(self.parts)]  # block order, as copied
        sample = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return compute_stats(sample[np.newaxis, np.newaxis], name=name)


def _label_reader(vol: Volume, rule: str):
    """Block reader of a label volume as 0/1: ids > 0 ("nonzero"), or the binarisation rule of
    the whole volume, found in one pass before anything is written (a folder of slices: file
    by file, as load_labels does)."""
    if rule == "nonzero":
        return lambda b: (vol[b] > 0).astype(np.uint8)
    threshold = mask_threshold(vol)
    if threshold is None:
        return lambda b: binarise_region(vol, b).astype(np.uint8)
    return lambda b: (np.asarray(vol[b]) > threshold).astype(np.uint8)


def _progress(total: int, what: str, show: bool):
    from tqdm.auto import tqdm
    bar = tqdm(total=total, unit="vox", unit_scale=True, desc=what, disable=None if show else True,
               leave=False)
    return bar


def _level(group, path: str, shape, dtype, chunks, is_label, resumed: bool):
    """The array ``path`` of ``group``: created, or the one a resumed run made before."""
    if resumed and path in group:
        return group[path]
    return create_level(group, path, shape, dtype, chunks, is_label)


def _write_image(group, vol_or_read, shape, dtype, chunks, levels, voxel_size, name,
                 is_label, show, partial: PartialOutput, resumed: bool,
                 sampler: _StatsSampler | None = None) -> None:
    bar = _progress(math.prod(shape), name, show)
    prefix = group.path + "/" if group.path else ""

    def ledger(path):
        key = prefix + path
        return dict(done=partial.done(key) if resumed else frozenset(),
                    on_done=lambda corner: partial.mark(key, corner))
    try:
        level0 = _level(group, "0", shape, dtype, chunks, is_label, resumed)
        read = vol_or_read if callable(vol_or_read) else (lambda b: vol_or_read[b])
        progress = ledger("0")
        if sampler is not None:
            sampler.resumed(progress["done"])
        copy_blocks(read, level0, bar.update, sampler, **progress)
        prev = level0
        for k in range(1, levels):
            small = tuple([prev.shape[0]] + [max(1, -(-n // 2)) for n in prev.shape[1:]])
            level = _level(group, str(k), small, dtype, chunks, is_label, resumed)
            downsample_level(prev, level, is_label, bar.update, **ledger(str(k)))
            prev = level
    finally:
        bar.close()
    group.attrs["ome"] = {"version": "0.5",
                          "multiscales": [multiscales_meta(name, levels, voxel_size)]}


def convert_volume(src, out, *, chunks: tuple = DEFAULT_CHUNKS, overwrite: bool = False,
                   levels: int = 1, voxel_size: tuple | None = None,
                   labels: dict | None = None, label_rule: str = "binarise",
                   show_progress: bool = True, resume: bool = False) -> Path:
    """Write ``src`` (a spec or Volume) as an OME-Zarr image at ``out`` and return its path.

    ``labels`` maps a label name to a spec of the same shape, written as a uint8 0/1 label image
    (``label_rule`` "binarise": :func:`binarise_labels`; "nonzero": instance ids > 0).
    ``voxel_size`` (z, y, x nm) overrides the input's. ``chunks`` are the inner chunks (z, y, x).
    ``resume`` continues the unfinished conversion a stopped run left; ``overwrite`` also
    replaces one (see :class:`.partial.PartialOutput`).
    """
    out = Path(out)
    check_label_names(labels or {})
    voxel_size = check_voxel_size(voxel_size)
    if not 1 <= int(levels) <= 12:
        raise InputError(f"--levels {levels} is out of range; give 1 to 12 resolution levels.")
    vol = open_volume(src)
    label_vols = {}
    try:
        for name, spec in (labels or {}).items():
            label_vols[name] = open_volume(spec)
        _check_output(out, overwrite, [vol, *label_vols.values()])
        for lab in label_vols.values():
            if lab.shape != vol.shape:
                raise InputError(f"Labels '{lab.path}' have shape {lab.shape} but the image has "
                                 f"{vol.shape}; give labels of the same shape.")
        created = make_parents(out)
        partial = PartialOutput(out)
        run = {"inputs": describe_inputs({"image": vol.path, **{
                   f"labels/{name}": lab.path for name, lab in label_vols.items()}}),
               "shape": list(vol.shape), "dtype": str(vol.dtype), "chunks": list(chunks),
               "levels": int(levels), "voxel_size": voxel_size, "label_rule": label_rule}
        try:
            resumed = partial.open(run, resume, overwrite)
        except BaseException:
            remove_empty(created)
            raise
        try:
            _write(vol, label_vols, partial, resumed, chunks, levels,
                   voxel_size or vol.output_voxel_size, label_rule, show_progress)
        except OSError as err:  # disk full, permissions, a vanished input: kept for --resume
            raise job_stopped(err, out, (partial.path,)) from None
        except Exception:
            partial.discard()  # a conversion that failed on its data: nothing half-written
            remove_empty(created)
            raise
        finally:
            partial.close()  # a stopped run (Ctrl-C) keeps its partial output for --resume
    finally:
        vol.close()
        for lab in label_vols.values():
            lab.close()
    return out


def _write(vol: Volume, label_vols: dict, partial: PartialOutput, resumed: bool, chunks, levels,
           voxel_size, label_rule, show_progress) -> None:
    """Write the image and its labels into the partial output, then rename it into place."""
    import zarr
    # every label volume's rule first: one that is no mask is refused before the image is copied
    readers = {name: _label_reader(lab, label_rule) for name, lab in label_vols.items()}
    root = zarr.open_group(str(partial.path), mode="a", zarr_format=3)  # "w" would empty it
    sampler = _StatsSampler(vol.shape, partial)
    _write_image(root, vol, vol.shape, vol.dtype, chunks, levels, voxel_size,
                 partial.out.name.split(".")[0], False, show_progress, partial, resumed,
                 sampler)
    try:
        intensity = sampler.stats(str(vol.path)).to_dict()
    except InputError:
        # a constant volume, or NaN in the sample, cannot be normalised: that is for training
        # and prediction to refuse (they compute the statistics themselves when none are
        # stored), never a reason to throw away a finished conversion
        intensity = None
    extra = {"source": str(vol.path), "intensity": intensity}
    if label_vols:
        group = root.require_group("labels")
        for name in label_vols:
            _write_image(group.require_group(name), readers[name], vol.shape,
                         np.uint8, chunks, levels, voxel_size, name, True, show_progress,
                         partial, resumed)
            group[name].attrs["ome"] = {**group[name].attrs["ome"],
                                        "image-label": {"source": {"image": "../../"}}}
        group.attrs["ome"] = {"version": "0.5", "labels": list(label_vols)}
    attrs = dict(root.attrs)
    attrs["masktwins"] = extra
    root.attrs.update(attrs)
    partial.finish()
