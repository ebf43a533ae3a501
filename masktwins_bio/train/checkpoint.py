"""Checkpoints: atomic writes, safe loads, and finding the right file in a run directory.

A run directory holds ``config.yaml``, ``checkpoints/last.pt`` (written every
``checkpoint_every`` iterations and at the end) and ``checkpoints/best.pt`` (best validation IoU,
when target labels were given). Files are written to a temporary name and renamed, so a kill
leaves the previous checkpoint intact. Loading uses ``weights_only=True``: a checkpoint holds
only tensors and plain Python values, never pickled code.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError

FORMAT = "masktwins-bio/1"


def save_checkpoint(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"No checkpoint at '{path}'; check the path.") from None
    except Exception as err:  # unpickling errors come in many types
        raise CheckpointError(f"'{path}' is not a readable masktwins-bio checkpoint "
                              f"({err.__class__.__name__}); give a run directory or a .pt "
                              "file written by `masktwins-bio train`.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a masktwins-bio checkpoint; give a run directory "
                              "or a .pt file written by `masktwins-bio train`.")
    return state


def resolve_checkpoint(path: str | Path, which: str = "auto") -> Path:
    """A run directory -> its best checkpoint (else last); a file -> itself."""
    p = Path(path)
    if p.is_dir():
        ckdir = p / "checkpoints"
        order = {"auto": ["best.pt", "last.pt"], "best": ["best.pt"], "last": ["last.pt"]}[which]
        for name in order:
            if (ckdir / name).is_file():
                return ckdir / name
        raise CheckpointError(f"The run directory '{p}' holds no checkpoint "
                              f"({' or '.join(order)}); train first or give a .pt file.")
    if p.is_file():
        return p
    raise CheckpointError(f"No checkpoint or run directory at '{p}'; check the path.")
