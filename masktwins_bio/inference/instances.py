"""Instance labels from probabilities, out of core: block-wise labelling merged by union-find.

``label_volume`` (connected components of ``p > threshold``) works in three passes over blocks:

1. label every block on its own (``skimage.measure.label``) and store the local labels in the
   output; block ``b``'s label ``l`` is provisional label ``offset[b] + l``;
2. for every block face, read the two voxel planes that touch across it (with a one-voxel rim, so
   edge and corner neighbours count for connectivity 2 and 3) and union the provisional labels
   that touch;
3. give every union-find root a consecutive id in order of its smallest provisional label (and
   drop components under ``min_size`` voxels), then rewrite each block through a lookup table.

The result equals ``skimage.measure.label(p > threshold, connectivity=c)`` up to the numbering
of the components. ``seeded_watershed`` grows the connected components of ``p > seed_threshold``
through ``p > threshold`` by a watershed on ``-p`` computed per block with a halo; its ids are
global seed ids, so blocks agree without merging (a voxel farther than ``halo`` from its seed
inside the mask may stay background).

Both write into a hidden ``.OUTPUT.partial`` (:class:`..data.partial.PartialOutput`) that is
renamed into place when complete. Pass 1's local labels live in a work array of their own, so
every pass writes each block from data that no pass changes: a run stopped at any point
(killed, Ctrl-C) continues with ``resume`` from its ledger of finished blocks and writes the
bytes of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import math
import re
from pathlib import Path

import numpy as np

from ..data.partial import PartialOutput
from ..data.paths import remove_path, writer_gone
from ..errors import InputError, job_stopped
from .outputs import check_new_output, check_parent

DEFAULT_BLOCK = (64, 256, 256)


class UnionFind:
    """Disjoint sets over 0..n-1 whose root is always the smallest member."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        """Root of every element (vectorised full path compression)."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q


