#!/usr/bin/env python
"""Time one MaskTwins training step against a plain supervised step of the same network/batch.

The compute floor of a MaskTwins step is ~3.3 plain steps (source forward/backward, one
forward/backward over both twins = 2 more, plus one teacher forward ~1/3). Both steps are timed
through the real trainer (sampling, augmentation, optimiser, EMA included), interleaved so
machine noise hits both alike, and the median is reported.

    python tools/bench_train.py [--device cpu|cuda] [--dims 2|3] [--steps N] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masktwins_bio.config import build_config  # noqa: E402
from masktwins_bio.data.synthetic import demo_pair  # noqa: E402
from masktwins_bio.train.domains import Domain  # noqa: E402
from masktwins_bio.train.trainer import Trainer  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) of GPUs we may be lent, for the utilisation figure.
BF16_PEAK = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _trainer(method: str, args, domains, run_dir: Path) -> Trainer:
    crop = [256, 256] if args.dims == 2 else [32, 128, 128]
    cfg = build_config({"method": method, "dims": args.dims, "device": args.device,
                        "iters": 10**6, "seed": 0,
                        "data": {"crop": crop, "batch_source": args.batch,
                                 "batch_target": args.batch},
                        "uda": {"warmup_iters": 0}})
    return Trainer(cfg, *domains, run_dir / method, progress=False)


def _flops_per_step(trainer: Trainer) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.step(10**5)
    return float(counter.get_total_flops())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--batch", type=int, default=2, help="source and target crops per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    data = demo_pair(args.dims, seed=0)
    domains = (Domain.from_arrays("source", *data["source"]),
               Domain.from_arrays("target", data["target"][0]))
    with tempfile.TemporaryDirectory() as tmp:
        plain = _trainer("source-only", args, domains, Path(tmp))
        twins = _trainer("masktwins", args, domains, Path(tmp))
        device = plain.device
        times = {"plain": [], "masktwins": []}
        for i in range(args.warmup + args.steps):
            for name, tr in (("plain", plain), ("masktwins", twins)):
                _sync(device)
                t0 = time.perf_counter()
                tr.step(i)
                _sync(device)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        plain_s = statistics.median(times["plain"])
        twins_s = statistics.median(times["masktwins"])
        result = {"step_ratio": twins_s / plain_s, "plain_step_s": plain_s,
                  "masktwins_step_s": twins_s, "device": str(device),
                  "masktwins_it_per_s": 1.0 / twins_s, "dims": args.dims, "batch": args.batch,
                  "threads": torch.get_num_threads()}
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            torch.cuda.reset_peak_memory_stats(device)
            flops = _flops_per_step(twins)
            twins.step(10**5 + 1)
            result.update(gpu=name, peak_gpu_mem_gb=torch.cuda.max_memory_allocated(device) / 1e9,
                          masktwins_tflops=flops / twins_s / 1e12)
            peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
            if peak:
                result["fraction_of_bf16_peak"] = result["masktwins_tflops"] / peak
    print(f"device {result['device']}, {args.dims}D, batch {args.batch}+{args.batch}, "
          f"{torch.get_num_threads()} threads")
    print(f"plain supervised step  {plain_s * 1e3:8.1f} ms")
    print(f"MaskTwins step         {twins_s * 1e3:8.1f} ms  ({1 / twins_s:.2f} it/s)")
    print(f"ratio                  {result['step_ratio']:8.2f}   (compute floor ~3.3, goal <= 3.5)")
    if "masktwins_tflops" in result:
        print(f"achieved {result['masktwins_tflops']:.1f} TFLOP/s, peak memory "
              f"{result['peak_gpu_mem_gb']:.2f} GB on {result['gpu']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
