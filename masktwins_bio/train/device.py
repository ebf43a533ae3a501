"""Device choice and the CUDA fast paths (autocast dtype, pinned host memory)."""
from __future__ import annotations

import contextlib

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


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None means full precision (CPU or disabled)."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
