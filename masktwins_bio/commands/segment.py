"""``masktwins-bio segment``: instance labels from a probability volume, out of core.

Connected components of ``p > threshold`` labelled block by block and merged across block faces
with union-find (equal to ``skimage.measure.label`` up to numbering), or a seeded watershed.
``--labels GT`` also scores the result with the MitoEM instance metric (AP at IoU 0.75).
"""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("segment", help="instance labels from probabilities (out of core)",
                       description="Threshold + connected components (or seeded watershed) per "
                                   "block, merged across blocks; writes uint32 labels to zarr.")
    p.add_argument("--input", required=True, help="probability volume (e.g. pred.zarr)")
    p.add_argument("--output", required=True, help="label output (NAME.zarr or NAME.ome.zarr)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground: p > threshold")
    p.add_argument("--method", choices=("cc", "watershed"), default="cc")
    p.add_argument("--connectivity", type=int, default=1, choices=(1, 2, 3),
                   help="neighbours that connect: 1 faces, 2 +edges, 3 +corners (cc)")
    p.add_argument("--min-size", type=int, default=0, help="drop instances under N voxels (cc)")
    p.add_argument("--seed-threshold", type=float, default=0.9,
                   help="watershed seeds: components of p > this")
    p.add_argument("--halo", type=int, default=16, help="watershed context around a block")
    p.add_argument("--block", default=None, metavar="Z,Y,X", help="block size (64,256,256)")
    p.add_argument("--labels", default=None,
                   help="ground-truth instance labels: also report MitoEM AP-75")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..data.volumes import open_volume
    from ..errors import InputError
    from ..inference.instances import label_volume, seeded_watershed
    from .predict import _block

    if not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold {args.threshold} must lie strictly between 0 and 1.")
    block = _block(args.block) if args.block else None
    with open_volume(args.input) as prob:
        if np.dtype(prob.dtype).kind not in "fu":
            raise InputError(f"'{args.input}' holds {prob.dtype} values, not probabilities; "
                             "give the output of `masktwins-bio predict`.")
        if args.method == "cc":
            summary = label_volume(prob, args.output, args.threshold, args.connectivity, block,
                                   args.min_size, args.overwrite, prob.voxel_size)
        else:
            summary = seeded_watershed(prob, args.output, args.threshold, args.seed_threshold,
                                       args.halo, block, args.overwrite, prob.voxel_size)
    print(f"wrote {args.output}: {summary['instances']} instances "
          f"({summary['blocks']} blocks of {tuple(summary['block'])})")
    result = {"instances": summary["instances"]}
    if args.labels:
        from ..metrics import instance_ap
        with open_volume(args.output) as pred, open_volume(args.labels) as gt:
            if tuple(pred.shape) != tuple(gt.shape):
                raise InputError(f"The labels have shape {tuple(gt.shape)} but the volume has "
                                 f"{tuple(pred.shape)}; give labels of the same volume.")
            ap = instance_ap(pred, gt, 0.75)
        print(f"AP-75 {100 * ap['ap']:.2f}  (tp {ap['tp']}, fp {ap['fp']}, fn {ap['fn']})")
        result.update({"ap75": ap["ap"], "tp": ap["tp"], "fp": ap["fp"], "fn": ap["fn"]})
    if args.json:
        print(json.dumps(result))
    return 0
