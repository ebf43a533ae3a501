"""MONAI segmentation networks by name, 2D or 3D, one output logit channel (foreground)."""
from __future__ import annotations

import torch.nn as nn

from .config import ModelConfig
from .errors import ConfigError


def build_model(cfg: ModelConfig, dims: int, in_channels: int = 1,
                out_channels: int = 1) -> nn.Module:
    """A MONAI ``UNet`` with residual units (default) or ``BasicUNet``.

    Inputs must be divisible by the product of the strides along each axis; sliding-window
    inference and the crop sampler take care of that.
    """
    from monai.networks.nets import BasicUNet, UNet  # imported late: MONAI import is slow

    if cfg.name == "unet":
        strides = [tuple(s) if isinstance(s, (list, tuple)) else int(s) for s in cfg.strides]
        return UNet(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels,
                    channels=tuple(int(c) for c in cfg.channels), strides=tuple(strides),
                    num_res_units=cfg.num_res_units, norm=cfg.norm, dropout=cfg.dropout)
    if cfg.name == "basicunet":
        # BasicUNet takes 6 feature sizes (5 levels + the final up-conv); derive them from
        # `channels` so a single key sets the width of either network.
        ch = list(cfg.channels) + [cfg.channels[-1] * 2] * max(0, 5 - len(cfg.channels))
        feats = tuple(int(c) for c in ch[:5]) + (int(ch[0]),)
        return BasicUNet(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels,
                         features=feats, norm=cfg.norm, dropout=cfg.dropout)
    raise ConfigError(f"model.name={cfg.name!r} is unknown; use unet or basicunet.")


def divisor(cfg: ModelConfig, dims: int) -> tuple[int, ...]:
    """Per-axis factor every input size must be a multiple of."""
    if cfg.name == "basicunet":
        return (16,) * dims
    out = [1] * dims
    for s in cfg.strides:
        per_axis = list(s) if isinstance(s, (list, tuple)) else [int(s)] * dims
        out = [o * int(p) for o, p in zip(out, per_axis)]
    return tuple(out)
