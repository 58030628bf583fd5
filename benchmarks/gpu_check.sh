#!/usr/bin/env bash
# CUDA speed check in one go, for a session lent an H100/H200 (about 4-5 minutes of device time).
# Run from the repository root; results go to $OUT (set by the device tool) or benchmarks/results.
#
#   bash benchmarks/gpu_check.sh
#
# Writes gpu.txt (nvidia-smi), test_augment.txt (augmentation tests incl. CUDA == CPU for the same
# parameters), speed-cuda.json/.txt (stage 1 and stage 2, model-only vs end-to-end, the reference
# pipeline, prepare; DenseNet-121, 224 px, M = 2, batch 128 labelled + 128 unlabelled in stage 2),
# test_precision.txt (the mixed-precision and no-host-sync step tests, on the GPU too) and
# precision-cuda.json/.txt (fp32 / bf16 / fp16 steps alternating in one process).
#
# The device image has PyTorch and torchvision but no pydicom (a pure-Python wheel). Carry it:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: pydicom -d .whl
# and give the run call carry [".whl"]; this script installs whatever wheels are in .whl/.
set -euo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

python3 -m pytest tests/data/test_augment.py -q -p no:cacheprovider 2>&1 \
  | tee "$OUT/test_augment.txt"
python3 -m pytest tests/engine/test_precision.py -q -p no:cacheprovider 2>&1 \
  | tee "$OUT/test_precision.txt"

python3 -m s2mts2 bench --device cuda --model densenet121 --size 224 --views 2 \
  --batch-size 128 --json "$OUT/speed-cuda.json" 2>&1 | tee "$OUT/speed-cuda.txt"

# fp32 / bf16 / fp16 model-only steps alternating in one process (about 1 minute)
python3 benchmarks/precision_steps.py --device cuda --precisions fp32 bf16 fp16 \
  --model densenet121 --size 224 --channels 1 --batch-size 128 --rounds 3 --steps 10 \
  --json "$OUT/precision-cuda.json" 2>&1 | tee "$OUT/precision-cuda.txt"
# the same with cuDNN autotuning (torch.backends.cudnn.benchmark), to decide whether the engine
# should switch it on
python3 benchmarks/precision_steps.py --device cuda --precisions fp32 bf16 --cudnn-benchmark \
  --model densenet121 --size 224 --channels 1 --batch-size 128 --rounds 3 --steps 10 \
  --json "$OUT/precision-cuda-cudnn-benchmark.json" 2>&1 | tee "$OUT/precision-cuda-cudnn-benchmark.txt"
