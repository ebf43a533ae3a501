"""The config layer a natural-image run starts from.

``masktwins-bio train --source gta5 --target cityscapes`` puts :func:`natural_preset` below the
user's config file, flags and overrides, so a bare command trains the right network on the right
data; the recipes ``configs/gta_to_cityscapes.yaml`` and ``configs/synthia_to_cityscapes.yaml``
spell out full runs with these same keys.
"""
from __future__ import annotations

import copy

from .readers import canonical

NATURAL_PRESET = {
    "dims": 2,
    "model": {"name": "flexibleunet", "backbone": "resnet50", "num_classes": 19,
              "in_channels": 3, "norm": "batch"},
    "data": {"kind": "natural", "crop": [1024, 1024], "batch_source": 2, "batch_target": 2},
    "mask": {"block": [64, 64]},
    # The official MIC/MaskTwins pseudo-label loss (the EM defaults differ, see config.py).
    "uda": {"tau": 0.968, "confident_only": False},
}
# HRDA/MIC resolutions: GTA5 1914x1052 -> 2560x1407, SYNTHIA 1280x760 -> 2560x1520,
# Cityscapes at its native 2048x1024. SYNTHIA's headline is the 13-class mIoU.
_SOURCE_PRESET = {"gta5": {"source_scale": [2560, 1440], "miou_classes": 19},
                  "synthia": {"source_scale": [2560, 1520], "miou_classes": 13},
                  "cityscapes": {"source_scale": None, "miou_classes": 19}}


def natural_preset(source: str | None) -> dict:
    """The preset layer for a natural source dataset name (``gta5``, ``synthia``...)."""
    layer = copy.deepcopy(NATURAL_PRESET)
    layer["natural"] = dict(_SOURCE_PRESET.get(canonical(source) or "gta5"))
    return layer
