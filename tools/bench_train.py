#!/usr/bin/env python
"""Time one MaskTwins training step against a plain supervised step of the same network/batch.

The compute floor of a MaskTwins step with the official teacher (one pass over the student's
crop) is ~3.3 plain steps (source forward/backward, one forward/backward over both twins = 2
more, plus one teacher forward ~1/3): ``step_ratio``, goal <= 3.5. EM runs default to a
stronger teacher (the mean over four in-plane flips of a crop 1/8 wider on each side: four
passes over 1.56x the pixels instead of one), timed too: ``step_ratio_em_teacher``. All
steps are timed through the real trainer (sampling, augmentation, optimiser, EMA included),
interleaved so machine noise hits them alike, and the medians are reported.

On CUDA it also reports each step's achieved TFLOP/s against the GPU's bf16 peak, peak GPU
memory, and the bare network's forward + backward in four layouts (default, channels-last, each
with and without cuDNN's algorithm search), to tell the network's cost from the step's.

    python tools/bench_train.py [--device cpu|cuda] [--dims 2|3] [--steps N] [--json]
    python tools/bench_train.py --device cuda --crop 512 --channels 32,64,128,256,512  # recipe
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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


OFFICIAL_TEACHER = {"teacher_flips": False, "teacher_context": 0}
# (name, method, teacher options, mask options): the official teacher, the same with plain
# instance norm on the masked views (what visible-voxel normalisation costs), then the EM
# default's rules
STEPS = (("plain", "source-only", {}, {}),
         ("masktwins", "masktwins", OFFICIAL_TEACHER, {}),
         ("masktwins_plain_norm", "masktwins", OFFICIAL_TEACHER, {"visible_norm": False}),
         ("masktwins_em_teacher", "masktwins", {}, {}))


def _crop(args) -> list[int]:
    if args.crop:
        crop = [int(v) for v in args.crop.split(",")]
        return crop * (args.dims if len(crop) == 1 else 1)
    return [256, 256] if args.dims == 2 else [32, 128, 128]


def _trainer(name: str, method: str, teacher: dict, mask: dict, args, domains,
             run_dir: Path) -> Trainer:
    model = {"channels": [int(c) for c in args.channels.split(",")]} if args.channels else {}
    if model:
        model["strides"] = [2] * (len(model["channels"]) - 1)
    cfg = build_config({"method": method, "dims": args.dims, "device": args.device,
                        "iters": 10**6, "seed": 0, "model": model,
                        "data": {"crop": _crop(args), "batch_source": args.batch,
                                 "batch_target": args.batch},
                        "uda": {"warmup_iters": 0, **teacher}, "mask": mask})
    cfg.fit_teacher_context(domains[1].image.shape)
    return Trainer(cfg, *domains, run_dir / name, progress=False)


def _flops_per_step(trainer: Trainer) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.step(10**5)
    return float(counter.get_total_flops())


def _network_flops(trainer: Trainer, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 1, *trainer.cfg.crop, device=trainer.device)
    with FlopCounterMode(display=False) as counter:
        trainer.student(x).float().square().mean().backward()
    trainer.student.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _network_seconds(trainer: Trainer, batch: int, steps: int, channels_last: bool,
                     cudnn_benchmark: bool) -> float:
    """Median forward + backward of the bare network on one fixed batch under the trainer's
    autocast: what the UNet itself costs, without sampling, augmentation, masks or optimiser.
    Layouts and cuDNN's algorithm search are tried on a copy, so the trainer is untouched."""
    import copy

    from masktwins_bio.train.device import autocast

    device = trainer.device
    net = copy.deepcopy(trainer.student).train()
    x = torch.randn(batch, 1, *trainer.cfg.crop, device=device)
    if channels_last:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        net, x = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        times = []
        for i in range(3 + steps):
            _sync(device)
            t0 = time.perf_counter()
            with autocast(device, trainer.amp_dtype):
                loss = net(x).float().square().mean()
            loss.backward()
            net.zero_grad(set_to_none=True)
            _sync(device)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    finally:
        torch.backends.cudnn.benchmark = before
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--batch", type=int, default=2, help="source and target crops per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--crop", default=None,
                   help="crop size, one number per axis or one for all (default 256^2 / 32x128^2)")
    p.add_argument("--channels", default=None,
                   help="UNet channels per level, e.g. 32,64,128,256,512 (the GPU recipe's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    data = demo_pair(args.dims, seed=0)
    # The synthetic target is as wide as the crop; reflected out to leave room for the
    # default teacher's wider crop (its content does not matter to timing).
    crop = _crop(args)
    grow = [max(0, c - n) for c, n in zip(crop, data["source"][0].shape[-len(crop):])]
    src = [np.pad(a, [(0, 0)] * (a.ndim - len(crop)) + [(0, g) for g in grow], mode="reflect")
           for a in data["source"]]
    target = np.pad(data["target"][0], [(0, 0)] * (data["target"][0].ndim - len(crop))
                    + [(0, g) for g in grow[:-2]] + [(64, 64 + g) for g in grow[-2:]],
                    mode="reflect")
    domains = (Domain.from_arrays("source", *src), Domain.from_arrays("target", target))
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: _trainer(name, method, teacher, mask, args, domains, Path(tmp))
                    for name, method, teacher, mask in STEPS}
        device = trainers["plain"].device
        times = {name: [] for name in trainers}
        for i in range(args.warmup + args.steps):
            for name, tr in trainers.items():
                _sync(device)
                t0 = time.perf_counter()
                tr.step(i)
                _sync(device)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        plain_s = statistics.median(times["plain"])
        twins_s = statistics.median(times["masktwins"])
        em_s = statistics.median(times["masktwins_em_teacher"])
        plain_norm_s = statistics.median(times["masktwins_plain_norm"])
        twins = trainers["masktwins_em_teacher"]
        em_cfg = twins.cfg
        result = {"step_ratio": twins_s / plain_s, "plain_step_s": plain_s,
                  "masktwins_step_s": twins_s, "device": str(device),
                  "masktwins_it_per_s": 1.0 / twins_s,
                  "step_ratio_em_teacher": em_s / plain_s, "masktwins_em_teacher_step_s": em_s,
                  "masktwins_em_teacher_it_per_s": 1.0 / em_s,
                  "visible_norm_ratio": twins_s / plain_norm_s,
                  "masktwins_plain_norm_step_s": plain_norm_s,
                  "em_teacher": {"flips": em_cfg.teacher_flips,
                                 "context": em_cfg.teacher_context},
                  "dims": args.dims, "batch": args.batch, "crop": crop,
                  "channels": list(trainers["plain"].cfg.model.channels),
                  "threads": torch.get_num_threads(),
                  # autocast dtype of the timed steps (None: full precision); the CPU trains
                  # under bf16 since 2026-11-30 17:30, so its earlier figures are float32 ones
                  "amp_dtype": str(twins.amp_dtype) if twins.amp_dtype else None}
        # Achieved arithmetic rate of each step: FLOPs counted once by torch's counter
        # (convolutions and matrix products), over the median time measured above.
        for name, seconds in (("plain", plain_s), ("masktwins", twins_s),
                              ("masktwins_em_teacher", em_s)):
            flops = _flops_per_step(trainers[name])
            result[f"{name}_gflop_per_step"] = flops / 1e9
            result[f"{name}_tflops"] = flops / seconds / 1e12
        # Where a step's time goes: drawing and augmenting crops on the CPU (the training loop
        # overlaps this with the GPU through its prefetcher, the timed steps above do not), and
        # the bare network's forward + backward over the source batch in each layout.
        sampling = []
        for i in range(5):
            t0 = time.perf_counter()
            trainers["masktwins"]._batches(10**5 + i)
            sampling.append(time.perf_counter() - t0)
        result["masktwins_sampling_s"] = statistics.median(sampling)
        variants = {"eager": (False, False)}
        if device.type == "cuda":
            variants.update(cudnn_benchmark=(False, True), channels_last=(True, False),
                            channels_last_cudnn_benchmark=(True, True))
        net, failed = {}, {}
        for name, flags in variants.items():
            try:  # a layout the GPU's libraries refuse is a finding, not a reason to lose the rest
                net[name] = _network_seconds(trainers["plain"], args.batch, args.steps, *flags)
            except RuntimeError as err:
                failed[name] = str(err).splitlines()[0]
        if failed:
            result["network_failed"] = failed
        result["network_fwd_bwd_s"] = net
        result["network_gflop"] = _network_flops(trainers["plain"], args.batch) / 1e9
        result["network_tflops"] = {k: result["network_gflop"] / v / 1e3 for k, v in net.items()}
        if device.type == "cuda":
            gpu = torch.cuda.get_device_name(device)
            # Peak memory of the heaviest step (the EM default teacher), from a clean mark.
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            twins.step(10**5 + 1)
            torch.cuda.synchronize(device)
            result.update(gpu=gpu, peak_gpu_mem_gb=torch.cuda.max_memory_allocated(device) / 1e9)
            peak = next((v for k, v in BF16_PEAK.items() if k in gpu), None)
            if peak:
                result["bf16_peak_tflops"] = peak
                for key in ("plain", "masktwins", "masktwins_em_teacher"):
                    result[f"{key}_fraction_of_bf16_peak"] = result[f"{key}_tflops"] / peak
                result["network_fraction_of_bf16_peak"] = {
                    k: v / peak for k, v in result["network_tflops"].items()}
    print(f"device {result['device']}, {args.dims}D, batch {args.batch}+{args.batch}, crop "
          f"{'x'.join(map(str, crop))}, channels {trainers['plain'].cfg.model.channels}, "
          f"{torch.get_num_threads()} threads, {result['amp_dtype'] or 'float32'}")
    print(f"plain supervised step  {plain_s * 1e3:8.1f} ms")
    print(f"MaskTwins step         {twins_s * 1e3:8.1f} ms  ({1 / twins_s:.2f} it/s; official "
          "teacher)")
    print(f"ratio                  {result['step_ratio']:8.2f}   (compute floor ~3.3, goal <= 3.5)")
    print(f"  with plain instance norm on the twins {plain_norm_s * 1e3:8.1f} ms: visible-voxel "
          f"norm costs x{result['visible_norm_ratio']:.3f}")
    print(f"MaskTwins step         {em_s * 1e3:8.1f} ms  ({1 / em_s:.2f} it/s; EM default "
          f"teacher: 4 flips, context {em_cfg.teacher_context})")
    print(f"ratio                  {result['step_ratio_em_teacher']:8.2f}")
    for key in ("plain", "masktwins", "masktwins_em_teacher"):
        share = result.get(f"{key}_fraction_of_bf16_peak")
        print(f"achieved {key:22s} {result[f'{key}_tflops']:8.2f} TFLOP/s"
              f" ({result[f'{key}_gflop_per_step']:.0f} GFLOP a step)"
              + (f", {100 * share:.1f}% of the bf16 peak" if share is not None else ""))
    print(f"sampling a MaskTwins batch on the CPU {result['masktwins_sampling_s'] * 1e3:8.1f} ms")
    for k, v in result["network_fwd_bwd_s"].items():
        share = result.get("network_fraction_of_bf16_peak", {}).get(k)
        print(f"network forward+backward, {k:30s} {v * 1e3:8.2f} ms "
              f"{result['network_tflops'][k]:7.2f} TFLOP/s"
              + (f" ({100 * share:.1f}% of the bf16 peak)" if share is not None else ""))
    if "gpu" in result:
        print(f"peak GPU memory {result['peak_gpu_mem_gb']:.2f} GB ({result['amp_dtype']} "
              f"autocast) on {result['gpu']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
