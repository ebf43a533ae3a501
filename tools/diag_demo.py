#!/usr/bin/env python
"""Where a demo run's foreground goes: precision and recall of its network on the demo target.

``masktwins-bio demo`` prints IoU only. This predicts the demo's synthetic target (the same
seed's, regenerated; the labels are read for this measurement only) with the network of each
given run folder and prints, per probability threshold, the share of target voxels called
foreground, their precision and recall, and the whole-volume IoU. It is how the demo's cost of
prior matching on seed 1 was looked at (README, *What the demo shows*): a lower threshold that
adds voxels of low precision teaches the student false positives.

    OMP_NUM_THREADS=1 masktwins-bio demo --seed 1 --out runs/demo1
    python tools/diag_demo.py --seed 1 runs/demo1/source-only runs/demo1/masktwins
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from masktwins_bio.data.synthetic import demo_pair  # noqa: E402
from masktwins_bio.inference.model_io import load_model  # noqa: E402
from masktwins_bio.inference.window import predict_array  # noqa: E402
from masktwins_bio.train.domains import Domain  # noqa: E402


def counts(prob: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Foreground share, precision, recall and IoU of ``prob > threshold`` over the volume."""
    pred = prob > threshold
    tp = int(np.count_nonzero(pred & labels))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(labels)) - tp
    return {"threshold": threshold, "foreground": float(pred.mean()),
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "iou": tp / (tp + fp + fn) if tp + fp + fn else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders of `masktwins-bio demo`")
    p.add_argument("--seed", type=int, default=0, help="the demo seed the runs trained on")
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--thresholds", default="0.5,0.2,0.05")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()

    data = demo_pair(args.dims, seed=args.seed)
    image, labels = data["target"][0], data["target"][1].astype(bool)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(f"demo seed {args.seed}: foreground share of the source labels "
          f"{data['source'][1].mean():.3f}, of the target labels {labels.mean():.3f}")
    result = {}
    for run in args.runs:
        loaded = load_model(run, "cpu", "last")
        d = loaded.config.data
        target = Domain.from_arrays("target", image, None, d.low_pct, d.high_pct)
        prob = predict_array(loaded.model, target.image, loaded.config.dims, loaded.config.crop,
                             overlap=0.25, batch_size=4, device="cpu")
        rows = [counts(prob, labels, t) for t in thresholds]
        result[run] = rows
        for r in rows:
            print(f"{run}  p > {r['threshold']:<5}  foreground {r['foreground']:.3f}  "
                  f"precision {r['precision'] or 0:.3f}  recall {r['recall'] or 0:.3f}  "
                  f"IoU {r['iou'] or 0:.3f}")
    if args.json:
        print(json.dumps({"seed": args.seed, "runs": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
