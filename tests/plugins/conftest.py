"""Fixtures of the napari plugin tests: tiny checkpoints written through the library's own
checkpoint format (milliseconds, instead of a training run), and the ``gui`` marker."""
from __future__ import annotations

import copy

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "gui: needs napari, Qt and a display (run under xvfb-run)")


def _write_checkpoint(path, dims: int, method: str = "masktwins", teacher: bool = True):
    from masktwins_bio.config import build_config
    from masktwins_bio.models import build_model
    from masktwins_bio.train.checkpoint import save_checkpoint

    crop = [32, 32] if dims == 2 else [8, 32, 32]
    cfg = build_config({"dims": dims, "method": method,
                        "model": {"channels": [4, 8, 16], "strides": [2, 2],
                                  "num_res_units": 1},
                        "data": {"crop": crop}, "mask": {"block": [2, 8, 8]}})
    torch.manual_seed(dims)
    student = build_model(cfg.model, dims)
    state = {"iteration": 7, "config": cfg.to_dict(), "model": student.state_dict(),
             "teacher": None}
    if teacher:
        # a teacher that differs from the student, as after real EMA updates
        t = copy.deepcopy(student)
        with torch.no_grad():
            for p in t.parameters():
                p.mul_(0.9)
        state["teacher"] = t.state_dict()
    save_checkpoint(state, path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict:
    """``{2: path, 3: path, "source-only": path}`` of tiny random-weight run checkpoints."""
    root = tmp_path_factory.mktemp("plugin_ckpt")
    return {2: _write_checkpoint(root / "tiny2d.pt", 2),
            3: _write_checkpoint(root / "tiny3d.pt", 3),
            "source-only": _write_checkpoint(root / "src2d.pt", 2, "source-only", False)}


@pytest.fixture(scope="session")
def target_volume() -> tuple:
    """A small synthetic target volume and its labels, (6, 64, 80)."""
    from masktwins_bio.data.synthetic import make_volume

    return make_volume("target", (6, 64, 80), seed=3)
