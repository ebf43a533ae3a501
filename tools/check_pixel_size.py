"""Prediction at another pixel size, on real EM: does resampling to the network's pixel size help?

A source-only UNet is trained on VNC (4.6 nm pixels; ``bench_uda``'s CPU preset, one seed), then
predicts the Lucchi training volume as three microscopes would have imaged it: at its own 5 nm,
at 10 nm and at 2.5 nm (resampled in-plane with scikit-image, anti-aliased). Each is predicted as
it is and through windows resampled to the network's pixel size (``predict``'s
``--match-pixel-size``, ``masktwins_bio/inference/forward.py``), and scored on its labels
resampled alike (DA-ISC per-slice IoU). Every second section is used, to keep 2.5 nm small.

    python tools/check_pixel_size.py --seed 0 [--json]

The result is written to ``tools/results/pixel_size/seedN.json``; README *Results* quotes it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_uda import commit, domains, load_data, resolve  # noqa: E402

OUT = ROOT / "tools" / "results" / "pixel_size"
INPUT_NM = (5.0, 10.0, 2.5)   # Lucchi's own pixel size, then a coarser and a finer microscope
EVERY = 2                     # sections kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=None, help="override the preset's budget")
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the result")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import tempfile

    import torch

    from masktwins_bio.data.resample import source_zoom, zoom_in_plane
    from masktwins_bio.inference.engine import blend_array
    from masktwins_bio.metrics import evaluate_volumes
    from masktwins_bio.train.domains import Domain
    from masktwins_bio.train.trainer import Trainer

    cfg = resolve("cpu", "source-only", args.seed, args.iters, [])
    cfg.device = "cpu"
    data = load_data("vnc-to-lucchi")
    network_nm = data["source_nm"]          # a run without a target works at the source's
    source, _ = domains(cfg, data)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, source, None, Path(tmp), progress=sys.stderr.isatty())
        trainer.fit()
        model = trainer.eval_model
    trained = time.perf_counter() - start

    image = data["target_image"][::EVERY]
    labels = data["target_labels"][::EVERY]
    d = cfg.data
    results = {}
    for nm in INPUT_NM:
        img, lab = (image, labels) if nm == INPUT_NM[0] else \
            zoom_in_plane(image, labels, INPUT_NM[0] / nm)
        img = Domain.from_arrays("target", img, None, d.low_pct, d.high_pct).image
        zoom = source_zoom(nm, network_nm, None)     # predict's rule (--match-pixel-size auto)
        row = {"shape": list(img.shape), "zoom": zoom}
        for name, z in (("as_is", 1.0), ("resampled", zoom)):
            if name == "resampled" and zoom == 1.0:
                continue            # within the tolerance: predict leaves it as it is
            with torch.inference_mode():
                prob = blend_array(model, img, cfg.dims, cfg.crop, 0.25, 4, optimize=False,
                                   zoom=z)
            metrics = evaluate_volumes(prob, lab)
            row[name] = {k: metrics[k] for k in ("iou", "f1", "map")}
        results[f"{nm:g}nm"] = row
        print(f"Lucchi at {nm:g} nm {tuple(img.shape)}: as is IoU "
              f"{100 * row['as_is']['iou']:.1f}" +
              (f", resampled by {zoom:.3g} to the network's {network_nm:g} nm "
               f"{100 * row['resampled']['iou']:.1f}" if "resampled" in row else
               " (within 20% of the network's pixel size: not resampled)"), flush=True)
    record = {"seed": args.seed, "method": "source-only", "source": "vnc",
              "network_nm": network_nm, "sections": f"[::{EVERY}] of the Lucchi training volume",
              "inputs": results, "train_seconds": trained, "commit": commit(),
              "iters": cfg.iters, "threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"seed{args.seed}.json").write_text(json.dumps(record, indent=1) + "\n")
    if args.json:
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
