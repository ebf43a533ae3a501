"""Device choice and the CUDA fast paths (autocast dtype, pinned host memory)."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from ..errors import ConfigError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but no GPU is visible; use --device cpu "
                              "or --device auto.")
        return torch.device(name)
    return torch.device("cpu")


def autocast_dtype(device: torch.device, enabled: bool,
                   cpu_enabled: bool = False) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; on CPU bf16 only with ``cpu_enabled`` and
    bf16 instructions; None means full precision."""
    if device.type == "cpu":
        return torch.bfloat16 if cpu_enabled and cpu_has_bf16() else None
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@functools.lru_cache(maxsize=None)
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16). oneDNN emulates
    bf16 on other CPUs, where autocast would be slower than full precision. Linux flags only:
    elsewhere the answer is False (full precision, the safe side)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return torch.backends.mkldnn.is_available() and \
        bool({"avx512_bf16", "amx_bf16"} & set(flags))


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(array, device: torch.device) -> torch.Tensor:
    """Host array -> tensor on ``device``; pinned and non-blocking on CUDA."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t
