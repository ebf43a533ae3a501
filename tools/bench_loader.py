"""Benchmark the training input pipeline: chunked zarr on disk vs the same data in memory.

Prints, in one run:
  * batches/s of the whole pipeline (2D 256² crops, normalisation, default MONAI augmentation,
    collation, default DataLoader workers) fed from an on-disk OME-Zarr and from an in-memory
    array, and their ratio (goal: zarr ≥ 0.8 × memory); also the CPU time per batch of both
    (main process + workers), whose ratio does not depend on what else the machine runs;
  * crops/s of 256² 2D and 64×128² 3D crops (read + normalise + collate, default workers: with
    no per-item augmentation these are threads of this process, see masktwins_bio.data.prefetch)
    from a ≥ 4 GB zarr volume (goals: ≥ 1,000 and ≥ 200 on 2 cores);
  * the peak RSS of a process sampling augmented crops, and of one sampling plain crops through
    those threaded loaders (the larger is reported), from that ≥ 4 GB volume and from a small
    one (goal: below 1 GB, independent of the volume size).

The volumes (chunked like ``convert``'s default) are generated once into --workdir (default
$TMPDIR/masktwins-bench) and reused; delete it after changing the default chunks.
``--json`` ends with one line:
{"zarr_vs_memory": …, "zarr_vs_memory_cpu": …, "crops_per_s_2d": …, "crops_per_s_3d": …,
 "peak_rss_gb": …, "volume_gb": …}
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SMALL_SHAPE = (64, 1024, 1024)
BIG_SHAPE = (260, 4096, 4096)   # 4.36 GB of uint8


def _texture(seed: int = 0, size: int = 1024) -> np.ndarray:
    """A smooth, EM-like uint8 texture tile (blobs + membranes-ish edges + noise)."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.normal(size=(size, size)), 6)
    base = (base - base.min()) / (np.ptp(base) + 1e-9)
    noise = rng.normal(0, 0.08, (size, size))
    return np.clip((0.3 + 0.5 * base + noise) * 255, 0, 255).astype(np.uint8)


def make_volume(path: Path, shape: tuple, with_labels: bool) -> Path:
    """Write a synthetic OME-Zarr (image, optional labels/mito) block by block; reuse if there."""
    import zarr
    from masktwins_bio.data.convert import DEFAULT_CHUNKS
    from masktwins_bio.data.normalize import compute_stats
    from masktwins_bio.data.ome_zarr import copy_blocks, create_level, multiscales_meta
    if (path / "zarr.json").exists():
        return path
    tmp = path.parent / f".{path.name}.partial"
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    tex = _texture()
    t = tex.shape[0]
    reps = np.random.default_rng(1).integers(0, 256, size=4096, dtype=np.uint8)

    def image_block(b):
        zs, ys, xs = b
        out = np.empty(tuple(s.stop - s.start for s in b), np.uint8)
        for i, z in enumerate(range(zs.start, zs.stop)):
            rolled = np.roll(tex, (z * 7) % t, axis=0)
            tile = np.tile(rolled, (-(-shape[1] // t), -(-shape[2] // t)))
            out[i] = tile[ys, xs] + reps[(z + ys.start) % 4096] // 16
        return out

    def label_block(b):
        return (image_block(b) > 170).astype(np.uint8)

    root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    copy_blocks(image_block, create_level(root, "0", shape, np.uint8, DEFAULT_CHUNKS))
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [
        multiscales_meta("bench", 1, (40.0, 4.0, 4.0))]}, "masktwins": {
        "intensity": compute_stats(image_block(tuple(slice(0, n) for n in
                                                     (4,) + shape[1:]))).to_dict()}})
    if with_labels:
        group = root.create_group("labels").create_group("mito")
        copy_blocks(label_block, create_level(group, "0", shape, np.uint8, DEFAULT_CHUNKS,
                                              is_label=True))
        group.attrs.update({"ome": {"version": "0.5", "multiscales": [
            multiscales_meta("mito", 1, (40.0, 4.0, 4.0))]}})
    os.replace(tmp, path)
    return path


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and the given worker processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(os.times()[:2])
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _rate(loader, seconds: float, warmup: int = 3) -> tuple[float, int, float]:
    """(batches/s, items per batch, CPU seconds per batch) over ``seconds`` after warm-up."""
    it = iter(loader)
    for _ in range(warmup):
        batch = next(it)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    n, start, cpu0 = 0, time.perf_counter(), _cpu_seconds(pids)
    while time.perf_counter() - start < seconds:
        batch = next(it)
        n += 1
    cpu = (_cpu_seconds(pids) - cpu0) / n
    return n / (time.perf_counter() - start), int(batch["image"].shape[0]), cpu


