#!/usr/bin/env bash
# One prepared GPU check (<= 8 minutes on one GPU): CUDA tests, the training-step benchmark on
# CUDA, the inference benchmark on CUDA, and a short real-data run when ../shared is present.
# Output goes to tools/results/gpu_check_<GPU>.txt (and $OUT when the device tool sets it).
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[dev]" >/dev/null 2>&1 || python -m pip install -q -e ".[dev]"
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
mkdir -p tools/results
log="tools/results/gpu_check_${gpu}.txt"
{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on ${gpu}, commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "## CUDA tests"
  timeout 120 python -m pytest -q -m cuda tests
  echo "## bench_train (2D)"
  timeout 120 python tools/bench_train.py --device cuda --batch 8 --steps 20 --json
  echo "## bench_train (3D)"
  timeout 120 python tools/bench_train.py --device cuda --dims 3 --batch 2 --steps 10 --json
  if [ -f tools/bench_infer.py ]; then
    echo "## bench_infer"
    timeout 240 python tools/bench_infer.py --device cuda --parts equivalence,speed --json
  fi
  real=../shared/data/real
  if [ -d "$real/vnc" ] && [ -d "$real/lucchi" ]; then
    echo "## short real-data run: VNC -> Lucchi, MaskTwins, 2000 iterations"
    timeout 150 python -m masktwins_bio train --config configs/vnc_to_lucchi.yaml \
      --source-image "$real/vnc/raw" --source-label "$real/vnc/mitochondria" \
      --target-image "$real/lucchi/train/images" --target-label "$real/lucchi/train/masks" \
      --iters 2000 --device cuda --out /tmp/gpu_check_run --overwrite --quiet val_every=1000
  fi
} 2>&1 | tee "$log"
[ -n "${OUT:-}" ] && cp "$log" "$OUT/" || true
