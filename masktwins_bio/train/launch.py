"""``train --gpus N``: start N data-parallel ranks of this same command on one node.

Each rank is ``python -m masktwins_bio`` with the environment ``torchrun`` would give it
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, a free ``MASTER_PORT`` on 127.0.0.1), so the ranks run
exactly what ``torchrun --standalone --nproc-per-node N -m masktwins_bio train …`` runs. We start
them ourselves rather than through torchrun for the user's sake: a mistake (a missing volume, a
run directory of another run) is one sentence and exit status 2, said once, where torchrun
prints every rank's message and then its own traceback and exits 1. Ranks write a user error to
a file in ``ERRORS_ENV``'s folder instead of printing it; the launcher says the first one.
When one rank fails, the others (waiting for it in a collective) are stopped.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import MaskTwinsError

ERRORS_ENV = "MASKTWINS_RANK_ERRORS"


class RankError(MaskTwinsError):
    """A user error a rank reported (its sentence is the message)."""


def rank_error_file() -> Path | None:
    """Where this rank reports a user error, when started by :func:`launch`."""
    folder = os.environ.get(ERRORS_ENV)
    return Path(folder) / f"rank{os.environ.get('RANK', '0')}.txt" if folder else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(argv: list[str], n: int) -> int:
    """Run ``masktwins-bio ARGV`` as ``n`` ranks; 0 when every rank succeeded."""
    with tempfile.TemporaryDirectory(prefix="masktwins-ranks-") as errors:
        env = {**os.environ, ERRORS_ENV: errors, "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(n),
               "LOCAL_WORLD_SIZE": str(n)}
        cmd = [sys.executable, "-m", "masktwins_bio", *argv]
        procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
                 for r in range(n)]
        try:
            while True:
                codes = [p.poll() for p in procs]
                failed = [c for c in codes if c not in (None, 0)]
                if failed or all(c == 0 for c in codes):
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            _stop(procs, grace=60.0)   # the ranks got the Ctrl-C too and stop on their own
            raise
        if failed:
            _stop(procs)
        reports = sorted(Path(errors).glob("rank*.txt"), key=lambda p: int(p.stem[4:]))
        if reports:
            raise RankError(reports[0].read_text().strip())
        return failed[0] if failed else 0
