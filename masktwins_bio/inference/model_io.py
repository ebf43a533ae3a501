"""Load a trained network for prediction from a run directory or a checkpoint file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig, config_from_dict
from ..models import build_model
from ..train.checkpoint import load_checkpoint, resolve_checkpoint


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: RunConfig
    path: Path
    iteration: int

    @property
    def dims(self) -> int:
        return self.config.dims

    @property
    def roi(self) -> tuple[int, ...]:
        """Window size: the training crop."""
        return self.config.crop


def load_model(path: str | Path, device: torch.device | str = "cpu",
               which: str = "auto") -> LoadedModel:
    """The network a run predicts with (EMA teacher unless uda.eval_model=student), eval mode."""
    ckpt_path = resolve_checkpoint(path, which)
    state = load_checkpoint(ckpt_path, "cpu")
    cfg = config_from_dict(state["config"])
    model = build_model(cfg.model, cfg.dims)
    weights = state["model"]
    if cfg.uda.eval_model == "teacher" and state.get("teacher") is not None:
        weights = state["teacher"]
    model.load_state_dict(weights)
    model.to(device).eval()
    return LoadedModel(model, cfg, ckpt_path, int(state["iteration"]))