def _blocks(shape, block):
    return itertools.product(*(range(-(-n // c)) for n, c in zip(shape, block)))


def _slices(b, block, shape):
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(b, block, shape))


def _threshold_for(source, threshold: float) -> float:
    return threshold * 255 if np.dtype(source.dtype) == np.uint8 else threshold


def create_labels(path: Path, shape, block, dtype="uint32", voxel_size=None, name=None,
                  resumed: bool = False):
    """The label array at ``path``: new and empty (an OME-Zarr image when ``name``, by default
    the path's own name, ends in .ome.zarr), or with ``resumed`` the one a stopped run made."""
    import zarr
    from zarr.codecs import BloscCodec

    from ..data.ome_zarr import multiscales_meta

    path = Path(path)
    name = name or path.name
    ome = name.lower().endswith(".ome.zarr")
    store = path / "0" if ome else path
    if resumed and (store / "zarr.json").is_file():
        return zarr.open_array(str(store), mode="r+")
    try:
        if ome:
            root = zarr.open_group(str(path), mode="a", zarr_format=3)  # may hold the ledger
            root.attrs["ome"] = {"version": "0.5", "multiscales": [
                multiscales_meta(name, 1, voxel_size)]}
        return zarr.create_array(
            store=str(store), shape=tuple(shape), chunks=tuple(block), dtype=dtype,
            fill_value=0, dimension_names=("z", "y", "x"),
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), zarr_format=3)
    except OSError as err:
        raise InputError(f"Cannot write '{path}' ({err.strerror}); choose a writable "
                         "location.") from None


@contextlib.contextmanager
def partial_output(output, run: dict, resume: bool = False, overwrite: bool = False):
    """Yield ``(partial, resumed)``: the claimed hidden ``.OUTPUT.partial`` to write the labels
    into, and whether a stopped run with the same ``run`` record is being continued. It
    becomes ``output`` only when the ``with`` block ends without error, and an older
    ``output`` (a zarr store, never a user's file: :func:`.outputs.check_new_output`) is
    replaced only then. A stopped run (Ctrl-C, or a kill) keeps the partial output for
    ``resume``; any other failure removes it."""
    output = Path(output)
    check_parent(output)
    check_new_output(output, overwrite)
    _remove_stale_partials(output)
    partial = PartialOutput(output, job="segment")
    try:
        resumed = partial.open(run, resume, overwrite)
    except OSError as err:
        raise InputError(f"Cannot write '{output}' ({err.strerror}); choose a writable "
                         "location.") from None
    try:
        yield partial, resumed
    except KeyboardInterrupt:
        partial.close()
        raise
    except OSError as err:  # disk full, permissions, a vanished input: kept for --resume
        partial.close()
        raise job_stopped(err, output, (partial.path,)) from None
    except BaseException:
        partial.discard()
        raise
    partial.finish()


def _remove_stale_partials(output: Path) -> None:
    """Delete the half-written labels (and seeds) that killed runs of earlier versions left,
    named ``.OUTPUT.PID.partial`` after their writer (a live writer's stay). Today's runs
    write ``.OUTPUT.partial``, which a stopped run keeps for ``resume``."""
    # The exact old name (plus the seeds' suffix): a looser match also took the resumable
    # ``.OUTPUT.123.zarr.partial`` of another output named ``OUTPUT.123.zarr``.
    old = re.compile(r"\.\.?" + re.escape(output.name)
                     + r"\.(\d+)\.partial(\.seeds\.zarr(\.\d+\.partial)?)?")
    for path in output.parent.glob(".*" + glob.escape(output.name) + ".*.partial*"):
        match = old.fullmatch(path.name)
        pid = int(match.group(1)) if match else None
        if pid is not None and writer_gone(pid):
            remove_path(path)


def check_segment_options(threshold: float, connectivity: int = 1, min_size: int = 0,
                          halo: int = 0, seed_threshold: float | None = None) -> None:
    """InputError for a value no segmentation can use; called before any output is touched."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"--threshold {threshold} must lie strictly between 0 and 1.")
    if connectivity not in (1, 2, 3):
        raise InputError(f"--connectivity {connectivity} must be 1, 2 or 3.")
    if min_size < 0:
        raise InputError(f"--min-size {min_size} must be 0 or more voxels.")
    if halo < 0:
        raise InputError(f"--halo {halo} must be 0 or more voxels.")
    if seed_threshold is not None and not threshold < seed_threshold < 1:
        raise InputError(f"--seed-threshold {seed_threshold} must lie between --threshold "
                         f"{threshold} and 1.")


def _block_size(block, shape) -> tuple:
    if block is not None and (len(block) != 3 or min(block) < 1):
        raise InputError(f"--block {block} must give three positive sizes z,y,x.")
    return tuple(min(b, s) for b, s in zip(block or DEFAULT_BLOCK, shape))


def _label_blocks(source, local, threshold, connectivity, block, partial, name):
    """Pass 1: local labels of every block in ``local``; returns ({block: count},
    {block: sizes}). Blocks in ``partial``'s ledger keep what a stopped run wrote."""
    from skimage.measure import label

    counts, sizes = {}, {}
    done = partial.done(f"{name}-local")
    for b in _blocks(source.shape, block):
        if b in done:
            sizes[b] = partial.load_sample(b, name)
        else:
            sl = _slices(b, block, source.shape)
            lab = label(np.asarray(source[sl]) > threshold, connectivity=connectivity)
            lab = lab.astype(np.uint32, copy=False)
            local[sl] = lab
            sizes[b] = np.bincount(lab.ravel(), minlength=int(lab.max()) + 1)
            partial.save_sample(b, sizes[b], name)
            partial.mark(f"{name}-local", b)
        counts[b] = len(sizes[b]) - 1
    return counts, sizes


def _provisional(out, region, offsets, block):
    """Provisional labels of ``region`` (a tuple of slices) of the local-label array."""
    data = np.asarray(out[region]).astype(np.int64)
    for b_axes in itertools.product(*(range(s.start // c, (s.stop - 1) // c + 1)
                                      for s, c in zip(region, block))):
        part = tuple(slice(max(s.start, i * c) - s.start, min(s.stop, (i + 1) * c) - s.start)
                     for s, i, c in zip(region, b_axes, block))
        view = data[part]
        view[view > 0] += offsets[b_axes]
    return data


def _face_pairs(out, shape, block, axis, p, offsets, connectivity):
    """Provisional label pairs touching across the plane between ``p - 1`` and ``p``."""
    others = [a for a in range(3) if a != axis]
    shifts = [d for d in itertools.product((-1, 0, 1), repeat=2)
              if abs(d[0]) + abs(d[1]) + 1 <= connectivity]
    tile = [max(block[a], 1024) for a in others]
    found = []
    for lo in itertools.product(*(range(0, shape[a], t) for a, t in zip(others, tile))):
        core = [(l0, min(l0 + t, shape[a])) for l0, t, a in zip(lo, tile, others)]
        rim = [(max(c0 - 1, 0), min(c1 + 1, shape[a])) for (c0, c1), a in zip(core, others)]
        region_a, region_b = [None] * 3, [None] * 3
        region_a[axis], region_b[axis] = slice(p - 1, p), slice(p, p + 1)
        for k, a in enumerate(others):
            region_a[a] = slice(*core[k])
            region_b[a] = slice(*rim[k])
        la = _provisional(out, tuple(region_a), offsets, block).squeeze(axis)
        lb = _provisional(out, tuple(region_b), offsets, block).squeeze(axis)
        for d in shifts:
            src, dst = [], []
            for k in range(2):
                c0, c1 = core[k]
                r0, r1 = rim[k]
                lo_ok, hi_ok = max(c0, r0 - d[k]), min(c1, r1 - d[k])
                src.append(slice(lo_ok - c0, hi_ok - c0))
                dst.append(slice(lo_ok + d[k] - r0, hi_ok + d[k] - r0))
            a, bb = la[tuple(src)], lb[tuple(dst)]
            hit = (a > 0) & (bb > 0)
            if hit.any():
                found.append(np.stack([a[hit], bb[hit]], axis=1))
    return np.unique(np.concatenate(found), axis=0) if found else np.empty((0, 2), np.int64)


def label_volume(source, output, threshold: float = 0.5, connectivity: int = 1,
                 block: tuple | None = None, min_size: int = 0, overwrite: bool = False,
                 voxel_size=None, resume: bool = False, inputs: dict | None = None) -> dict:
    """Connected components of ``source > threshold`` written to ``output`` (uint32 zarr).

    ``output`` appears only once complete (:func:`partial_output`); ``resume`` continues a
    stopped run of the same ``inputs`` (a description of what ``source`` was read from, which
    the caller gives) with the same options."""
    check_segment_options(threshold, connectivity, min_size)
    shape = tuple(source.shape)
    block = _block_size(block, shape)
    run = {"method": "cc", "inputs": inputs or {}, "shape": list(shape), "block": list(block),
           "threshold": threshold, "connectivity": connectivity, "min_size": min_size,
           "voxel_size": voxel_size}
    with partial_output(output, run, resume, overwrite) as (partial, resumed):
        out = create_labels(partial.path, shape, block, "uint32", voxel_size, Path(output).name,
                            resumed)
        return _components(source, out, partial, resumed, "labels", threshold, connectivity,
                           block, min_size)


def _components(source, out, partial, resumed, name, threshold, connectivity, block,
                min_size) -> dict:
    """The three passes of :func:`label_volume` into the label array ``out``; ``name`` keys
    their ledger in ``partial``."""
    shape = tuple(source.shape)
    local = create_labels(partial.work / f"{name}-local.zarr", shape, block, resumed=resumed)
    counts, sizes = _label_blocks(source, local, _threshold_for(source, threshold),
                                  connectivity, block, partial, name)
    order = list(_blocks(shape, block))
    offsets, total = {}, 0
    for b in order:
        offsets[b] = total
        total += counts[b]
    if total >= 2**32:
        raise InputError(f"{total} components do not fit 32-bit labels; raise --threshold or "
                         "--min-size.")
    uf = UnionFind(total + 1)
    for axis in range(3):
        for p in range(block[axis], shape[axis], block[axis]):
            for a, b in _face_pairs(local, shape, block, axis, p, offsets, connectivity):
                uf.union(int(a), int(b))
    roots = uf.roots()
    volume = np.zeros(total + 1, dtype=np.int64)
    for b in order:
        volume[offsets[b] + 1:offsets[b] + counts[b] + 1] = sizes[b][1:]
    comp_size = np.bincount(roots, weights=volume, minlength=total + 1)
    keep = (roots == np.arange(total + 1)) & (comp_size >= max(min_size, 1))
    keep[0] = False
    final_of_root = np.cumsum(keep).astype(np.uint32) * keep
    final = final_of_root[roots]
    done = partial.done(name)
    for b in order:
        if counts[b] == 0 or b in done:  # an empty block is the array's fill value already
            continue
        sl = _slices(b, block, shape)
        lut = final[offsets[b]:offsets[b] + counts[b] + 1].copy()
        lut[0] = 0
        out[sl] = lut[np.asarray(local[sl])]
        partial.mark(name, b)
    return {"instances": int(keep.sum()), "blocks": len(order), "block": block,
            "provisional": total}


def seeded_watershed(source, output, threshold: float = 0.5, seed_threshold: float = 0.9,
                     halo: int = 16, block: tuple | None = None, overwrite: bool = False,
                     voxel_size=None, resume: bool = False, inputs: dict | None = None) -> dict:
    """Seeds = components of ``p > seed_threshold``; grown through ``p > threshold`` per block.

    ``output`` appears only once complete (:func:`partial_output`); ``resume`` as for
    :func:`label_volume`."""
    check_segment_options(threshold, halo=halo, seed_threshold=seed_threshold)
    output = Path(output)
    shape = tuple(source.shape)
    block = _block_size(block, shape)
    run = {"method": "watershed", "inputs": inputs or {}, "shape": list(shape),
           "block": list(block), "threshold": threshold, "seed_threshold": seed_threshold,
           "halo": halo, "voxel_size": voxel_size}
    with partial_output(output, run, resume, overwrite) as (partial, resumed):
        seeds = create_labels(partial.work / "seeds.zarr", shape, block, resumed=resumed)
        seeded = _components(source, seeds, partial, resumed, "seeds", seed_threshold, 1,
                             block, 0)
        out = create_labels(partial.path, shape, block, "uint32", voxel_size, output.name,
                            resumed)
        _grow(source, seeds, out, _threshold_for(source, threshold), halo, block, partial)
    return {"instances": seeded["instances"], "blocks": math.prod(
        -(-n // c) for n, c in zip(shape, block)), "block": block}


def _grow(source, seeds, out, t: float, halo: int, block, partial) -> None:
    """Watershed of every block (with ``halo`` voxels of context) from the stored seeds."""
    from skimage.segmentation import watershed

    shape = tuple(source.shape)
    done = partial.done("labels")
    for b in _blocks(shape, block):
        if b in done:
            continue
        inner = _slices(b, block, shape)
        outer = tuple(slice(max(s.start - halo, 0), min(s.stop + halo, n))
                      for s, n in zip(inner, shape))
        prob = np.asarray(source[outer])  # float64 maps stay exact (ProbabilityView)
        prob = prob.astype(np.promote_types(prob.dtype, np.float32), copy=False)
        grown = watershed(-prob, markers=np.asarray(seeds[outer]), mask=prob > t)
        crop = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))
        out[inner] = grown[crop].astype(np.uint32)
        partial.mark("labels", b)
