"""Fixtures of the inference tests: tiny random-weight checkpoints in the library's own format
(milliseconds instead of a training run) and small volumes on disk."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch


def write_checkpoint(path, dims: int, crop=None, in_channels: int = 1, seed: int = 0):
    from masktwins_bio.config import build_config
    from masktwins_bio.models import build_model
    from masktwins_bio.train.checkpoint import save_checkpoint

    crop = crop or ([32, 32] if dims == 2 else [8, 32, 32])
    cfg = build_config({"dims": dims, "method": "source-only",
                        "model": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
                        "data": {"crop": list(crop)}, "mask": {"block": [2, 8, 8]}})
    torch.manual_seed(seed)
    model = build_model(cfg.model, dims, in_channels=in_channels)
    save_checkpoint({"iteration": 3, "config": cfg.to_dict(), "model": model.state_dict(),
                     "teacher": None}, path)
    return str(path)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("infer_ckpts")
    return {2: write_checkpoint(root / "net2d.pt", 2), 3: write_checkpoint(root / "net3d.pt", 3),
            "rgb": write_checkpoint(root / "rgb2d.pt", 2, in_channels=3)}


@pytest.fixture(scope="session")
def volume(tmp_path_factory) -> str:
    """A (10, 70, 90) uint8 TIFF stack with a voxel size of 30 x 8 x 8 nm."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    vol = ndimage.gaussian_filter(rng.random((10, 70, 90)), (1, 3, 3))
    vol = (255 * (vol - vol.min()) / (vol.max() - vol.min())).astype(np.uint8)
    path = tmp_path_factory.mktemp("infer_vol") / "vol.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / 0.008, 1 / 0.008),
                     metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"})
    return str(path)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every inference test runs its tiny networks on one torch thread (tests/conftest.py)."""
