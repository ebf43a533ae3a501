"""`masktwins-bio demo`, the README's first command, end to end with a tiny budget."""
import json

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
