"""``masktwins-bio demo``: source-only vs MaskTwins on the embedded synthetic EM domains.

Runs in a few minutes on a laptop CPU, downloads nothing, and prints target metrics for both
methods. The settings are the short-schedule ones of ``configs/demo.yaml``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "resources" / "demo.yaml"


def register(sub) -> None:
    p = sub.add_parser("demo", help="source-only vs MaskTwins on synthetic EM domains (CPU, "
                                    "minutes)")
    p.add_argument("--out", default="runs/demo", help="where the two runs are written")
    p.add_argument("--methods", default="source-only,masktwins",
                   help="comma-separated methods to compare")
    p.add_argument("--iters", type=int, help="iterations per method (default from the config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dims", type=int, choices=(2, 3), default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import (METHODS, build_config, load_yaml, parse_override, pin_rules,
                          save_yaml)
    from ..data.synthetic import demo_pair
    from ..errors import ConfigError
    from ..metrics import format_table
    from ..train.domains import Domain
    from ..train.trainer import Trainer
    from ._common import prepare_run_dir

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"Unknown method(s) {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(METHODS)}.")
    base = load_yaml(DEMO_CONFIG)
    flags = {"dims": args.dims, "seed": args.seed, "device": args.device}
    if args.iters is not None:
        flags["iters"] = args.iters
    overrides = [parse_override(o) for o in args.overrides]
    for key in ("method", "dims", "seed"):
        if any(key in o for o in overrides):
            raise ConfigError(f"Set {key} with --{'methods' if key == 'method' else key}, not "
                              f"as {key}=...: the demo builds its data and names its rows from "
                              "those flags.")
    from ..train.device import select_device
    # a device that is not there (flag or device=... override): said before any run folder
    select_device(build_config(base, flags, *overrides).device)
    data = demo_pair(args.dims, seed=args.seed)
    rows, timings = {}, {}
    for method in methods:
        cfg = build_config(base, flags, *overrides, {"method": method})
        cfg.fit_teacher_context(data["target"][0].shape)
        if method == methods[0]:   # the crop must fit the demo volumes (train checks it too)
            for role, volume in (("source", data["source"][0]), ("target", data["target"][0])):
                Domain.from_arrays(role, volume).check_crop(cfg.target_crop if role == "target"
                                                            else cfg.crop, cfg.dims)
        out = Path(args.out) / method
        prepare_run_dir(out, resume=False, overwrite=True)
        pin_rules(cfg)  # as train does: the run names the block (and context) it used
        save_yaml(cfg, out / "config.yaml")  # a run directory like train's
        d = cfg.data
        source = Domain.from_arrays("source", *data["source"], d.low_pct, d.high_pct)
        target = Domain.from_arrays("target", data["target"][0], None, d.low_pct, d.high_pct)
        start = time.perf_counter()
        trainer = Trainer(cfg, source, target, out, target_labels=data["target"][1],
                          progress=not args.quiet)
        summary = trainer.fit()
        timings[method] = time.perf_counter() - start
        rows[method] = summary["final"]
    print()
    print(f"Target-domain metrics (%), synthetic {args.dims}D demo, "
          f"{cfg.iters} iterations per method, seed {args.seed}:")
    print(format_table(rows))
    for method in methods:
        print(f"  {method}: {timings[method]:.0f} s")
    if "source-only" in rows and "masktwins" in rows:
        gain = 100 * (rows["masktwins"]["iou"] - rows["source-only"]["iou"])
        print(f"MaskTwins - source-only: {gain:+.1f} IoU points")
    if args.json:
        print(json.dumps({m: {k: rows[m][k] for k in ("iou", "f1", "mcc", "map")}
                          for m in methods}))
    return 0
