"""Write chunked, compressed OME-Zarr (NGFF 0.5, zarr v3) images block by block.

Layout of one image::

    image.ome.zarr/            group; attrs["ome"]["multiscales"]: axes z, y, x in nanometres
      0/ 1/ ...                resolution levels (level k is 2**k smaller in y and x)
      labels/<name>/0 ...      optional label images (same layout, "image-label" metadata)

Arrays are sharded: small inner chunks (cheap random crops) inside shards of a few MB (few files).
Memory stays bounded: data is copied in shard-aligned blocks of at most ``block_bytes``.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

BLOCK_BYTES = 128 * 2**20
SHARD_TARGET_BYTES = 16 * 2**20
MAX_CHUNK_BYTES = 256 * 2**20


def parse_chunks(text: str | None, default: tuple) -> tuple[int, int, int]:
    """``"z,y,x"`` → a tuple of three positive ints (None → ``default``)."""
    if text is None:
        return tuple(default)
    try:
        values = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"Chunk spec '{text}' does not fit: give three positive numbers z,y,x, "
                         "e.g. --chunks 4,128,128.")
    return values


def fit_chunks(chunks: tuple, shape: tuple, itemsize: int) -> tuple:
    """Chunks clipped to the volume; InputError when one chunk would be unreasonably large."""
    fitted = tuple(min(c, s) for c, s in zip(chunks, shape))
    nbytes = math.prod(fitted) * itemsize
    if nbytes > MAX_CHUNK_BYTES:
        raise InputError(f"Chunks {chunks} would be {nbytes / 2**20:.0f} MB each; choose chunks "
                         f"under {MAX_CHUNK_BYTES // 2**20} MB, e.g. --chunks 4,128,128.")
    return fitted


def shard_shape(chunks: tuple, shape: tuple, itemsize: int) -> tuple:
    """Whole multiples of ``chunks`` holding up to ~SHARD_TARGET_BYTES, grown z, y, x in turn
    (a crop deep in z then opens few shards, whatever the volume's y/x size)."""
    shard = list(chunks)
    grow = True
    while grow:
        grow = False
        for axis in (0, 1, 2):
            bigger = shard.copy()
            bigger[axis] *= 2
            if (math.prod(bigger) * itemsize <= SHARD_TARGET_BYTES
                    and bigger[axis] < 2 * shape[axis]):
                shard, grow = bigger, True
    return tuple(min(s, -(-n // c) * c) for s, n, c in zip(shard, shape, chunks))


def block_shape(unit: tuple, shape: tuple, itemsize: int, budget: int | None = None) -> tuple:
    """A copy block: whole ``unit``s (shards), grown in x, then y, then z, within ``budget``
    (default :data:`BLOCK_BYTES`, read at call time)."""
    budget = BLOCK_BYTES if budget is None else budget
    block = list(unit)
    for axis in (2, 1, 0):
        n_units = -(-shape[axis] // unit[axis])
        per_unit = math.prod(block) * itemsize
        k = max(1, min(n_units, budget // max(per_unit, 1)))
        block[axis] = unit[axis] * k
    return tuple(min(b, -(-s // u) * u) for b, s, u in zip(block, shape, unit))


def iter_blocks(shape: tuple, block: tuple):
    for z in range(0, shape[0], block[0]):
        for y in range(0, shape[1], block[1]):
            for x in range(0, shape[2], block[2]):
                yield (slice(z, min(z + block[0], shape[0])), slice(y, min(y + block[1], shape[1])),
                       slice(x, min(x + block[2], shape[2])))


def multiscales_meta(name: str, n_levels: int, voxel_size: tuple | None) -> dict:
    base = list(voxel_size) if voxel_size else [1.0, 1.0, 1.0]
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": [base[0], base[1] * 2**k, base[2] * 2**k]}]}
        for k in range(n_levels)]
    unit = {"unit": "nanometer"} if voxel_size else {}
    axes = [{"name": a, "type": "space", **unit} for a in "zyx"]
    # NGFF 0.5 keeps the version in the "ome" object only, not in each multiscales entry
    return {"name": name, "axes": axes, "datasets": datasets}


def create_level(group, path: str, shape: tuple, dtype, chunks: tuple, is_label: bool = False):
    """An empty sharded, Blosc-lz4 compressed (z, y, x) array; labels use bit-shuffling,
    which makes 0/1 masks ~4× smaller and faster to decode."""
    from zarr.codecs import BloscCodec
    dtype = np.dtype(dtype)
    chunks = fit_chunks(chunks, shape, dtype.itemsize)
    shards = shard_shape(chunks, shape, dtype.itemsize)
    return group.create_array(
        path, shape=shape, dtype=dtype, chunks=chunks, shards=shards,
        compressors=BloscCodec(cname="lz4", clevel=5,
                               shuffle="bitshuffle" if is_label else "shuffle"),
        dimension_names=("z", "y", "x"), fill_value=0)


def copy_blocks(read, out, progress=None, on_block=None, done=frozenset(),
                on_done=None) -> None:
    """``out[b] = read(b)`` for every shard-aligned block ``b``; ``on_block(b, data)`` sees each.

    Resuming: blocks whose corner (z, y, x) is in ``done`` are skipped; ``on_done(corner)`` is
    called once a block is written (the order of blocks never depends on ``done``)."""
    unit = out.shards or out.chunks
    block = block_shape(unit, out.shape, out.dtype.itemsize)
    for b in iter_blocks(out.shape, block):
        corner = tuple(s.start for s in b)
        if corner not in done:
            data = read(b)
            out[b] = data
            if on_block is not None:
                on_block(b, data)
            if on_done is not None:
                on_done(corner)
        if progress is not None:
            progress(math.prod(s.stop - s.start for s in b))


def _float_range(dtype) -> tuple[float, float]:
    """The widest float range that converts into integer ``dtype`` without wrapping (2**63 - 1
    is 2**63 as a float, which wraps to the minimum)."""
    info = np.iinfo(dtype)
    lo, hi = np.float64(info.min), np.float64(info.max)
    return (lo if int(lo) >= info.min else np.nextafter(lo, 0),
            hi if int(hi) <= info.max else np.nextafter(hi, 0))


def downsample_level(src, dst, is_label: bool, progress=None, done=frozenset(),
                     on_done=None) -> None:
    """dst = src reduced 2× in y and x (mean for images, top-left voxel for labels)."""
    def read(b):
        zs, ys, xs = b
        data = np.asarray(src[zs, ys.start * 2:ys.stop * 2, xs.start * 2:xs.stop * 2])
        if is_label:
            return data[:, ::2, ::2]
        ny, nx = 2 * (ys.stop - ys.start), 2 * (xs.stop - xs.start)
        # float32 holds 24 bits: exact for 8/16-bit data, not for 32-bit integers or float64
        # (float64's 53 bits are exact up to 32-bit integers; 64-bit ones may round)
        work = np.float32 if data.dtype.itemsize <= 2 or data.dtype == np.float32 else np.float64
        pad = np.pad(data.astype(work),
                     ((0, 0), (0, ny - data.shape[1]), (0, nx - data.shape[2])), mode="edge")
        small = pad.reshape(pad.shape[0], pad.shape[1] // 2, 2, pad.shape[2] // 2, 2).mean((2, 4))
        if dst.dtype.kind in "iu":  # clipped: a mean rounded past the type's range wraps
            small = np.clip(np.rint(small), *_float_range(dst.dtype))
        return small.astype(dst.dtype)
    copy_blocks(read, dst, progress, done=done, on_done=on_done)
