"""``predict_volume``: a checkpoint and a volume in, a blended, resumable prediction on disk out.

One call plans the blocks, checks that the network fits the input, creates (or reopens with
``resume``) the output and its ledger, runs every unfinished tile locally or on a dask cluster,
and marks the output complete. A :class:`PredictJob` is everything a process needs to predict
tiles of the volume, so dask workers receive it and reload only the model (once per worker).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..data.cache import same_files
from ..data.partial import describe_inputs
from ..data.spec import parse_spec
from ..errors import CheckpointError, InputError
from .allocator import limit_arenas
from .engine import pending_works, run_tiles
from .forward import Predictor, input_window
from .ledger import finished_blocks, ledger_dir, read_run
from .outputs import output_path
from .plan import ACC_BUDGET, BlockPlan, make_plan
from .store import (DTYPES, OutputSpec, ZarrSink, check_layout, check_output, completed,
                    create_output, finalize_output)


@dataclass(frozen=True)
class PredictOptions:
    overlap: float = 0.25
    batch_size: int = 4
    tta: bool = False
    dtype: str = "float32"
    threshold: float | None = None
    block: tuple | None = None
    amp: bool = True
    optimize: bool = True
    threads: int | None = None      # torch threads per forward stream (None: leave as is)
    streams: int = 1                # forward passes at once
    budget: int = ACC_BUDGET
    compile: str = "auto"           # torch.compile: "on", "off", or "auto" (resolve_compile)
    pixel_nm: float | None = None   # the input's in-plane pixel size (None: from its metadata)
    match_pixel_size: bool | None = None  # resample to the network's pixel size: None = rule
    pixel_zoom: float = 1.0         # resolved: the in-plane factor windows are resampled by

    def validate(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"--overlap {self.overlap} must lie in [0, 1).")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size} must be at least 1.")
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype} is unknown; use {', '.join(DTYPES)}.")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise InputError(f"--threshold {self.threshold} must lie strictly between 0 and 1.")
        if self.block is not None and (len(self.block) != 3 or min(self.block) < 1):
            raise InputError(f"--block {self.block} must give three positive sizes z,y,x.")
        if (self.threads is not None and self.threads < 1) or self.streams < 1:
            raise InputError("--threads and --streams must be at least 1.")
        if self.compile not in ("auto", "on", "off"):
            raise InputError(f"--compile {self.compile} is unknown; use auto, on or off.")
        if self.pixel_nm is not None and not self.pixel_nm > 0:
            raise InputError(f"--pixel-nm {self.pixel_nm} must be a positive pixel size in nm.")


# A compiled 2D UNet runs ~1.4x faster on CPU, but building it costs ~5 s with the kernels
# cached from an earlier run and up to a minute the first time (2 cores): "auto" compiles jobs
# of at least this many windows (2D, CPU), minutes of forward passes, where that pays back.
AUTO_COMPILE_WINDOWS = 8192


def resolve_compile(choice: str, device: torch.device, dims: int, n_windows: int,
                    optimize: bool = True) -> str:
    """"on" or "off" for this job. Auto stays off on CUDA and for 3D networks, where the
    speed-up has not been measured here; ``--eager`` (optimize False) means off."""
    if not optimize:
        return "off"
    if choice != "auto":
        return choice
    large = n_windows >= AUTO_COMPILE_WINDOWS
    return "on" if device.type == "cpu" and dims == 2 and large else "off"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallelism(device: torch.device, threads: int | None, streams: int | None):
    """(threads per stream, streams): on CPU, by default one single-threaded stream per core
    (at most 4 streams), which beats one stream using every core on small convolutions; on CUDA
    two streams, so one queues work on the GPU while the other waits for its copy back."""
    if device.type == "cuda":
        return threads, streams or 2
    cores = cpu_cores()
    if streams is None:
        streams = min(cores, 4) if threads is None else max(1, cores // threads)
    return threads or max(1, cores // streams), streams


@dataclass(frozen=True)
class PredictJob:
    input: str
    checkpoint: str
    which: str
    output: OutputSpec
    plan: BlockPlan
    stats: dict | None
    options: PredictOptions = field(default_factory=PredictOptions)


def _fingerprint(job: PredictJob, shape, iteration: int, checkpoint_sha256: str,
                 device: str) -> dict:
    o = job.options
    plan = job.plan.to_dict()
    # The input's files (size, mtime) and the device type: a block computed from other data,
    # or on a GPU under autocast instead of the CPU, would not be the uninterrupted run's.
    return {"input": job.input, "input_shape": list(shape),
            "input_files": describe_inputs({"input": job.input})["input"]["files"],
            "device": device,
            "checkpoint": job.checkpoint, "iteration": iteration,
            "checkpoint_sha256": checkpoint_sha256,
            # before the plan, whose window it sets: a refusal names the cause, not the window
            "pixel_zoom": o.pixel_zoom,
            "overlap": plan.pop("overlap"), "block": plan.pop("block"),
            "batch_size": plan.pop("batch_size"), "plan": plan, "tta": o.tta,
            "dtype": o.dtype, "threshold": o.threshold, "amp": o.amp, "optimize": o.optimize,
            "compile": o.compile,
            # a CPU network's last bits depend on its thread count (how sums are split)
            "threads": o.threads if device == "cpu" else None}


def _recorded_threads(run: dict) -> int | None:
    """The CPU thread count a prediction was started with (earlier versions kept it in the
    recorded options only)."""
    return run.get("threads", (run.get("options") or {}).get("threads"))


# Fingerprint entries that outputs begun before the entry existed were made with.
_LEGACY = {"compile": "off", "pixel_zoom": 1.0}
# Entries such outputs cannot tell: a resume of one of them is not refused for lack of them.
_UNKNOWN_BEFORE = ("checkpoint_sha256", "input_files", "device")


def _check_resume(out: Path, run: dict, new: dict) -> None:
    for key, value in new.items():
        if key not in run and key in _UNKNOWN_BEFORE:
            continue
        before = _recorded_threads(run) if key == "threads" else run.get(key, _LEGACY.get(key))
        if before != value and key == "threads":
            raise InputError(f"The output '{out}' was started with --threads {before}, and "
                             "other thread counts round differently; resume with --threads "
                             f"{before} (or without --threads) or pass --overwrite to start "
                             "again.")
        if key == "input_files" and before != value and same_files(
                before, parse_spec(new["input"]).path):
            continue  # unchanged, recorded in an earlier version's format
        if before != value and key == "input_files":
            raise InputError(f"The input '{new['input']}' changed since '{out}' was started "
                             "(its files differ); resume with the same input or pass "
                             "--overwrite to start again.")
        if before != value and key == "checkpoint_sha256":
            raise InputError(f"The checkpoint '{new['checkpoint']}' is not the one '{out}' was "
                             "started with (same path, other contents); resume with that "
                             "checkpoint or pass --overwrite to start again.")
        if before != value and key == "pixel_zoom":
            raise InputError(f"The output '{out}' was started with the input resampled in-plane "
                             f"by {before:g} to the network's pixel size, now by {value:g}; "
                             "resume with the same --pixel-nm and --match-pixel-size, or pass "
                             "--overwrite to start again.")
        if before != value and key in _FLAGS:
            then, now = _FLAGS[key](before), _FLAGS[key](value)
            advice = _resume_with(then)
            raise InputError(f"The output '{out}' was started with {then} (now {now}); resume "
                             f"{'' if advice.startswith('without') else 'with '}{advice}, or "
                             "pass --overwrite to start again (its finished blocks are then "
                             "discarded).")
        if before != value:
            raise InputError(f"The output '{out}' was started with another {key} "
                             f"({before!r}, now {value!r}); resume with the same settings "
                             "or pass --overwrite to start again.")


def _switch(flag: str, on_means_flag: bool = True):
    """How a boolean option reads on the command line: the flag, or its absence."""
    return lambda v: flag if bool(v) == on_means_flag else f"no {flag}"


def _resume_with(flag_text: str) -> str:
    """"--tta" -> "--tta"; "no --tta" -> "without --tta" (the advice reads as a command)."""
    return "without " + flag_text[3:] if flag_text.startswith("no ") else flag_text


# Fingerprint entries the user sets with a flag, written as that flag with the value
# (a refusal that names the internal key leaves the user to guess the option).
_FLAGS = {
    "overlap": lambda v: f"--overlap {v}",
    "batch_size": lambda v: f"--batch-size {v}",
    "block": lambda v: "--block " + ",".join(str(int(b)) for b in v),
    "dtype": lambda v: f"--dtype {v}",
    "threshold": lambda v: "no --threshold" if v is None else f"--threshold {v}",
    "tta": _switch("--tta"),
    "amp": _switch("--no-amp", on_means_flag=False),
    "optimize": _switch("--eager", on_means_flag=False),
    "compile": lambda v: f"--compile {v}",
    "device": lambda v: f"--device {v}",
}


def _pixel_zoom(options: PredictOptions, loaded, vol, quiet: bool) -> float:
    """The in-plane factor that brings the input to the network's pixel size (1.0: none), by
    the training rule (``data/resample.py``); a note says when it is not 1."""
    from ..data.resample import in_plane_nm, network_pixel_nm, source_zoom

    if options.match_pixel_size is False:
        return 1.0
    net_nm = network_pixel_nm(loaded.config.data)
    in_nm = options.pixel_nm or in_plane_nm(vol.pixel_size)
    if options.match_pixel_size and not (net_nm and in_nm):
        missing = ("the checkpoint records no pixel size (it was trained before pixel sizes "
                   "were kept, or on data without them)" if not net_nm else
                   f"'{vol.path}' does not say its pixel size; give --pixel-nm")
        raise InputError(f"--match-pixel-size on needs both pixel sizes, but {missing}.")
    zoom = source_zoom(in_nm, net_nm, options.match_pixel_size)
    if zoom != 1.0 and not quiet:
        print(f"masktwins-bio: the input's {in_nm:g} nm pixels are resampled in-plane by "
              f"{zoom:.3g} to the network's {net_nm:g} nm (--match-pixel-size off to keep "
              "them).", file=sys.stderr)
    return zoom


def make_predictor(loaded, device, options: PredictOptions, quiet=True) -> Predictor:
    if options.threads:
        torch.set_num_threads(int(options.threads))
    predictor = Predictor(loaded.model, loaded.dims, loaded.roi, device, tta=options.tta,
                          amp=options.amp, optimize=options.optimize, quiet=quiet,
                          compile=options.compile == "on", batch_size=options.batch_size,
                          zoom=options.pixel_zoom)
    try:
        predictor.check()
    except RuntimeError as err:
        raise CheckpointError(f"The network in '{loaded.path}' does not run on one grey "
                              f"{loaded.dims}D window of {loaded.roi} ({str(err).splitlines()[0]});"
                              " give a checkpoint trained on grey EM volumes.") from None
    return predictor


def run_job(job: PredictJob, predictor: Predictor, tiles=None, done=None, progress=None,
            streams: int | None = None) -> None:
    """Predict the unfinished blocks of ``tiles`` (all tiles by default) of ``job``."""
    from ..data.normalize import IntensityStats
    from ..data.volumes import open_volume

    stats = IntensityStats.from_dict(job.stats) if job.stats is not None else None
    done = finished_blocks(job.output.path) if done is None else done
    sink = ZarrSink(job.output)
    with open_volume(job.input) as source:
        try:
            run_tiles(pending_works(job.plan, done, tiles), source, stats, predictor, sink,
                      progress, streams or job.options.streams)
        finally:
            sink.close()


def _progress(total: int, done: int, quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=total, initial=done, unit="block", file=sys.stderr, mininterval=1.0,
               desc="predict")
    return bar.update, bar.close


def _check_job(options: PredictOptions, input_spec, checkpoint, output, resume: bool,
               overwrite: bool, dask: str | None, streams: int | None):
    """(output path, mode) once every option that can be checked without the model and the
    volume is fine; nothing is created or removed before this returns."""
    from .cluster import check_address

    options.validate()
    if streams is not None and streams < 1:
        raise InputError(f"--streams {streams} must be at least 1.")
    if dask:
        check_address(dask)
    out = output_path(output, [checkpoint],
                      "pred.ome.zarr" if options.threshold is not None else "pred.zarr",
                      volumes=[input_spec])
    check_layout(OutputSpec(out, options.dtype, options.threshold))
    return out, check_output(out, resume, overwrite)


def _state_dict_error(err: RuntimeError) -> str:
    """torch's load_state_dict error in a few whole words: the first mismatched shape, or the
    first line of the message cut at a word."""
    text = str(err)
    found = re.search(r"size mismatch for (\S+): copying a param with shape "
                      r"torch\.Size\((\[.*?\])\) from checkpoint, the shape in current model "
                      r"is torch\.Size\((\[.*?\])\)", text)
    if found:
        name, saved, built = found.groups()
        return f"{name} is saved with shape {saved} but the config builds {built}"
    line = next((t.strip() for t in text.splitlines()[1:] if t.strip()), text.strip())
    return line if len(line) <= 120 else line[:120].rsplit(" ", 1)[0].rstrip(",:;") + " ..."


def predict_volume(checkpoint, input_spec, output, options: PredictOptions | None = None,
                   device="auto", which: str = "auto", resume: bool = False,
                   overwrite: bool = False, dask: str | None = None,
                   quiet: bool = False, streams: int | None = None) -> dict:
    """Predict ``input_spec`` with ``checkpoint`` into ``output``; returns a summary dict.

    ``output`` ending in ``.ome.zarr`` gets an OME-Zarr image (and ``labels/mask`` with a
    threshold), any other ``*.zarr`` name a plain zarr array. ``dask`` is a scheduler address or
    ``local:N``. ``streams`` None picks the CPU default of :func:`parallelism`.
    """
    from ..data.stats import volume_stats
    from ..data.volumes import open_volume
    from ..train.device import select_device
    from ..data.download import sha256_of
    from .model_io import load_model

    options = options or PredictOptions()
    out, mode = _check_job(options, input_spec, checkpoint, output, resume, overwrite, dask,
                           streams)
    limit_arenas()  # before any of the job's threads exist (see allocator.py)
    dev = select_device(device)
    asked_threads, asked_streams = options.threads, streams
    threads, streams = parallelism(dev, options.threads, streams)
    options = replace(options, threads=threads, streams=streams)
    try:
        loaded = load_model(checkpoint, dev, which)
    except RuntimeError as err:  # weights of another shape: channels or width differ
        raise CheckpointError(f"The network in '{checkpoint}' does not match its saved config "
                              f"({_state_dict_error(err)}); it does not run on one grey channel, "
                              "so give a checkpoint trained on grey EM volumes.") from None
    with open_volume(input_spec) as vol:
        shape, voxel_size, ndim_source = vol.shape, vol.output_voxel_size, vol.ndim_source
        if loaded.dims == 3 and ndim_source == 2:
            raise InputError(f"The checkpoint holds a 3D network but '{input_spec}' is a single "
                             "2D image; use a 2D run or give a volume.")
        options = replace(options, pixel_zoom=_pixel_zoom(options, loaded, vol, quiet))
        run = {"resume": read_run(out), "complete": (completed(out) or {}).get("run")}.get(mode)
        # Computed once per volume and clip range, then read from beside the data (stats.py).
        stats = run["stats"] if run else volume_stats(
            input_spec, low_pct=loaded.config.data.low_pct,
            high_pct=loaded.config.data.high_pct).to_dict()
    if run and dev.type == "cpu" and asked_threads is None and _recorded_threads(run):
        # a resume computes the rest with the thread count of the start, whatever this
        # machine's core count or --streams would pick, so it writes the uninterrupted bytes
        threads, streams = parallelism(dev, _recorded_threads(run), asked_streams)
        options = replace(options, threads=threads, streams=streams)
    roi = input_window(loaded.roi, options.pixel_zoom)  # the network's view, on the input
    plan = make_plan(shape, roi, loaded.dims, options.overlap, options.block,
                     options.batch_size, options.budget)
    options = replace(options, compile=resolve_compile(options.compile, dev, loaded.dims,
                                                       plan.n_windows, options.optimize))
    # Absolute paths: dask workers may run elsewhere (on a shared file system).
    job = PredictJob(os.path.abspath(os.path.expanduser(str(input_spec))),
                     str(loaded.path.resolve()), which,
                     OutputSpec(out.resolve(), options.dtype, options.threshold), plan, stats,
                     options)
    fingerprint = _fingerprint(job, shape, loaded.iteration, sha256_of(loaded.path), dev.type)
    if run is not None:
        _check_resume(out, run, fingerprint)
    if mode == "complete":
        mean = completed(out).get("mean_probability", float("nan"))
        print(f"'{out}' is already complete; nothing to resume.", file=sys.stderr)
        return {"output": str(out), "shape": tuple(shape), "blocks": plan.n_blocks,
                "resumed_blocks": plan.n_blocks, "mean_probability": mean, "dims": loaded.dims}
    threads_before = torch.get_num_threads()
    try:
        return _predict(job, loaded, dev, mode, fingerprint, voxel_size, shape, dask, quiet,
                        input_spec)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves torch as it found it


def _predict(job: PredictJob, loaded, dev, mode, fingerprint, voxel_size, shape, dask, quiet,
             input_spec) -> dict:
    out, plan, options, stats = job.output.path, job.plan, job.options, job.stats
    from .cluster import connect, run_on_dask

    # Under dask the workers predict; here the network only proves it runs on one window
    # (before the output exists), so it is not compiled for nothing.
    predictor = make_predictor(loaded, dev, replace(options, compile="off") if dask else options,
                               quiet)
    # The cluster is reached before the output exists: an unreachable one leaves nothing behind.
    with connect(dask) as client:
        if mode == "new":
            attrs = {"checkpoint": str(loaded.path), "iteration": loaded.iteration,
                     "kind": "foreground_probability", "input": str(input_spec)}
            create_output(job.output, shape, plan.block, voxel_size, attrs,
                          {**fingerprint, "stats": stats, "options": asdict(options)})
        done = finished_blocks(out)
        update, close = _progress(plan.n_blocks, len(done), quiet)
        try:
            if client is not None:
                # the device type this run is recorded with (a worker's own 'auto' could
                # pick a GPU for a run recorded on the CPU: other bits, mixed on resume)
                run_on_dask(job, client, done, device=dev.type, progress=update)
            else:
                run_job(job, predictor, done=done, progress=update)
        finally:
            close()
    sums = finished_blocks(out)
    if len(sums) < plan.n_blocks:
        raise InputError(f"Only {len(sums)} of {plan.n_blocks} blocks of '{out}' were written; "
                         "run again with --resume to finish them.")
    processes = len(list((ledger_dir(out) / "done").glob("*.log")))
    mean = finalize_output(job.output, sums, shape[0] * shape[1] * shape[2],
                           {"run": {**fingerprint, "stats": stats}, "processes": processes})
    return {"output": str(out), "shape": tuple(shape), "blocks": plan.n_blocks,
            "resumed_blocks": len(done), "mean_probability": mean, "dims": loaded.dims}
