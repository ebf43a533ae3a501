"""``masktwins-bio convert INPUT OUTPUT.zarr``: any volume spec → chunked, compressed OME-Zarr.

Out of core (memory bounded by one block, whatever the input size), with voxel-size metadata,
intensity statistics for training, optional pyramid levels and label images. An existing output
is kept unless ``--overwrite`` is given; the output appears only once complete.
"""
from __future__ import annotations


def _floats(text: str | None, what: str):
    from ..errors import InputError
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise InputError(f"{what} '{text}' does not fit: give three positive numbers z,y,x in "
                         "nm, e.g. 50,4.6,4.6.")
    return values


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
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.convert import DEFAULT_CHUNKS, convert_volume
    from ..data.ome_zarr import parse_chunks
    chunks = parse_chunks(args.chunks, DEFAULT_CHUNKS)
    labels = {}
    for item in args.labels:
        name, sep, spec = item.partition("=")
        if not sep or "/" in name or not name:
            name, spec = "mito" if not labels else f"labels{len(labels)}", item
        labels[name] = spec
    out = convert_volume(args.input, args.output, chunks=chunks, overwrite=args.overwrite,
                         levels=args.levels, voxel_size=_floats(args.voxel_size, "--voxel-size"),
                         labels=labels, label_rule="nonzero" if args.instances else "binarise",
                         show_progress=not args.quiet)
    from ..data.volumes import open_volume
    with open_volume(out) as vol:
        vs = f", voxel size {vol.voxel_size} nm" if vol.voxel_size else ""
        print(f"wrote {out}: {vol.shape} {vol.dtype}{vs}")
    return 0
