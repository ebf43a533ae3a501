"""tools/bench_train.py runs on the library's defaults (it once broke when the EM teacher
context became a default, and nothing ran it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from masktwins_bio.train.device import cpu_has_bf16

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_train.py"


def test_bench_train_times_the_official_and_the_em_default_teacher():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(TOOL), "--steps", "1", "--warmup", "0",
                          "--device", "cpu", "--json"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["step_ratio"] > 1 and result["step_ratio_em_teacher"] > 1
    assert result["em_teacher"] == {"flips": True, "context": 32}
    assert result["visible_norm_ratio"] > 0 and result["masktwins_plain_norm_step_s"] > 0
    # the arithmetic-rate figures (the GPU utilisation) come from the same code on CPU
    for key in ("plain", "masktwins", "masktwins_em_teacher"):
        assert result[f"{key}_gflop_per_step"] > 0 and result[f"{key}_tflops"] > 0
    # the official MaskTwins step does ~3.3 plain steps of work (compute floor), the EM teacher more
    assert 2.5 < result["masktwins_gflop_per_step"] / result["plain_gflop_per_step"] < 4.5
    assert result["masktwins_em_teacher_gflop_per_step"] > result["masktwins_gflop_per_step"]
    # the figures say whether they are bf16 ones (CPU bf16 autocast is the 2D default where the
    # CPU has the instructions), so full-precision and bf16 timings are not mixed up
    assert result["amp_dtype"] == ("torch.bfloat16" if cpu_has_bf16() else None)
