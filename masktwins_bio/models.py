"""MONAI segmentation networks by name, 2D or 3D: one foreground logit (binary EM) or one
logit per class (``model.num_classes``, e.g. 19 Cityscapes classes with ``flexibleunet``)."""
from __future__ import annotations

import torch.nn as nn

from .config import ModelConfig
from .errors import ConfigError


def build_model(cfg: ModelConfig, dims: int, in_channels: int | None = None,
                out_channels: int | None = None) -> nn.Module:
    """A MONAI ``UNet`` with residual units (default), ``BasicUNet`` or ``FlexibleUNet``.

    Channels default to the config (``in_channels`` 0 means 1, ``num_classes``). Inputs must be
    divisible by the product of the strides along each axis; sliding-window inference and the
    crop sampler take care of that. ``FlexibleUNet`` never fetches weights here: see
    :func:`load_encoder_weights`.
    """
    from monai.networks.nets import BasicUNet, UNet  # imported late: MONAI import is slow

    in_channels = in_channels or cfg.in_channels or 1
    out_channels = out_channels or cfg.num_classes

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
    if cfg.name == "flexibleunet":
        from monai.networks.nets import FlexibleUNet
        from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

        if cfg.backbone not in FLEXUNET_BACKBONE.register_dict:
            raise ConfigError(f"model.backbone={cfg.backbone!r} is unknown; use one of "
                              f"{', '.join(FLEXUNET_BACKBONE.register_dict)}.")
        return FlexibleUNet(in_channels=in_channels, out_channels=out_channels,
                            backbone=cfg.backbone, pretrained=False, spatial_dims=dims,
                            norm=cfg.norm, dropout=cfg.dropout)
    raise ConfigError(f"model.name={cfg.name!r} is unknown; use unet, basicunet or "
                      "flexibleunet.")


def load_encoder_weights(model: nn.Module, path: str) -> tuple[int, int]:
    """Copy ImageNet weights from a local file into a FlexibleUNet's encoder.

    Accepts a plain state dict or one under ``state_dict``/``model``, with torchvision ResNet
    or EfficientNet-PyTorch key names (what MONAI's encoders use); ``module.``, ``encoder.``
    and ``backbone.`` prefixes are stripped, classifier weights and tensors of another shape
    (e.g. the first convolution when ``in_channels`` is not 3) are skipped. Returns (tensors
    loaded, tensors in the encoder). Nothing is ever downloaded.
    """
    from pathlib import Path

    import torch

    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ConfigError("model.pretrained needs model.name=flexibleunet (an encoder with "
                          "ImageNet weights); remove it or change the network.")
    if not Path(path).is_file():
        raise ConfigError(f"model.pretrained='{path}' does not exist; give a local weights "
                          "file (e.g. torchvision's resnet101-63fe2227.pth) or null. Weights are "
                          "never downloaded.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ConfigError(f"model.pretrained='{path}' is not a readable weights file "
                          f"({err.__class__.__name__}); give a PyTorch state dict.") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = encoder.state_dict()
    matched = {}
    for key, value in state.items():
        for prefix in ("module.", "encoder.", "backbone."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        if key in own and tuple(own[key].shape) == tuple(value.shape):
            matched[key] = value
    if not matched:
        raise ConfigError(f"model.pretrained='{path}' holds no tensor of the "
                          f"{type(encoder).__name__} encoder; give weights of the same backbone "
                          "(model.backbone).")
    encoder.load_state_dict(matched, strict=False)
    return len(matched), len(own)
