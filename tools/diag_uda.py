#!/usr/bin/env python
"""Watch one bench_uda run adapt: target metrics of teacher and student every K iterations.

Trains one (direction, method, seed) of ``tools/bench_uda.py``'s preset, with the same
overrides syntax, and every ``--every`` iterations prints one JSON line: IoU, precision, recall
and mAP of the teacher and of the student on every ``n``-th target section (13 of Lucchi's 50
by default), and the mean of each logged loss term since the last line (``pseudo/foreground``:
the share of pseudo-labelled foreground; ``loss/cl``: the pseudo-label loss). This is how the
*Results* notes on confirmation bias were looked at; the target labels are read for this
measurement only, never by training. Nothing is cached.

    python tools/diag_uda.py --direction vnc-to-lucchi --method mean-teacher --seed 0 [key=value]
    python tools/diag_uda.py --objects     # mitochondria sizes of both volumes, then exit
    python tools/diag_uda.py --direction vnc-to-lucchi --seed 0 --warmup-teacher

``--warmup-teacher`` trains only the preset's source warm-up (``uda.warmup_iters``) and prints the
EMA teacher's pseudo-labels on the whole target: its probability averaged over the four in-plane
flips, the share of voxels at p >= t with their precision and recall, and the share at p <= 0.1
(confident background), i.e. what the confident-voxel rule has to work with when adaptation
switches on.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_uda  # noqa: E402
from masktwins_bio.inference.window import predict_array  # noqa: E402
from masktwins_bio.metrics import evaluate_volumes  # noqa: E402
from masktwins_bio.train.trainer import Trainer  # noqa: E402


def scores(model, image, labels, cfg, device) -> dict:
    prob = predict_array(model, image, cfg.dims, cfg.crop, overlap=0.25, batch_size=4,
                         device=device)
    metrics = evaluate_volumes(prob, labels)
    pred = prob > 0.5
    tp = float((pred & labels).sum())
    return {"iou": 100 * metrics["iou"], "map": 100 * metrics["map"],
            "precision": 100 * tp / max(float(pred.sum()), 1.0),
            "recall": 100 * tp / max(float(labels.sum()), 1.0),
            "foreground": 100 * float(pred.mean())}


class WatchedTrainer(Trainer):
    """A Trainer whose validation scores teacher and student on a subset and prints them with
    the loss terms averaged since the last validation."""

    def __init__(self, *args, watch, **kw):
        super().__init__(*args, **kw)
        self.watch, self.terms = watch, {}

    def step(self, it, keep_views=False, batches=None):
        out = super().step(it, keep_views, batches)
        for key, value in out.terms.items():
            self.terms.setdefault(key, []).append(value)
        return out

    def validate(self):
        image, labels = self.watch
        line = {"iteration": self.iteration}
        for name, model in (("teacher", self.teacher), ("student", self.student)):
            if model is not None:
                line[name] = {k: round(v, 1) for k, v in
                              scores(model, image, labels, self.cfg, self.device).items()}
        line.update({k: round(float(np.mean(v)), 4) for k, v in self.terms.items() if k != "lr"})
        self.terms = {}
        print(json.dumps(line), flush=True)
        return {"iou": line.get("teacher", line["student"])["iou"] / 100}


def object_sizes() -> dict:
    """Per volume: foreground share, 2D objects (per section) and their median minor axis."""
    from skimage.measure import label, regionprops

    data = bench_uda.load_data("vnc-to-lucchi")
    out = {}
    for name, labels in (("vnc", data["source_labels"]), ("lucchi", data["target_labels"])):
        labels = np.asarray(labels, bool)
        axes = [r.axis_minor_length for z in labels for r in regionprops(label(z))]
        out[name] = {"foreground_pct": round(100 * float(labels.mean()), 2),
                     "objects_2d": len(axes),
                     "median_minor_axis_px": round(float(np.median(axes)), 1)}
    return out


def warmup_teacher(direction: str, seed: int, overrides: list) -> dict:
    """Pseudo-label statistics of the teacher at the end of the source warm-up (see above)."""
    cfg = bench_uda.resolve("cpu", "mean-teacher", seed, None, overrides)
    cfg.iters, cfg.val_every = cfg.uda.warmup_iters, 10**9
    data = bench_uda.load_data(direction)
    source, target = bench_uda.domains(cfg, data)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, source, target, Path(tmp), progress=False)
        trainer.fit()
        prob = np.zeros(target.image.shape, np.float32)
        for axes in ((), (-1,), (-2,), (-1, -2)):
            view = np.ascontiguousarray(np.flip(target.image, axes))
            p = predict_array(trainer.teacher, view, cfg.dims, cfg.crop, overlap=0.25,
                              batch_size=4, device=trainer.device)
            prob += np.flip(p, axes) / 4
    labels = np.asarray(data["target_labels"], bool)

    def share(sel):
        tp = float((sel & labels).sum())
        return {"voxels_pct": round(100 * float(sel.mean()), 2),
                "precision": round(100 * tp / max(float(sel.sum()), 1.0), 1),
                "recall": round(100 * tp / max(float(labels.sum()), 1.0), 1)}

    out = {"direction": direction, "seed": seed, "iteration": cfg.iters,
           "labels_foreground_pct": round(100 * float(labels.mean()), 2)}
    out.update({f"p>={t}": share(prob >= t) for t in (0.5, 0.9, 0.99)})
    out["p<=0.1_voxels_pct"] = round(100 * float((prob <= 0.1).mean()), 2)
    out["median_p"] = round(float(np.median(prob)), 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--direction", default="vnc-to-lucchi",
                   choices=("vnc-to-lucchi", "lucchi-to-vnc"))
    p.add_argument("--method", default="masktwins", choices=bench_uda.METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=500, help="iterations between lines")
    p.add_argument("--sections", type=int, default=13, help="target sections scored")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--target-zoom", type=float, default=1.0,
                   help="the target (and its labels) resampled in-plane, as bench_uda's")
    p.add_argument("--objects", action="store_true",
                   help="print the mitochondria sizes of both volumes and exit")
    p.add_argument("--warmup-teacher", action="store_true",
                   help="print the warm-up teacher's pseudo-labels on the target, then exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    if args.objects:
        print(json.dumps(object_sizes()))
        return 0
    if args.warmup_teacher:
        print(json.dumps(warmup_teacher(args.direction, args.seed, args.overrides)))
        return 0

    cfg = bench_uda.resolve("cpu", args.method, args.seed, None, args.overrides)
    cfg.val_every, cfg.device = args.every, args.device
    data = bench_uda.load_data(args.direction, target_zoom=args.target_zoom)
    source, target = bench_uda.domains(cfg, data)
    step = max(1, target.image.shape[0] // max(1, args.sections - 1))
    watch = (target.image[::step], np.asarray(data["target_labels"][::step], bool))
    with tempfile.TemporaryDirectory() as tmp:
        WatchedTrainer(cfg, source, target, Path(tmp), progress=False, watch=watch).fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
