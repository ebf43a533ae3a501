"""A resumed run ends with exactly the weights of an uninterrupted run, also after a kill."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from masktwins_bio.config import build_config
from masktwins_bio.data.synthetic import demo_pair
from masktwins_bio.train.domains import Domain
from masktwins_bio.train.trainer import Trainer
from masktwins_bio.train.checkpoint import load_checkpoint, remove_stale_temporaries


def _weights(run: Path) -> dict:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return {"model": state["model"], "teacher": state["teacher"],
            "optimizer": state["optimizer"]["state"], "iteration": state["iteration"]}


def _assert_same(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"]
    for part in ("model", "teacher"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for idx, st in a["optimizer"].items():
        for key, value in st.items():
            assert torch.equal(value, b["optimizer"][idx][key])


def _trainer(run: Path, method: str, tiny_domains, settings) -> Trainer:
    cfg = build_config(settings, {"method": method, "iters": 4, "data": {"crop": [32, 32]}})
    source, target = tiny_domains
    return Trainer(cfg, source, target, run, progress=False)


@pytest.fixture(scope="module")
def tiny_domains():
    data = demo_pair(2, seed=0, size="tiny")
    return (Domain.from_arrays("source", *data["source"]),
            Domain.from_arrays("target", data["target"][0]))


@pytest.mark.parametrize("method", ["masktwins", "mean-teacher", "rmask", "threshold-0.5"])
def test_resume_equals_uninterrupted(tmp_path, tiny_domains, tiny_settings, method):
    """With prior matching (the default on EM) the running pseudo-label bias travels in the
    checkpoint; without it there is none."""
    full, part = tmp_path / "full", tmp_path / "part"
    if method == "threshold-0.5":
        method, tiny_settings = "masktwins", {**tiny_settings, "uda": {"prior_match": False}}
    _trainer(full, method, tiny_domains, tiny_settings).fit()
    _trainer(part, method, tiny_domains, tiny_settings).fit(stop_at=2)  # pause after 2 of 4
    assert load_checkpoint(part / "checkpoints" / "last.pt")["iteration"] == 2
    resumed = _trainer(part, method, tiny_domains, tiny_settings)
    resumed.resume()
    resumed.fit()
    _assert_same(_weights(full), _weights(part))
    prior = load_checkpoint(full / "checkpoints" / "last.pt")["prior"]
    assert prior == load_checkpoint(part / "checkpoints" / "last.pt")["prior"]
    assert (prior is not None) == tiny_settings.get("uda", {}).get("prior_match", True)


def test_resume_with_dropout_equals_uninterrupted(tmp_path, tiny_domains, tiny_settings):
    """Dropout draws from torch's global generator, which the trainer seeds from (seed, t)."""
    settings = {**tiny_settings, "model": {**tiny_settings.get("model", {}), "dropout": 0.2}}
    full, part = tmp_path / "full", tmp_path / "part"
    _trainer(full, "masktwins", tiny_domains, settings).fit()
    _trainer(part, "masktwins", tiny_domains, settings).fit(stop_at=2)
    torch.rand(7)   # whatever else the process draws in between changes nothing
    resumed = _trainer(part, "masktwins", tiny_domains, settings)
    resumed.resume()
    resumed.fit()
    _assert_same(_weights(full), _weights(part))


def test_resume_with_more_iterations_follows_the_new_schedule(tmp_path, tiny_domains,
                                                              tiny_settings):
    """A finished poly run (learning rate 0) extended from 4 to 8 iterations: its next step
    uses the rate the 8-iteration schedule gives at step 4, not the finished run's 0."""
    from masktwins_bio.train.trainer import lr_factor

    run = tmp_path / "run"
    _trainer(run, "masktwins", tiny_domains, tiny_settings).fit()
    cfg = build_config(tiny_settings, {"method": "masktwins", "iters": 8,
                                       "data": {"crop": [32, 32]}})
    longer = Trainer(cfg, *tiny_domains, run, progress=False)
    longer.resume()
    assert longer.optimizer.param_groups[0]["lr"] == cfg.optim.lr * lr_factor(cfg, 4) > 0
    before = {k: v.clone() for k, v in longer.student.state_dict().items()}
    longer.step(4)
    assert any(not torch.equal(before[k], v) for k, v in longer.student.state_dict().items())


def test_resume_after_kill_mid_run(tmp_path, train_args):
    # All three runs are separate processes, so each starts with the same torch thread count
    # (earlier tests in this process may have changed it, and float sums depend on it).
    iters = 40
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "masktwins_bio"]
    subprocess.run(cli + train_args(full, "masktwins", extra=["--iters", str(iters)]), env=env,
                   check=True, capture_output=True)
    args = train_args(killed, "masktwins", extra=["--iters", str(iters)])
    proc = subprocess.Popen(cli + args, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:   # wait for a checkpoint from the middle of the run
            if ckpt.exists():
                it = load_checkpoint(ckpt)["iteration"] if ckpt.stat().st_size else 0
                if 3 <= it < iters - 5:
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    stopped_at = load_checkpoint(ckpt)["iteration"]
    assert stopped_at < iters
    subprocess.run(cli + train_args(killed, "masktwins", extra=["--iters", str(iters),
                                                                "--resume"]),
                   env=env, check=True, capture_output=True)
    _assert_same(_weights(full), _weights(killed))
    assert not list((killed / "checkpoints").glob("*.tmp"))


def test_half_written_checkpoints_of_dead_writers_are_removed(tmp_path):
    # A kill during torch.save leaves '.last.pt.<pid>.tmp'; resume removes it, but never the
    # temporary of a writer that still runs (another rank or run saving right now).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stale = tmp_path / f".last.pt.{dead.pid}.tmp"
        busy = tmp_path / f".last.pt.{live.pid}.tmp"
        foreign = tmp_path / ".notes.tmp"
        for f in (stale, busy, foreign):
            f.write_bytes(b"partial")
        assert remove_stale_temporaries(tmp_path) == [stale]
        assert not stale.exists() and busy.exists() and foreign.exists()
    finally:
        live.kill()
        live.wait()
