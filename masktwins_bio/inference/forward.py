"""The network as the engine runs it: fast forward, flip TTA, gaussian weights, OOM back-off.

``Predictor(x)`` maps a (n, 1, *window) float32 batch to the *weighted* logits
``importance * logits`` as a (n, *window3d) float32 array on the host, whatever the model's
dtype (autocast bf16/fp16 on CUDA). The importance map is MONAI's
``compute_importance_map(window, "gaussian", sigma_scale=0.125)``.

Faster forwards that keep results within 1e-5 of eager PyTorch (:func:`forward_variant`):
inference mode always, channels-last memory where it is faster, for 3D networks on CPU a
traced and frozen graph (batch norm folded into convolutions), and on request (``compile``) a
``torch.compile``-d network, which runs the default 2D UNet ~1.4x faster on CPU but costs
seconds (cached kernels) to a minute (first use) to build. Every variant is checked against
eager on a batch and dropped if it differs by more than 1e-4. A compiled network sees one batch
shape only (shorter batches are padded), so it never recompiles mid-run.

A volume imaged at another pixel size than the network was trained at (``zoom`` != 1, see
``predict``'s ``--pixel-nm``) is predicted through windows of the *input's* grid that cover the
network's field of view: each batch is resampled in-plane to the network's window (bilinear,
anti-aliased when shrinking, as the training source was matched) and its logits back to the
input's window, where they are weighted and blended as usual. So blocks, ledger and output keep
the input's grid, and nothing larger than a batch is ever resampled.
"""
from __future__ import annotations

import itertools
import math
import sys
import warnings

import numpy as np
import torch

from ..errors import CheckpointError, InputError

GAUSSIAN_SIGMA = 0.125


def importance_map(window: tuple[int, ...]) -> torch.Tensor:
    """MONAI's gaussian importance map of a window, float32 on CPU."""
    from monai.data.utils import compute_importance_map
    return compute_importance_map(tuple(window), mode="gaussian", sigma_scale=GAUSSIAN_SIGMA,
                                  device="cpu", dtype=torch.float32)


def input_window(window: tuple[int, ...], zoom: float) -> tuple[int, ...]:
    """The window on the input's grid that covers a network ``window`` when the input is
    resampled in-plane by ``zoom`` (2: the input's pixels are twice the network's)."""
    if zoom == 1.0:
        return tuple(window)
    return (*window[:-2], *(max(1, int(math.floor(w / zoom + 0.5))) for w in window[-2:]))