def pipeline_probe(small: str, kind: str, seconds: float, workers: int | None,
                   batch: int) -> None:
    """Child process: batches/s of the full 2D pipeline fed from zarr or from memory."""
    from masktwins_bio.data.sampling import CropDataset, make_loader
    from masktwins_bio.data.stats import volume_stats
    from masktwins_bio.data.volumes import load_image
    image, labels = small, f"{small}:labels/mito"
    stats = volume_stats(image)
    if kind == "memory":
        image, labels = load_image(image), load_image(labels)
    ds = CropDataset(image, labels, crop=(256, 256), seed=0, normalise=stats)
    rate, _, cpu = _rate(make_loader(ds, batch, workers=workers), seconds)
    print(rate, cpu)


def pipeline_rates(small: Path, seconds: float, workers: int | None, batch: int) -> dict:
    """Each pipeline in a fresh process (same start-up for both), alternated three times; the
    median of each is kept (the 2 cores are shared, so single measurements are noisy)."""
    rates = {"zarr": [], "memory": []}
    cpu = {"zarr": [], "memory": []}
    for _ in range(3):
        for kind in rates:
            cmd = [sys.executable, __file__, "--pipeline-probe", kind, "--small", str(small),
                   "--seconds", str(seconds), "--batch", str(batch)]
            if workers is not None:
                cmd += ["--workers", str(workers)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rate, per_batch = out.stdout.strip().splitlines()[-1].split()
            rates[kind].append(float(rate))
            cpu[kind].append(float(per_batch))
    result = {k: float(np.median(v)) for k, v in rates.items()}
    result.update({f"{k}_cpu": float(np.median(v)) for k, v in cpu.items()})
    return result


def crop_rates(big: Path, seconds: float, workers: int | None) -> dict:
    from masktwins_bio.data.sampling import CropDataset, make_loader
    out = {}
    for name, crop, batch in (("2d", (256, 256), 64), ("3d", (64, 128, 128), 8)):
        ds = CropDataset(str(big), crop=crop, seed=1, transform=None)
        rate, per, cpu = _rate(make_loader(ds, batch, workers=workers), seconds)
        out[name] = rate * per
        out[f"{name}_cpu_ms"] = cpu / per * 1e3  # CPU time per crop, all processes
    return out


def rss_probe(path: str, n: int, mode: str) -> None:
    """Child process: sample ``n`` crops of 2D then 3D from ``path``, either augmented one by
    one in-process (``augmented``) or plain through the loaders of ``crop_rates`` (``loader``:
    threads of this process, whose prefetched batches and buffer pool count here); print the
    peak RSS (bytes)."""
    from masktwins_bio.data.sampling import CropDataset, make_loader
    if mode == "augmented":
        for crop in ((256, 256), (64, 128, 128)):
            ds = CropDataset(path, crop=crop, seed=2)
            for i in range(n):
                ds[i]
    else:
        for crop, batch in (((256, 256), 64), ((64, 128, 128), 8)):
            loader = make_loader(CropDataset(path, crop=crop, seed=3, transform=None), batch)
            for _, _ in zip(range(-(-n // batch)), loader):
                pass
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
    print(hwm)


def peak_rss(path: Path, n: int) -> dict:
    """Peak RSS (GB) of each sampling mode, each in its own process as a training run is."""
    out = {}
    for mode in ("augmented", "loader"):
        run = subprocess.run([sys.executable, __file__, "--rss-probe", str(path), "--n", str(n),
                              "--rss-mode", mode], capture_output=True, text=True, check=True)
        out[mode] = int(run.stdout.strip().splitlines()[-1]) / 1e9
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "masktwins-bench"))
    p.add_argument("--seconds", type=float, default=8.0, help="timing window per measurement")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: "
                                                             "one per core, up to 8)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rss-crops", type=int, default=300)
    p.add_argument("--json", action="store_true")
    p.add_argument("--rss-probe", help=argparse.SUPPRESS)
    p.add_argument("--rss-mode", default="augmented", help=argparse.SUPPRESS)
    p.add_argument("--pipeline-probe", choices=("zarr", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--small", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=300, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_probe:
        rss_probe(args.rss_probe, args.n, args.rss_mode)
        return
    if args.pipeline_probe:
        pipeline_probe(args.small, args.pipeline_probe, args.seconds, args.workers, args.batch)
        return
    from masktwins_bio.data.sampling import default_workers
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    small = make_volume(work / "small.ome.zarr", SMALL_SHAPE, with_labels=True)
    big = make_volume(work / "big.ome.zarr", BIG_SHAPE, with_labels=False)
    volume_gb = float(np.prod(BIG_SHAPE)) / 1e9
    print(f"volumes ready in {time.perf_counter() - t0:.0f} s: small {SMALL_SHAPE}, "
          f"big {BIG_SHAPE} ({volume_gb:.2f} GB); workers={args.workers or default_workers()}")
    pipe = pipeline_rates(small, args.seconds, args.workers, args.batch)
    ratio = pipe["zarr"] / pipe["memory"]
    cpu_ratio = pipe["memory_cpu"] / pipe["zarr_cpu"]
    print(f"pipeline (2D 256², norm, default aug, batch {args.batch}): zarr "
          f"{pipe['zarr']:.1f} batches/s, memory {pipe['memory']:.1f} batches/s, "
          f"ratio {ratio:.2f} (goal ≥ 0.8); CPU per batch zarr {pipe['zarr_cpu'] * 1e3:.0f} ms, "
          f"memory {pipe['memory_cpu'] * 1e3:.0f} ms, ratio {cpu_ratio:.2f} (what a quiet "
          "machine's batches/s ratio would be)")
    crops = crop_rates(big, args.seconds, args.workers)
    cores = len(os.sched_getaffinity(0))
    print(f"crops/s from the {volume_gb:.1f} GB zarr: 2D 256² {crops['2d']:.0f} (goal ≥ 1000), "
          f"3D 64×128² {crops['3d']:.0f} (goal ≥ 200); CPU per crop 2D "
          f"{crops['2d_cpu_ms']:.2f} ms, 3D {crops['3d_cpu_ms']:.2f} ms, i.e. "
          f"{cores * 1e3 / crops['2d_cpu_ms']:.0f} and {cores * 1e3 / crops['3d_cpu_ms']:.0f} "
          f"crops/s on {cores} otherwise idle cores")
    rss_big_modes = peak_rss(big, args.rss_crops)
    rss_small_modes = peak_rss(small, args.rss_crops)
    rss_big, rss_small = max(rss_big_modes.values()), max(rss_small_modes.values())
    print(f"peak RSS sampling crops: {rss_big:.2f} GB from the {volume_gb:.1f} GB volume, "
          f"{rss_small:.2f} GB from the {np.prod(SMALL_SHAPE) / 1e9:.2f} GB one (goal < 1 GB, "
          f"size-independent); augmented one by one / through the loader threads: "
          f"{rss_big_modes['augmented']:.2f} / {rss_big_modes['loader']:.2f} GB and "
          f"{rss_small_modes['augmented']:.2f} / {rss_small_modes['loader']:.2f} GB")
    if args.json:
        print(json.dumps({"zarr_vs_memory": round(ratio, 3),
                          "zarr_vs_memory_cpu": round(cpu_ratio, 3),
                          "crops_per_s_2d": round(crops["2d"]),
                          "crops_per_s_3d": round(crops["3d"]), "peak_rss_gb": round(rss_big, 3),
                          "volume_gb": round(volume_gb, 2)}))


if __name__ == "__main__":
    main()
