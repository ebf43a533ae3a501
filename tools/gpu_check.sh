#!/usr/bin/env bash
# One prepared GPU check (<= 8 minutes on one GPU; 4-6 on an H200): the training-step benchmark
# on CUDA (2D, 2D at the GPU recipe's size, 3D), the CUDA tests, the inference benchmark on
# CUDA and a short real-data run (VNC -> Lucchi, when the data is there). Every part has its
# own time limit, so one that hangs costs its slot and no more, and the log is written as it
# goes: tools/results/gpu_check_<GPU>.txt (and $OUT when the device tool sets it).
#   bash tools/gpu_check.sh                      # real data from ../shared/data/real
#   MASKTWINS_REAL_DATA=/data/real bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}  # GPU images often have python3 and no python
# Install only when the package is not importable: GPU machines are often offline, and an
# editable install without build isolation needs no index.
if ! "$PY" -c "import masktwins_bio, monai, zarr" 2>/dev/null; then
  "$PY" -m pip install -q --no-build-isolation -e ".[dev]" \
    || "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
mkdir -p tools/results
log="tools/results/gpu_check_${gpu}.txt"
real=${MASKTWINS_REAL_DATA:-../shared/data/real}
section() { echo; echo "## $* ($(date -u +%H:%M:%S))"; }
{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on ${gpu}, commit ${MASKTWINS_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)"
  section "bench_train 2D, default UNet, batch 8+8, 256^2 crops"
  timeout 50 "$PY" tools/bench_train.py --device cuda --batch 8 --steps 20 --json
  section "bench_train 2D at the GPU recipe's size: UNet 32-512, batch 2+2, 512^2 crops"
  timeout 50 "$PY" tools/bench_train.py --device cuda --batch 2 --steps 20 --crop 512 \
    --channels 32,64,128,256,512 --json
  section "bench_train 3D, default UNet, batch 2+2, 32x128x128 crops"
  timeout 45 "$PY" tools/bench_train.py --device cuda --dims 3 --batch 2 --steps 10 --json
  section "CUDA tests"
  timeout 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/train/test_cuda_paths.py \
    tests/data/test_data_prefetch.py
  if [ -f tools/bench_infer.py ]; then
    section "bench_infer"
    timeout 60 "$PY" tools/bench_infer.py --device cuda --parts equivalence,speed --json
  fi
  if [ -d "$real/vnc" ] && [ -d "$real/lucchi" ]; then
    section "short real-data run: VNC -> Lucchi, MaskTwins, GPU recipe, 2000 iterations"
    # The recipe's teacher warm-up (4000) is cut to 500 so the short run adapts for 1500.
    # On an H200 this took 135 s in one check and over 170 s (killed) in the next, so it
    # gets the largest slot and runs last.
    timeout 210 "$PY" -m masktwins_bio train --config configs/vnc_to_lucchi.yaml \
      --source-image "$real/vnc/raw" --source-label "$real/vnc/mitochondria" \
      --target-image "$real/lucchi/train/images" --target-label "$real/lucchi/train/masks" \
      --iters 2000 --device cuda --out /tmp/gpu_check_run --overwrite --quiet \
      uda.warmup_iters=500 val_every=1000 checkpoint_every=1000 image_every=1000 \
      || echo "real-data run stopped with exit status $? (124: out of its time slot)"
    cat /tmp/gpu_check_run/summary.json 2>/dev/null
  else
    section "short real-data run skipped: no VNC/Lucchi under $real"
  fi
  section "done"
} 2>&1 | tee "$log"
[ -n "${OUT:-}" ] && cp "$log" "$OUT/" || true
