#!/usr/bin/env python
"""Out-of-core sliding-window inference against MONAI, measured in one run.

1. Equivalence: our engine vs MONAI ``sliding_window_inference(mode="gaussian",
   padding_mode="reflect")`` on in-memory volumes (2D and 3D networks, one axis shorter than
   the window), max |difference| of the probabilities.
2. Speed, on-disk zarr to on-disk zarr with the default 2D UNet: ours (``predict_volume``, the
   CLI's path: load checkpoint, statistics, predict, write) vs MONAI end to end (load checkpoint,
   read the volume, statistics, ``sliding_window_inference``, sigmoid, write the same zarr) at our
   ``sw_batch_size`` and at MONAI's default 1, and vs the bare forward of the same windows (no
   I/O, no blending) through our forward (the variant ``predict`` picks for the job: eager for
   small 2D jobs on CPU, ``torch.compile``-d from 8,192 windows, see ``--compile``) and through
   the eager model. Same threads for all; methods interleaved over rounds, best round of each
   reported; the timed outputs of ours and MONAI are compared too (max |difference|).
3. Memory: peak RSS of ``masktwins-bio predict`` (a subprocess, the path users run) on a
   >= 4 GB zarr volume and on one four times smaller, with a small network.

    python tools/bench_infer.py [--device cpu|cuda] [--rounds N] [--json]
    python tools/bench_infer.py --parts speed --speed-shape 336,1024,1024 --rounds 1 --json
        # a job large enough (8,400 windows) for predict's default to compile the network
"""
from __future__ import annotations

import argparse
import atexit
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masktwins_bio.config import ModelConfig, build_config  # noqa: E402
from masktwins_bio.models import build_model  # noqa: E402
from masktwins_bio.train.checkpoint import save_checkpoint  # noqa: E402


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def write_checkpoint(path: Path, dims: int, crop, model: dict | None = None) -> str:
    cfg = build_config({"dims": dims, "method": "source-only", "model": model or {},
                        "data": {"crop": list(crop)}, "mask": {"block": [1, 8, 8]}})
    torch.manual_seed(0)
    net = build_model(cfg.model, dims)
    save_checkpoint({"iteration": 0, "config": cfg.to_dict(), "model": net.state_dict(),
                     "teacher": None}, path)
    return str(path)


