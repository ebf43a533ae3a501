"""Networks of a training run for the widgets: the student and the EMA teacher side by side.

``load_model`` in the library returns the one network a run predicts with; the twins view needs
both, because MaskTwins trains the *student* on the twins against the *teacher*'s pseudo-labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from masktwins_bio.errors import CheckpointError


@dataclass
class RunNetworks:
    """Student and teacher (None when the run had no EMA teacher, e.g. source-only)."""

    student: torch.nn.Module
    teacher: torch.nn.Module | None
    config: object
    path: Path
    iteration: int

    @property
    def dims(self) -> int:
        return int(self.config.dims)

    @property
    def roi(self) -> tuple:
        return tuple(int(c) for c in self.config.crop)

    def describe(self) -> str:
        teacher = "student + EMA teacher" if self.teacher is not None else "student only"
        return (f"{self.config.method}, {self.dims}D, window {'×'.join(map(str, self.roi))}, "
                f"iteration {self.iteration} ({teacher})")


def checkpoint_path(text) -> Path:
    """The checkpoint file behind a path the user typed; CheckpointError when there is none."""
    from masktwins_bio.train.checkpoint import resolve_checkpoint

    if text is None or not str(text).strip() or str(text).strip() == ".":
        raise CheckpointError("No checkpoint is chosen; pick a run directory or a .pt file "
                              "written by `masktwins-bio train`.")
    return resolve_checkpoint(Path(str(text)).expanduser())


def load_networks(path, device="cpu") -> RunNetworks:
    """Student and teacher of a run directory or checkpoint file, in eval mode on ``device``."""
    from masktwins_bio.config import config_from_dict
    from masktwins_bio.models import build_model
    from masktwins_bio.train.checkpoint import load_checkpoint

    ckpt = checkpoint_path(path)
    state = load_checkpoint(ckpt, "cpu")
    cfg = config_from_dict(state["config"])
    if cfg.data.kind != "em" or cfg.model.num_classes != 1 or cfg.model.in_channels > 1:
        raise CheckpointError(f"'{ckpt}' was trained on {cfg.data.kind} images "
                              f"({cfg.model.num_classes} classes), not on grey EM volumes; "
                              "give a checkpoint of an EM run.")

    def build(weights):
        net = build_model(cfg.model, cfg.dims)
        net.load_state_dict(weights)
        return net.to(device).eval()

    teacher = build(state["teacher"]) if state.get("teacher") is not None else None
    return RunNetworks(build(state["model"]), teacher, cfg, ckpt, int(state["iteration"]))


def load_predictor(path, device="cpu", which: str = "auto"):
    """The network ``masktwins-bio predict`` uses (library ``load_model``), after a path check."""
    from masktwins_bio.inference.model_io import load_model

    checkpoint_path(path)
    return load_model(Path(str(path)).expanduser(), device, which)


def device_choices() -> list[str]:
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pick_device(name: str) -> torch.device:
    from masktwins_bio.train.device import select_device

    return select_device(name)
