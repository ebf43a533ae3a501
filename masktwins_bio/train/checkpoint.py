"""Checkpoints: atomic writes, safe loads, and finding the right file in a run directory.

A run directory holds ``config.yaml``, ``checkpoints/last.pt`` (written every
``checkpoint_every`` iterations and at the end) and ``checkpoints/best.pt`` (best validation IoU,
when target labels were given). Files are written to a temporary name and renamed, so a kill
leaves the previous checkpoint intact (and, at worst, a half-written temporary that the next resume
removes). Loading uses ``weights_only=True``: a checkpoint holds
only tensors and plain Python values, never pickled code.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.paths import writer_gone
from ..errors import CheckpointError

FORMAT = "masktwins-bio/1"


def save_checkpoint(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())   # on disk before it replaces the last good checkpoint (power loss)
    os.replace(tmp, path)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete half-written checkpoints left by processes that were killed mid-save.

    A temporary is named after the writer's pid, so one is stale exactly when that process no
    longer runs; a live writer's file (another rank, a concurrent run) is left alone.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except ValueError:
            continue  # not one of ours
        if not writer_gone(pid):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


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
    """A run directory -> its best checkpoint (else last); a file -> itself. ``~`` is expanded
    (a quoted path, ``--checkpoint=~/...``, the API and napari get no shell expansion)."""
    p = Path(path).expanduser()
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
