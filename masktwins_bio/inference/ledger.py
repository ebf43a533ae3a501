"""The ledger of finished blocks, kept inside the output so a killed run can resume.

Layout under ``<output>/.masktwins/``::

    run.json          what the run is (input, checkpoint, plan, statistics ...), written once
    done/*.log        one append-only file per process: "z y x sum" per finished block

A line is appended only after the block's chunks are written, so a listed block is on disk; a
block written but not listed (a kill in between) is simply predicted again, with the same
bytes. Every process (a dask worker too) appends to its own file, so no two writers share one.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from pathlib import Path

from ..data.paths import write_json_atomic

LEDGER_DIR = ".masktwins"
FORMAT = "masktwins-bio/predict-1"


def ledger_dir(output: Path) -> Path:
    return Path(output) / LEDGER_DIR


def read_run(output: Path) -> dict | None:
    path = ledger_dir(output) / "run.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write_run(output: Path, run: dict) -> None:
    d = ledger_dir(output)
    (d / "done").mkdir(parents=True, exist_ok=True)
    write_json_atomic(d / "run.json", {"format": FORMAT, **run})


def finished_blocks(output: Path) -> dict[tuple[int, int, int], float]:
    """Every block listed in any log, with the sum of its probabilities."""
    done: dict[tuple[int, int, int], float] = {}
    folder = ledger_dir(output) / "done"
    if not folder.is_dir():
        return done
    for log in sorted(folder.glob("*.log")):
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue  # a line torn by a kill
            try:
                done[tuple(int(p) for p in parts[:3])] = float(parts[3])
            except ValueError:
                continue
    return done


class LedgerWriter:
    """Appends finished blocks to this process's own log; thread-safe."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self._file = None
        self._lock = threading.Lock()

    def _open(self):
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.log"
        return open(ledger_dir(self.output) / "done" / name, "a", buffering=1)

    def mark(self, block: tuple, total: float) -> None:
        with self._lock:
            if self._file is None:
                self._file = self._open()
            self._file.write(f"{block[0]} {block[1]} {block[2]} {total!r}\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __getstate__(self):
        return {"output": self.output}

    def __setstate__(self, state):
        self.__init__(state["output"])
