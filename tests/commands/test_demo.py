"""`masktwins-bio demo`, the README's first command, end to end with a tiny budget."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from masktwins_bio.cli import main


def test_demo_trains_both_methods_and_reruns_in_place(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--iters", "3", "--out", str(out), "--device", "cpu", "--quiet", "--json"]
    for _ in range(2):  # a second run replaces the first (the demo's runs are its own)
        assert main(args) == 0
        table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert set(table) == {"source-only", "masktwins"}
        assert all(0.0 <= table[m]["iou"] <= 1.0 for m in table)
        for method in table:
            assert (out / method / "checkpoints" / "last.pt").is_file()
            assert (out / method / "config.yaml").is_file()


def test_demo_refuses_what_it_cannot_honour(tmp_path, cli_fails):
    """A method/dims/seed override would train another method (or data) than the row it
    prints; a crop larger than the demo volumes used to end in a traceback."""
    base = ["demo", "--iters", "1", "--methods", "source-only", "--out", str(tmp_path / "d"),
            "--quiet"]
    cli_fails(base + ["method=mic"], "Set method with --methods, not as method=...")
    cli_fails(base + ["seed=3"], "Set seed with --seed")
    cli_fails(base + ["data.crop=[512,512]"], "data.crop")
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_demo_on_a_missing_gpu_leaves_nothing(tmp_path, cli_fails):
    base = ["demo", "--iters", "1", "--out", str(tmp_path / "d"), "--quiet"]
    for device in (["--device", "cuda"], ["device=cuda"]):  # the flag or an override
        cli_fails(base + device, "CUDA was requested but no GPU is visible")
        assert not (tmp_path / "d").exists()


def test_diag_demo_reads_a_demo_run(tmp_path, capsys):
    """tools/diag_demo.py on a demo run: lower thresholds call more voxels (recall cannot
    fall), and each row's IoU is the one its precision and recall imply."""
    out = tmp_path / "demo"
    assert main(["demo", "--iters", "2", "--seed", "1", "--methods", "source-only", "--out",
                 str(out), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    tool = Path(__file__).resolve().parents[2] / "tools" / "diag_demo.py"
    done = subprocess.run([sys.executable, str(tool), "--seed", "1", "--thresholds",
                           "0.9,0.5,0.1", "--json", str(out / "source-only")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = result["runs"][str(out / "source-only")]
    assert [r["threshold"] for r in rows] == [0.9, 0.5, 0.1]
    for high, low in zip(rows, rows[1:]):
        assert low["foreground"] >= high["foreground"]
        if high["recall"] is not None:
            assert low["recall"] >= high["recall"]
    for r in rows:
        if r["precision"]:
            p, q = r["precision"], r["recall"]
            assert r["iou"] == pytest.approx(1 / (1 / p + 1 / q - 1))
