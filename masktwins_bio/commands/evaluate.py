"""``masktwins-bio evaluate``: DA-ISC per-slice metrics and whole-volume IoU/Dice."""
from __future__ import annotations

from ._common import json_line


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a probability volume against labels",
                       description="Per-slice mAP, F1, MCC and IoU averaged over z (DA-ISC "
                                   "protocol), plus whole-volume IoU and Dice.")
    p.add_argument("--prediction", required=True, help="probability volume (e.g. pred.zarr)")
    p.add_argument("--labels", required=True, help="label volume")
    p.add_argument("--threshold", type=float, default=None,
                   help="foreground: probability > threshold (default 0.5; not with --instances)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--instances", action="store_true",
                   help="both volumes hold instance labels (e.g. from `segment`): report the "
                        "MitoEM instance AP at IoU 0.75 instead")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ..errors import InputError

    if args.instances and args.threshold is not None:
        raise InputError("--threshold applies to probabilities, but --instances compares "
                         "instance labels; drop one of them.")
    try:
        return _run_instances(args) if args.instances else _run_probabilities(args)
    except KeyboardInterrupt:  # evaluate writes nothing, so there is nothing to resume
        print("masktwins-bio: interrupted; nothing was written.", file=sys.stderr)
        return 130


def _run_probabilities(args) -> int:
    from ..data.volumes import MaskSections, open_volume
    from ..errors import InputError
    from ..inference.probability import evaluate_source
    from ..metrics import evaluate_volumes

    threshold = 0.5 if args.threshold is None else args.threshold
    if not 0.0 < threshold < 1.0:
        raise InputError(f"--threshold {threshold} must lie strictly between 0 and 1.")
    with open_volume(args.prediction) as vol, open_volume(args.labels) as truth:
        prob = evaluate_source(vol, args.prediction)
        if tuple(prob.shape) != tuple(truth.shape):  # before reading a voxel of either
            raise InputError(f"The prediction has shape {tuple(prob.shape)} but the labels have "
                             f"shape {tuple(truth.shape)}; give labels of the same volume.")
        # section by section: a MitoEM-size ground truth does not fit in memory
        metrics = evaluate_volumes(prob, MaskSections(truth), threshold)
    keys = ("map", "f1", "mcc", "iou", "volume_iou", "volume_dice")
    width = max(len(k) for k in keys)
    for key in keys:
        print(f"{key:<{width}}  {100 * metrics[key]:6.2f}")
    print(f"({metrics['slices']} slices, threshold {threshold})")
    if args.json:
        print(json_line({k: metrics[k] for k in keys}))
    return 0


def _run_instances(args) -> int:
    """MitoEM protocol: AP at IoU 0.75 between predicted and ground-truth instances."""
    from ..data.volumes import open_volume
    from ..errors import InputError
    from ..inference.probability import TRUE_INSTANCES, check_instance_labels
    from ..metrics import instance_ap

    with open_volume(args.prediction) as pred, open_volume(args.labels) as gt:
        check_instance_labels(pred, args.prediction)
        check_instance_labels(gt, args.labels, TRUE_INSTANCES)
        if tuple(pred.shape) != tuple(gt.shape):
            raise InputError(f"The prediction has shape {tuple(pred.shape)} but the labels have "
                             f"shape {tuple(gt.shape)}; give labels of the same volume.")
        result = instance_ap(pred, gt, iou_threshold=0.75)
    # No true instance: precision at any recall is undefined (MitoEM's script prints -1).
    ap = "   n/a" if result["n_gt"] == 0 else f"{100 * result['ap']:6.2f}"
    print(f"AP-75  {ap}  ({result['tp']} TP, {result['fp']} FP, "
          f"{result['fn']} FN; {result['n_pred']} predicted, {result['n_gt']} true instances)")
    if result["n_gt"] == 0:
        print("(the labels hold no instance, so AP is undefined; JSON: null)")
    if args.json:
        print(json_line({"ap75": result["ap"], **{k: result[k] for k in
                                                  ("tp", "fp", "fn", "n_pred", "n_gt")}}))
    return 0