def write_zarr(path: Path, shape, chunks, dtype="uint8", seed=0) -> None:
    """A smooth-ish EM-like volume, written slab by slab (never whole in memory)."""
    import zarr
    from scipy import ndimage
    from zarr.codecs import BloscCodec

    arr = zarr.create_array(store=str(path), shape=shape, chunks=chunks, dtype=dtype,
                            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
                            overwrite=True)
    rng = np.random.default_rng(seed)
    tile = ndimage.gaussian_filter(rng.random((chunks[0], min(shape[1], 1024),
                                               min(shape[2], 1024))), (0.5, 2, 2))
    tile = np.rint(255 * (tile - tile.min()) / (tile.max() - tile.min())).astype(np.uint8)
    for z in range(0, shape[0], chunks[0]):
        n = min(chunks[0], shape[0] - z)
        reps = (1, -(-shape[1] // tile.shape[1]), -(-shape[2] // tile.shape[2]))
        slab = np.roll(np.tile(tile[:n], reps), z, axis=2)[:, :shape[1], :shape[2]]
        arr[z:z + n] = slab.astype(dtype)


# -- 1. equivalence ----------------------------------------------------------------------------
@torch.inference_mode()
def monai_probability(model, image, dims, roi, overlap, batch, device="cpu"):
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(image)[:, None] if dims == 2 else torch.from_numpy(image)[None, None]
    y = sliding_window_inference(x.to(device), roi, batch, model, overlap=overlap,
                                 mode="gaussian", padding_mode="reflect")
    y = torch.sigmoid(y.float())
    return (y[:, 0] if dims == 2 else y[0, 0]).cpu().numpy()


def equivalence(device) -> float:
    """Both sides in float32 (no autocast, no TF32): autocast would move results past 1e-4."""
    from masktwins_bio.inference.engine import blend_array

    torch.backends.cudnn.allow_tf32 = False
    worst = 0.0
    cases = [(2, (6, 300, 200), (128, 128), (3, 128, 96)),
             (2, (3, 100, 260), (128, 128), None),          # y shorter than the window
             (3, (20, 100, 90), (16, 64, 64), (8, 48, 48)),
             (3, (10, 80, 70), (16, 64, 64), None)]         # z shorter than the window
    for dims, shape, roi, block in cases:
        torch.manual_seed(dims)
        model = build_model(ModelConfig(), dims).eval().to(device)
        image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        ref = monai_probability(model, image, dims, roi, 0.25, 4, device)
        ours = blend_array(model, image, dims, roi, 0.25, 4, device, block=block, amp=False)
        worst = max(worst, float(np.abs(ours - ref).max()))
    return worst


# -- 2. speed ----------------------------------------------------------------------------------
def ours_end_to_end(ckpt, src, out, batch, device, compile="auto") -> float:
    from masktwins_bio.inference.predict import PredictOptions, predict_volume

    t = time.perf_counter()
    # amp off: the peer runs float32 and autocast would move results past 1e-4.
    predict_volume(ckpt, src, out, PredictOptions(batch_size=batch, amp=False, compile=compile),
                   device=device, overwrite=True, quiet=True)
    _sync(device)
    return time.perf_counter() - t


def monai_end_to_end(ckpt, src, out, batch, device, block) -> float:
    import zarr
    from zarr.codecs import BloscCodec

    from masktwins_bio.data.normalize import compute_stats
    from masktwins_bio.inference.model_io import load_model

    t = time.perf_counter()
    loaded = load_model(ckpt, device)
    image = zarr.open_array(src, mode="r")[:]
    d = loaded.config.data
    x = compute_stats(image, d.low_pct, d.high_pct).apply(image)
    prob = monai_probability(loaded.model, x, loaded.dims, loaded.roi, 0.25, batch, device)
    arr = zarr.create_array(store=out, shape=prob.shape, chunks=block, dtype="float32",
                            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
                            fill_value=0, overwrite=True)
    arr[:] = prob
    return time.perf_counter() - t


@torch.inference_mode()
def forward_only(fn, n_windows, batch, window, device, streams: int = 1) -> float:
    """Seconds to run ``n_windows`` windows through ``fn`` in batches, ``streams`` at once."""
    import threading

    x = torch.randn((batch, 1, *window), device=device)
    fn(x)
    _sync(device)
    starts = list(range(0, n_windows, batch))

    def part(k):
        with torch.inference_mode():
            for i in starts[k::streams]:
                fn(x[:min(batch, n_windows - i)])

    t = time.perf_counter()
    threads = [threading.Thread(target=part, args=(k,)) for k in range(1, streams)]
    for th in threads:
        th.start()
    part(0)
    for th in threads:
        th.join()
    _sync(device)
    return time.perf_counter() - t


def _threaded(threads: int, fn):
    def run():
        torch.set_num_threads(threads)
        return fn()
    return run


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (a load-independent measure of work done)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@torch.inference_mode()
def _pilot(fn, batch, window, device, threads) -> float:
    """Seconds per window of ``fn`` at ``threads`` threads (best of 3 passes after a warm-up)."""
    torch.set_num_threads(threads)
    x = torch.randn((batch, 1, *window), device=device)
    fn(x)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t = time.perf_counter()
        fn(x)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best / batch


def _hopeless(name: str, times: dict) -> bool:
    """A thread layout over twice as slow as its sibling cannot be a method's best: skip its
    repeats (on a shared, loaded machine a 2-thread OpenMP run can be ten times slower)."""
    method = name.split("@")[0]
    siblings = [min(v) for k, v in times.items() if k.split("@")[0] == method and k != name]
    return bool(siblings) and min(times[name]) > 2 * min(siblings)


def speed(work: Path, device, rounds: int, batch: int, shape, compile: str = "auto") -> dict:
    from masktwins_bio.inference.forward import Predictor
    from masktwins_bio.inference.model_io import load_model
    from masktwins_bio.inference.plan import default_block, make_plan
    from masktwins_bio.inference.predict import cpu_cores, parallelism, resolve_compile

    roi = (256, 256)
    ckpt = write_checkpoint(work / "unet2d.pt", 2, roi)
    src = work / f"speed_{'x'.join(map(str, shape))}.zarr"
    block = default_block(shape, 2)
    if not src.exists():
        write_zarr(src, shape, (8, 256, 256))
    plan = make_plan(shape, roi, 2, 0.25, None, batch)
    loaded = load_model(ckpt, device)
    # Our forward variant (forward.py), compiled when predict's rule compiles this job. Built
    # before any timed run: a compile here also fills torch's kernel cache, so the timed runs of
    # `ours` pay what every run after a machine's first one pays (compile_seconds: this build).
    compiled = resolve_compile(compile, torch.device(device), 2, plan.n_windows) == "on"
    # A copy taken first: the Predictor converts the module it is given in place (channels-last
    # on CUDA and for 3D), and the eager baseline must stay the plain module.
    eager = copy.deepcopy(loaded.model).eval()
    t = time.perf_counter()
    fast = Predictor(loaded.model, 2, roi, device, compile=compiled, batch_size=batch,
                     amp=False, quiet=True)
    compile_seconds = time.perf_counter() - t if compiled else 0.0
    cores = cpu_cores() if torch.device(device).type == "cpu" else torch.get_num_threads()
    threads, streams = parallelism(torch.device(device), None, None)
    threads = threads or torch.get_num_threads()

    def our_forward(x):
        return fast.model(x.contiguous(memory_format=fast.fmt) if fast.channels_last else x)

    def monai(b, t):
        name = f"m{b}_{t}.zarr"
        return _threaded(t, lambda: monai_end_to_end(ckpt, str(src), str(work / name), b,
                                                     device, block))

    def fwd(fn, t, k):
        return _threaded(t, lambda: forward_only(fn, plan.n_windows, batch, roi, device, k))

    runs = {"ours": lambda: ours_end_to_end(ckpt, str(src), str(work / "ours.zarr"), batch,
                                            device, compile)}
    # Every peer setting gets both thread layouts and is credited with its best. A short pilot
    # first: a layout whose forward is over twice as slow per window as the other (a 2-thread
    # OpenMP run on a loaded machine can be ten times slower) cannot be the best; skip it.
    layouts = sorted({cores, 1}, reverse=True)
    pilot = {(b, t): _pilot(eager, b, roi, device, t) for b in {batch, 1} for t in layouts}
    skipped = {}
    for b, name in ((batch, "monai"), (1, "monai_default")):
        fastest = min(pilot[(b, t)] for t in layouts)
        for t in layouts:
            if pilot[(b, t)] > 2 * fastest:
                skipped[f"{name}@{t}"] = round(pilot[(b, t)] / fastest, 1)
                continue
            runs[f"{name}@{t}"] = monai(b, t)
    if f"monai@{cores}" in runs:
        runs[f"forward@{cores}"] = fwd(our_forward, cores, 1)
        runs[f"eager_forward@{cores}"] = fwd(eager, cores, 1)
    if streams > 1:
        runs[f"forward@1x{streams}"] = fwd(our_forward, threads, streams)
        runs[f"eager_forward@1x{streams}"] = fwd(eager, threads, streams)
    times = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    names = list(runs)
    for r in range(rounds):
        # Rotate the order every round, so no method always follows the same neighbour.
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = runs[name]
            if r and _hopeless(name, times):
                continue
            c = _cpu_seconds()
            times[name].append(fn())
            cpu[name].append(_cpu_seconds() - c)
    best = {k: min(v) for k, v in times.items()}
    ran = {"monai": batch, "monai_default": 1}  # outputs written by this call's peer runs
    peer = next((work / f"m{ran[k.split('@')[0]]}_{k.split('@')[1]}.zarr" for k in times
                 if k.split("@")[0] in ran and times[k]), None)
    diff = _max_diff(work / "ours.zarr", peer) if peer else float("nan")

    def best_of(prefix):
        return min(v for k, v in best.items() if k.split("@")[0] == prefix)

    ours = best["ours"]
    cpu_best = {k: min(v) for k, v in cpu.items()}
    return {"windows": plan.n_windows, "seconds": {k: round(v, 2) for k, v in best.items()},
            "forward_variant": fast.variant, "compile_seconds": round(compile_seconds, 1),
            "max_abs_diff_timed_outputs": diff,
            "skipped_slower_than_2x": skipped,
            "cpu_seconds": {k: round(v, 2) for k, v in cpu_best.items()},
            "streams": streams, "threads": threads,
            "speedup_vs_monai": best_of("monai") / ours,
            "speedup_vs_monai_default": best_of("monai_default") / ours,
            "fraction_of_forward": best_of("forward") / ours,
            "fraction_of_eager_forward": best_of("eager_forward") / ours}


def _max_diff(a: Path, b: Path) -> float:
    """max |a - b| of two zarr arrays of the same shape, slab by slab."""
    import zarr
    x, y = zarr.open_array(str(a), mode="r"), zarr.open_array(str(b), mode="r")
    return max(float(np.abs(x[z:z + 8] - y[z:z + 8]).max()) for z in range(0, x.shape[0], 8))


# -- 3. memory ---------------------------------------------------------------------------------
# Linux keeps a process's peak RSS across exec, so a child forked from this (large) benchmark
# process would report at least this process's RSS at the fork. A small launcher, itself just
# started, forks the measured command instead and reports that grandchild's own peak.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def peak_rss_gb(cmd) -> float:
    """Peak RSS (GB of 1e9 bytes, as ``volume_gb``) of ``cmd`` alone, measured by the kernel
    over its whole life."""
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True,
                          text=True)
    try:
        maxrss_kib, code = (int(v) for v in proc.stdout.split()[-2:])
    except ValueError:
        raise RuntimeError(f"the launcher failed: {proc.stderr[-2000:]}") from None
    if code != 0:
        raise RuntimeError(f"predict failed ({code}): {proc.stderr[-2000:]}")
    return maxrss_kib * 1024 / 1e9  # KiB -> GB


def memory(work: Path, device, gb: float, dtype: str) -> dict:
    roi = (512, 512)
    ckpt = write_checkpoint(work / "small2d.pt", 2, roi,
                            {"channels": [2, 4], "strides": [2], "num_res_units": 0})
    itemsize = np.dtype(dtype).itemsize
    side = 4096
    z_big = max(8, int(round(gb * 2**30 / (side * side * itemsize) / 8)) * 8)
    out = {}
    for name, z in (("small", z_big // 4), ("big", z_big)):
        src = work / f"mem_{name}_{dtype}_{z}.zarr"
        if not src.exists():
            write_zarr(src, (z, side, side), (8, 512, 512), dtype)
        cmd = [sys.executable, "-m", "masktwins_bio", "predict", "--checkpoint", ckpt,
               "--input", str(src), "--output", str(work / f"mem_{name}_pred.zarr"),
               "--overwrite", "--quiet", "--device", device, "--overlap", "0",
               "--batch-size", "8", "--dtype", "float16"]
        t = time.perf_counter()
        out[name] = peak_rss_gb(cmd)
        out[f"{name}_seconds"] = round(time.perf_counter() - t, 1)
        out[f"{name}_gb"] = z * side * side * itemsize / 1e9
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the speed part")
    p.add_argument("--batch", type=int, default=4,
                   help="windows per forward pass, ours and MONAI (4: the CLI default)")
    p.add_argument("--speed-shape", default="32,768,768", help="Z,Y,X of the speed volume")
    p.add_argument("--memory-gb", type=float, default=4.3, help="size of the big volume")
    p.add_argument("--memory-dtype", default="float32", choices=("uint8", "float32"))
    p.add_argument("--threads", type=int, default=None, help="torch threads for everything")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="predict's --compile for ours (auto: 2D CPU jobs of >= 8192 windows)")
    p.add_argument("--workdir", default=None, help="keep volumes here between runs")
    p.add_argument("--parts", default="equivalence,speed,memory",
                   help="comma-separated parts to run")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_infer_"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.workdir:  # its volumes take ~4.5 GB: never leave them behind, failed or not
        atexit.register(shutil.rmtree, work, True)
    shape = tuple(int(v) for v in args.speed_shape.split(","))

    parts = set(args.parts.split(","))
    diff = equivalence(device) if "equivalence" in parts else float("nan")
    torch.backends.cudnn.allow_tf32 = True  # the speed part: PyTorch's default, for all methods
    print(f"equivalence: max |ours - MONAI| = {diff:.2e}")
    sp = (speed(work, device, args.rounds, args.batch, shape, args.compile)
          if "speed" in parts else None)
    if sp is None:
        sp = {k: float("nan") for k in ("speedup_vs_monai", "speedup_vs_monai_default",
                                        "fraction_of_forward", "fraction_of_eager_forward")}
        sp.update({"windows": 0, "seconds": {}, "streams": 0, "threads": 0})
    print(f"speed ({shape}, {sp['windows']} windows of 256x256, batch {args.batch}; ours: "
          f"{sp['streams']} streams x {sp['threads']} threads, forward "
          f"{sp.get('forward_variant')} (built in {sp.get('compile_seconds')} s); name@threads): "
          f"seconds {sp['seconds']}")
    if sp.get("skipped_slower_than_2x"):
        print(f"  skipped after the pilot (times slower per window than the same method's "
              f"other layout): {sp['skipped_slower_than_2x']}")
    if sp.get("cpu_seconds"):
        print(f"  CPU seconds (all threads; independent of other load): {sp['cpu_seconds']}")
    print(f"  ours / MONAI(batch {args.batch}) {sp['speedup_vs_monai']:.2f}x, ours / MONAI"
          f"(batch 1) {sp['speedup_vs_monai_default']:.2f}x, fraction of our forward "
          f"{sp['fraction_of_forward']:.2f}, of the eager forward "
          f"{sp['fraction_of_eager_forward']:.2f}; max |ours - MONAI| of the timed outputs "
          f"{sp.get('max_abs_diff_timed_outputs', float('nan')):.1e}")
    mem = {} if "memory" not in parts else memory(work, device, args.memory_gb, args.memory_dtype)
    if mem:
        print(f"memory: peak RSS {mem['big']:.2f} GB on {mem['big_gb']:.2f} GB "
              f"({mem['big_seconds']} s), {mem['small']:.2f} GB on {mem['small_gb']:.2f} GB "
              f"({mem['small_seconds']} s)")
    result = {"max_abs_diff_vs_monai": diff,
              "speedup_vs_monai": round(sp["speedup_vs_monai"], 3),
              "speedup_vs_monai_default": round(sp["speedup_vs_monai_default"], 3),
              "fraction_of_forward": round(sp["fraction_of_forward"], 3),
              "peak_rss_gb": round(mem["big"], 3) if mem else None,
              "peak_rss_gb_small": round(mem["small"], 3) if mem else None,
              "volume_gb": round(mem["big_gb"], 2) if mem else None,
              "device": torch.cuda.get_device_name(0) if device == "cuda" else
              f"cpu ({os.cpu_count()} cores)",
              "fraction_of_eager_forward": round(sp["fraction_of_eager_forward"], 3),
              "forward_variant": sp.get("forward_variant"),
              "max_abs_diff_timed_outputs": sp.get("max_abs_diff_timed_outputs"),
              "compile_seconds": sp.get("compile_seconds"),
              "seconds": sp["seconds"], "cpu_seconds": sp.get("cpu_seconds"),
              "skipped": sp.get("skipped_slower_than_2x")}
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(f"load average at the end: {result['load_average']} on {os.cpu_count()} CPUs")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
