"""tools/bench_train.py runs on the library's defaults (it once broke when the EM teacher
context became a default, and nothing ran it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

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
