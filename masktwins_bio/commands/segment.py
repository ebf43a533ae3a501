"""``masktwins-bio segment``: instance labels from a probability volume, out of core.

Connected components of ``p > threshold`` labelled block by block and merged across block faces
with union-find (equal to ``skimage.measure.label`` up to numbering), or a seeded watershed.
``--labels GT`` also scores the result with the MitoEM instance metric (AP at IoU 0.75). The
labels appear only once complete; a stopped run continues with ``--resume``.
"""
from __future__ import annotations

from ._common import json_line


def register(sub) -> None:
    p = sub.add_parser("segment", help="instance labels from probabilities (out of core)",
                       description="Threshold + connected components (or seeded watershed) per "
                                   "block, merged across blocks; writes uint32 labels to zarr.")
    p.add_argument("--input", required=True, help="probability volume (e.g. pred.zarr)")
    p.add_argument("--output", required=True, help="label output (NAME.zarr or NAME.ome.zarr)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground: p > threshold")
    p.add_argument("--method", choices=("cc", "watershed"), default="cc")
    # Defaults of the options of one method are filled in by _check_options, so that an
    # option given to the other method is refused rather than ignored.
    p.add_argument("--connectivity", type=int, default=None, choices=(1, 2, 3),
                   help="neighbours that connect: 1 faces, 2 +edges, 3 +corners (cc; default 1)")
    p.add_argument("--min-size", type=int, default=None,
                   help="drop instances under N voxels (cc; default 0)")
    p.add_argument("--seed-threshold", type=float, default=None,
                   help="watershed seeds: components of p > this (default 0.9)")
    p.add_argument("--halo", type=int, default=None,
                   help="watershed context around a block (default 16)")
    p.add_argument("--block", default=None, metavar="Z,Y,X", help="block size (64,256,256)")
    p.add_argument("--labels", default=None,
                   help="ground-truth instance labels: also report MitoEM AP-75")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (or a stopped run's unfinished one)")
    p.add_argument("--resume", action="store_true",
                   help="continue a segmentation that was stopped (killed or interrupted)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ..inference.outputs import output_path

    block = _check_options(args)
    out = output_path(args.output, example="labels.zarr", volumes=[args.input, args.labels])
    try:
        summary = _segment(args, out, block)
    except KeyboardInterrupt:
        print(f"masktwins-bio: interrupted; '{out}' was not written (an older one is kept as "
              "it was); run the same command with --resume to continue.", file=sys.stderr)
        return 130
    print(f"wrote {out}: {summary['instances']} instances "
          f"({summary['blocks']} blocks of {tuple(summary['block'])})")
    result = {"instances": summary["instances"]}
    if args.labels:
        try:
            result.update(_score(out, args.labels))
        except KeyboardInterrupt:
            print(f"masktwins-bio: interrupted; the labels in '{out}' are complete, only their "
                  "AP-75 was not computed.", file=sys.stderr)
            return 130
    if args.json:
        print(json_line(result))
    return 0


def _check_options(args):
    """The parsed --block once every value is usable; runs before any file is opened."""
    from ..errors import InputError
    from ..inference.instances import check_segment_options
    from .predict import _block

    own = {"cc": {"connectivity": 1, "min_size": 0},
           "watershed": {"seed_threshold": 0.9, "halo": 16}}
    for method, options in own.items():
        for name, default in options.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
            elif method != args.method:
                raise InputError(f"--{name.replace('_', '-')} applies to --method {method}, "
                                 f"not {args.method}; drop it or use --method {method}.")
    seeds = args.seed_threshold if args.method == "watershed" else None
    check_segment_options(args.threshold, args.connectivity, args.min_size, args.halo, seeds)
    return _block(args.block) if args.block else None


def _segment(args, out, block) -> dict:
    """Labels of ``args.input`` at ``out``; the input is checked (dtype, a sample of blocks,
    the shape of --labels) before anything is written."""
    from ..data.partial import describe_inputs
    from ..data.volumes import open_volume
    from ..inference.instances import DEFAULT_BLOCK, label_volume, seeded_watershed
    from ..inference.outputs import check_new_output
    from ..inference.probability import segment_source

    check_new_output(out, args.overwrite)
    with open_volume(args.input) as vol:
        prob = segment_source(vol, args.input)
        if args.labels:
            _check_label_shape(args.labels, vol.shape)
        prob.check_sample(tuple(min(b, n) for b, n in zip(block or DEFAULT_BLOCK, vol.shape)))
        common = dict(overwrite=args.overwrite, voxel_size=vol.output_voxel_size,
                      resume=args.resume, inputs=describe_inputs({"probabilities": args.input}))
        if args.method == "cc":
            return label_volume(prob, out, args.threshold, args.connectivity, block,
                                args.min_size, **common)
        return seeded_watershed(prob, out, args.threshold, args.seed_threshold, args.halo,
                                block, **common)


def _check_label_shape(labels: str, shape) -> None:
    from ..data.volumes import open_volume
    from ..errors import InputError
    from ..inference.probability import TRUE_INSTANCES, check_instance_labels

    with open_volume(labels) as gt:
        check_instance_labels(gt, labels, TRUE_INSTANCES)  # before segmenting, not after
        if tuple(gt.shape) != tuple(shape):
            raise InputError(f"The labels have shape {tuple(gt.shape)} but the volume has "
                             f"{tuple(shape)}; give labels of the same volume.")


def _score(out, labels: str) -> dict:
    """MitoEM AP-75 of the written labels against --labels."""
    from ..data.volumes import open_volume
    from ..metrics import instance_ap

    with open_volume(out) as pred, open_volume(labels) as gt:
        ap = instance_ap(pred, gt, 0.75)
    print(f"AP-75 {100 * ap['ap']:.2f}  (tp {ap['tp']}, fp {ap['fp']}, fn {ap['fn']})")
    return {"ap75": ap["ap"], "tp": ap["tp"], "fp": ap["fp"], "fn": ap["fn"]}