def resample_in_plane(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` (n, c, [z,] y, x) resampled in-plane to ``size``: bilinear, anti-aliased when
    shrinking; z is never mixed (a 3D window is resampled slice by slice)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    lead = x.shape[:-2]
    flat = x.reshape((-1, 1, *x.shape[-2:]))
    out = torch.nn.functional.interpolate(flat, size=tuple(size), mode="bilinear",
                                          align_corners=False, antialias=shrink)
    return out.reshape((*lead, *size))


def _memory_format(dims: int):
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def _freeze(model, example: torch.Tensor, fmt):
    """A traced, frozen copy of ``model`` (eval), or None when tracing is not faithful."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
            ref_in = torch.randn((1, *example.shape[1:])).contiguous(memory_format=fmt)
            ref = model(ref_in)
            got = frozen(ref_in)
            got = frozen(ref_in)  # the first calls of a frozen graph run its optimisation passes
        if got.shape != ref.shape or float((got - ref).abs().max()) > 1e-4:
            return None
        return frozen
    except Exception:  # any tracing failure: the eager model is always correct
        return None


def _compile(model, example: torch.Tensor, amp_dtype):
    """``torch.compile(model)``, built now on ``example``'s shape, or None when compiling fails
    (no C++ compiler, an unsupported layer) or the result is not faithful."""
    try:
        compiled = torch.compile(model, dynamic=False)
        with torch.inference_mode(), torch.autocast(example.device.type, dtype=amp_dtype,
                                                    enabled=amp_dtype is not None):
            got = compiled(example)  # the first call compiles, before any stream thread starts
            ref = model(example)
        tol = 1e-4 if amp_dtype is None else 5e-2  # bf16/fp16 round at ~1e-2 of the logit
        if got.shape != ref.shape or float((got.float() - ref.float()).abs().max()) > tol:
            return None
        return compiled
    except Exception:  # any compiler failure: the eager model is always correct
        return None


def forward_variant(device: torch.device, dims: int, optimize: bool,
                    compile: bool = False) -> str:
    """How the network runs: "eager", "channels-last", "frozen-channels-last" or "compiled".

    Chosen by rule, never by timing, so every process of a run (resumed, or a dask worker)
    computes the same bits: on CPU, 3D networks gain ~20% from a frozen channels-last graph while
    2D ones run fastest eager (measured on 2 cores, default UNet); on CUDA, channels-last.
    ``compile`` (the caller's rule: ``predict``'s ``--compile``) asks for ``torch.compile``.
    """
    if not optimize:
        return "eager"
    if compile:
        return "compiled"
    if device.type == "cuda":
        return "channels-last"
    return "frozen-channels-last" if dims == 3 else "eager"


class Predictor:
    """Runs batches of windows through ``model`` and weights them for blending."""

    def __init__(self, model: torch.nn.Module, dims: int, window: tuple[int, ...],
                 device: torch.device | str = "cpu", tta: bool = False, amp: bool = True,
                 optimize: bool = True, quiet: bool = False, compile: bool = False,
                 batch_size: int = 4, zoom: float = 1.0):
        self.device = torch.device(device)
        self.dims, self.window = dims, tuple(window)
        # the window the engine reads and blends: the network's, or on a resampled input the
        # input's pixels that cover it (module docstring)
        self.zoom = float(zoom)
        self.input_window = input_window(self.window, self.zoom)
        self.quiet = quiet
        model = model.eval().to(self.device)
        self.fmt = _memory_format(dims)
        self.amp_dtype = None
        if amp and self.device.type == "cuda":
            self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported()
                              else torch.float16)
        self.fixed_batch: int | None = None  # the one batch size a compiled network runs
        self._eager = model
        if not (forward_variant(self.device, dims, optimize, compile) == "compiled"
                and self._use_compiled(model, int(batch_size))):
            self._use_plain(model, optimize)
        self.flips = [f for k in range(dims + 1)
                      for f in itertools.combinations(range(2, 2 + dims), k)] if tta else [()]
        self.weight = importance_map(self.input_window).to(self.device)
        self.max_batch: int | None = None  # lowered after a CUDA out-of-memory error

    def _use_plain(self, model: torch.nn.Module, optimize: bool = True) -> None:
        """Run ``model`` uncompiled, as :func:`forward_variant`'s rule says (any batch size)."""
        self.variant = forward_variant(self.device, self.dims, optimize)
        self.channels_last = self.variant != "eager"
        self.model = model.to(memory_format=self.fmt) if self.channels_last else model
        self.fixed_batch = None
        if self.variant == "frozen-channels-last":
            example = torch.randn((2, 1, *self.window)).contiguous(memory_format=self.fmt)
            self.model = _freeze(self.model, example, self.fmt) or self.model

    def _use_compiled(self, model: torch.nn.Module, batch: int) -> bool:
        """Compile ``model`` for batches of ``batch`` windows; False (with a note) when that is
        not possible here, and the caller runs it uncompiled."""
        self.channels_last = self.device.type == "cuda"  # helps convolutions there only
        net = model.to(memory_format=self.fmt) if self.channels_last else model
        example = torch.randn((batch, 1, *self.window), device=self.device)
        example = example.contiguous(memory_format=self.fmt) if self.channels_last else example
        compiled = _compile(net, example, self.amp_dtype)
        if compiled is None:
            if not self.quiet:
                print("masktwins-bio: torch.compile is not available for this network here; "
                      "predicting without it.", file=sys.stderr)
            return False
        self.variant, self.model, self.fixed_batch = "compiled", compiled, batch
        return True

    @property
    def window3d(self) -> tuple[int, ...]:
        """The input window as (z, y, x): what a batch holds and the blender adds."""
        return (1, *self.input_window) if self.dims == 2 else self.input_window

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for flip in self.flips:
            xi = torch.flip(x, flip) if flip else x
            if self.channels_last:
                xi = xi.contiguous(memory_format=self.fmt)
            if self.amp_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.amp_dtype):
                    y = self.model(xi)
            else:
                y = self.model(xi)
            if isinstance(y, (tuple, list)):
                y = y[0]
            y = y.float()
            y = torch.flip(y, flip) if flip else y
            total = y if total is None else total + y
        return total / len(self.flips) if len(self.flips) > 1 else total

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = resample_in_plane(x, self.window[-2:])
        if self.fixed_batch is not None and n < self.fixed_batch:  # pad, never recompile
            x = torch.cat([x, x.new_zeros((self.fixed_batch - n, *x.shape[1:]))])
        y = self._logits(x)[:n]
        if y.shape[1] != 1 or tuple(y.shape[2:]) != self.window:
            raise CheckpointError(
                f"The network returns shape {tuple(y.shape[1:])} for a window of {self.window}, "
                "but one foreground channel of the window's size is needed; use a checkpoint of "
                "a masktwins-bio segmentation run.")
        y = resample_in_plane(y, self.input_window[-2:])
        return (y[:, 0] * self.weight).contiguous()

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if self.device.type == "cuda":
            x = x.to(self.device, non_blocking=True)
        n = x.shape[0]
        step = min(n, self.max_batch or n, self.fixed_batch or n)
        while True:
            try:
                parts = [self._run(x[i:i + step]) for i in range(0, n, step)]
                break
            except torch.cuda.OutOfMemoryError:
                if self.fixed_batch is not None:  # smaller batches need the plain network
                    self._use_plain(self._eager)
                if step == 1:
                    raise InputError("The GPU ran out of memory on a single window; use "
                                     "--device cpu or a checkpoint with a smaller crop.") from None
                step = max(1, step // 2)
                self.max_batch = step
                torch.cuda.empty_cache()
                if not self.quiet:
                    print(f"masktwins-bio: GPU out of memory; retrying with {step} windows per "
                          "pass.", file=sys.stderr)
        y = parts[0] if len(parts) == 1 else torch.cat(parts)
        y = y.reshape((n, *self.window3d))
        return y.cpu().numpy() if y.device.type != "cpu" else y.numpy()

    def check(self) -> None:
        """Run one window now, so a misfitting checkpoint fails before any output exists."""
        self(np.zeros((1, 1, *self.input_window), dtype=np.float32))
