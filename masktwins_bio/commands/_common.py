"""Pieces shared by several verbs: config layering, run-directory safety, JSON lines."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from ..config import load_yaml, parse_override
from ..errors import ConfigError, InputError

# What a run directory written by `train` contains; only these are removed by --overwrite.
RUN_FILES = ("config.yaml", "summary.json", "run.json")
RUN_DIRS = ("checkpoints", "tb")


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "checkpoints").is_dir()


def clear_run(out: Path, strict: bool = True) -> None:
    """Remove a run's own files and folders from ``out`` (nothing else that lives there);
    ``strict=False`` while another error is on its way up: that one is the user's."""
    for name in (*RUN_FILES, "summary.json.tmp"):
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name, ignore_errors=not strict)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool, clear: bool = True) -> None:
    """Refuse to mix two runs in one directory; never touch files the toolkit did not write.

    ``clear=False`` only checks (and creates a missing directory): ``train`` checks first and
    replaces an old run only once its data have loaded, so a mistyped path loses nothing.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one.")
    if out.exists() and not out.is_dir():
        raise InputError(f"The output '{out}' is a file; give a directory for the run.")
    if resume:
        if not (out / "checkpoints" / "last.pt").is_file():
            raise InputError(f"Nothing to resume in '{out}' (no checkpoints/last.pt); "
                             "start the run without --resume.")
        return
    if out.is_dir() and any(out.iterdir()):
        if not is_run_dir(out):
            raise InputError(f"The output directory '{out}' holds files that are not a "
                             "masktwins-bio run; choose a new or empty directory.")
        if not overwrite:
            raise InputError(f"The output directory '{out}' holds another run; pass --resume "
                             "to continue it or --overwrite to replace it.")
        if not clear:
            return
        clear_run(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"Cannot create the output directory '{out}' ({err.strerror}); "
                         "choose a writable location.") from None


def config_layers(config_file: str | None, flags: dict, overrides: list[str]) -> list[dict]:
    """Defaults < file < flags < key=value overrides, as dict layers for build_config."""
    layers = [load_yaml(config_file) if config_file else {}]
    layers.append({k: v for k, v in flags.items() if v is not None})
    layers += [parse_override(o) for o in overrides]
    return layers


def json_line(data: dict) -> str:
    """``--json``'s last line: strict JSON, an undefined metric (NaN: no foreground, no true
    instance) written as null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return json.dumps(clean(data), allow_nan=False)
