"""``masktwins-bio convert INPUT OUTPUT.zarr``: any volume spec → chunked, compressed OME-Zarr.

Out of core (memory bounded by one block, whatever the input size), with voxel-size metadata,
intensity statistics for training, optional pyramid levels and label images. An existing output
is kept unless ``--overwrite`` is given; the output appears only once complete, and a stopped
conversion continues with ``--resume``.
"""
from __future__ import annotations


def _floats(text: str | None, what: str):
    import math

    from ..errors import InputError
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{what} '{text}' does not fit: give three positive, finite numbers "
                         "z,y,x in nm, e.g. 50,4.6,4.6.")
    return values


def _split_label(item: str) -> tuple[str | None, str]:
    """``NAME=SPEC`` → (NAME, SPEC); a bare spec → (None, SPEC). Text before '=' holding a
    path or spec character (as in ``d.h5:x#channel=1``) is part of the spec, not a name."""
    import os
    name, sep, spec = item.partition("=")
    if not sep or os.path.exists(item) or any(ch in name for ch in "/\\:#"):
        return None, item
    return name, spec


def _label_specs(items: list[str]) -> dict:
    """``--labels`` values → {name: spec}; unnamed ones get 'mito', then 'labels1', …"""
    from ..errors import InputError
    pairs = [_split_label(item) for item in items]
    named = [name for name, _ in pairs if name is not None]
    for name in named:
        if named.count(name) > 1:
            raise InputError(f"--labels gives the name '{name}' twice; give each label image "
                             "its own name, e.g. --labels mito=a.tif --labels cells=b.tif.")
    labels, used = {}, set(named)
    for name, spec in pairs:
        if name is None:
            name = next(n for n in ("mito", *(f"labels{k}" for k in range(1, len(items) + 1)))
                        if n not in used)
            used.add(name)
        labels[name] = spec
    return labels


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a volume (TIFF, PNG folder, HDF5, zarr, NIfTI, "
                                       "MRC) into chunked OME-Zarr")
    p.add_argument("input", help="volume spec: PATH[:KEY][#channel=N], e.g. raw/ or data.h5:raw")
    p.add_argument("output", help="output folder ending in .zarr (e.g. volume.ome.zarr)")
    p.add_argument("--chunks", help="inner chunk shape z,y,x (default 4,128,128)")
    p.add_argument("--levels", type=int, default=1,
                   help="resolution levels to write (each halves y and x; default 1)")
    p.add_argument("--voxel-size", help="z,y,x in nm, overriding the input's metadata")
    p.add_argument("--labels", action="append", default=[], metavar="[NAME=]SPEC",
                   help="label volume to store under labels/NAME (default name 'mito'); repeat")
    p.add_argument("--instances", action="store_true",
                   help="labels are instance ids: foreground is every id > 0")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (or a stopped run's unfinished one)")
    p.add_argument("--resume", action="store_true",
                   help="continue a conversion that was stopped (killed or interrupted); with "
                        "--overwrite, start again instead when it converted something else")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.convert import DEFAULT_CHUNKS, convert_volume
    from ..data.ome_zarr import parse_chunks
    from ..errors import InputError

    if args.instances and not args.labels:
        raise InputError("--instances says how to store --labels, but none were given; add "
                         "--labels NAME=SPEC or drop --instances.")
    chunks = parse_chunks(args.chunks, DEFAULT_CHUNKS)
    labels = _label_specs(args.labels)
    out = convert_volume(args.input, args.output, chunks=chunks, overwrite=args.overwrite,
                         levels=args.levels, voxel_size=_floats(args.voxel_size, "--voxel-size"),
                         labels=labels, label_rule="nonzero" if args.instances else "binarise",
                         show_progress=not args.quiet, resume=args.resume)
    from ..data.volumes import open_volume
    with open_volume(out) as vol:
        vs = f", voxel size {vol.voxel_size} nm" if vol.voxel_size else ""
        print(f"wrote {out}: {vol.shape} {vol.dtype}{vs}")
    return 0
