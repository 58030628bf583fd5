#!/usr/bin/env bash
# CUDA check in one go on an H100/H200, within a 10-minute time limit. Parts
# run in the order given, most needed first; each is stopped after PART_LIMIT seconds (default
# 240; bench_compile 420, compile 360; LIMIT_<part>=S sets one) and none starts past BUDGET
# seconds (default 540), so the log and the finished parts' files come back even when one hangs.
# Measured on an H100 / H200: tests 0.5-2.7 (2.7 on an H200, with since
# removed tests), cli 0.7-2.1 (2.1 with its stage 1 compiled; once it had 2.1
# minutes of the budget left and was stopped before predict), bench 2.3-2.5 minutes, levers 1.0,
# graph_tests 0.3, profile 0.5.
# bench_compile ran past 7.5 minutes on an H100 (compiling DenseNet-121 for both stages) and
# compiled training was no faster there (benchmarks/README.md, "torch.compile"), so the compile
# parts run only when named. Run from the repository root; results go to $OUT (set by the device
# tool) or benchmarks/results.
#
#   bash benchmarks/gpu_check.sh [PART ...]   # default: bench tests cli profile
#                                              # also: bench_compile (alone, with
#                                              # BUDGET=580 LIMIT_bench_compile=575: it ran
#                                              # past 450 s), compile (eager and compiled
#                                              # steps alternating), profile_compile (the
#                                              # compiled stage-1 step's profile), precision
#                                              # (fp32/bf16/fp16, 0.8 min; decided: bf16),
#                                              # cudnn (autotuning on/off, 2 min; decided: off),
#                                              # levers (foreach/fused, CUDA graphs on/off,
#                                              # bf16/fp16), graph_tests (graphed == eager
#                                              # steps), bn_kernels (batch norm: PyTorch's
#                                              # kernels / cuDNN), profile_fp16
#
# Writes up to eleven files: log.txt (everything printed: GPU, tables, tests, the CLI run),
# speed-cuda.json (`s2mts2 bench`: stage 1 and stage 2, model-only vs end-to-end, the reference
# pipeline, prepare; DenseNet-121, 224 px, M = 2, batch 128 labelled + 128 unlabelled in stage 2),
# profile-cuda.json (where a stage-1 step's time goes), compile-cuda.json (model-only bf16 steps
# eager and under torch.compile, alternating in one process), speed-cuda-compile.json (`s2mts2
# bench --compile`), profile-cuda-compile.json, precision-cuda.json (fp32 / bf16 / fp16 steps
# alternating; with cudnn: precision-cuda-cudnn-benchmark.json, the same with cuDNN
# autotuning), levers-cuda.json, bn-kernels-cuda.json, profile-cuda-fp16.json. The tests part
# runs the CUDA-graph tests, the augmentation tests (CUDA == CPU for the same parameters) and the
# precision, no-host-sync and resume tests on the GPU; the cli part the whole CLI on CUDA
# (prepare, stage 1 compiled under torchrun with NCCL, resume on one process with CUDA graphs,
# stage 2, evaluate, predict with Grad-CAM).
# A failing part is reported and the others still run; the exit status counts the failures.
#
# The device image has PyTorch and torchvision but no pydicom (a pure-Python wheel). Carry it:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: pydicom -d .whl
# and give the run call carry [".whl"]; this script installs whatever wheels are in .whl/.
set -uo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 OUT
PART_LIMIT="${PART_LIMIT:-240}" BUDGET="${BUDGET:-540}"
LIMIT_bench_compile="${LIMIT_bench_compile:-420}" LIMIT_compile="${LIMIT_compile:-360}"
failed=0
part() {  # part NAME: run the function NAME under a time limit, report its status
  local name=$1 left=$((BUDGET - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "=== SKIPPED: $name (${SECONDS} s of the ${BUDGET} s budget spent)"
    failed=$((failed + 1))
    return
  fi
  local own="LIMIT_$name"  # a part's own limit, e.g. LIMIT_compile=420
  local want=${!own:-$PART_LIMIT}
  local limit=$((left < want ? left : want))
  echo "=== $name ($(date -u +%T), limit ${limit} s)"
  timeout -k 10 "$limit" bash -c "$name"
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "=== FAILED: $name (exit $status$([ "$status" -eq 124 ] && echo ", time limit"))"
    failed=$((failed + 1))
  fi
}

bench() {
  python3 -m s2mts2 bench --device cuda --model densenet121 --size 224 --views 2 \
    --batch-size 128 --json "$OUT/speed-cuda.json"
}
bench_compile() {
  python3 -m s2mts2 bench --device cuda --model densenet121 --size 224 --views 2 \
    --batch-size 128 --compile --json "$OUT/speed-cuda-compile.json"
}
profile() {
  python3 benchmarks/profile_step.py --device cuda --model densenet121 --size 224 \
    --batch-size 128 --json "$OUT/profile-cuda.json"
}
profile_compile() {  # stage 1 compiled (the warm-up compiles, from Inductor's cache if warm)
  python3 benchmarks/profile_step.py --device cuda --model densenet121 --size 224 \
    --batch-size 128 --compile --json "$OUT/profile-cuda-compile.json"
}
precision_steps() {
  python3 benchmarks/precision_steps.py --device cuda --model densenet121 --size 224 \
    --channels 1 --batch-size 128 --rounds 3 --steps 10 "$@"
}
precision() {
  precision_steps --precisions fp32 bf16 fp16 --json "$OUT/precision-cuda.json"
}
compile() {  # eager / torch.compile, alternating (exact: tests/engine/test_compile.py)
  precision_steps --precisions bf16 --compile both --json "$OUT/compile-cuda.json"
}
cudnn() {  # measured on an H100: no gain, so the engine leaves autotuning off
  precision_steps --precisions fp32 bf16 --cudnn-benchmark \
    --json "$OUT/precision-cuda-cudnn-benchmark.json"
}
bn_kernels() {  # batch norm per backend (PyTorch's kernels / cuDNN), bf16 and fp16
  python3 benchmarks/batchnorm_kernels.py --device cuda --json "$OUT/bn-kernels-cuda.json"
}
levers() {  # model-only steps: foreach / fused optimiser, CUDA graphs, bf16 / fp16, alternating
  precision_steps --variants bf16+foreach+no-graphs bf16+no-graphs bf16 fp16+no-graphs fp16 \
    --json "$OUT/levers-cuda.json"
}
profile_fp16() {
  python3 benchmarks/profile_step.py --device cuda --precision fp16 --model densenet121 \
    --size 224 --batch-size 128 --json "$OUT/profile-cuda-fp16.json"
}
graph_tests() {  # CUDA graphs: replayed stage-1 steps against eager ones (seconds)
  python3 -m pytest tests/engine/test_graphs.py -q -p no:cacheprovider
}
tests() {  # with a GPU these also run their CUDA cases (resume on CUDA, CUDA == CPU, no sync)
  python3 -m pytest tests/engine/test_graphs.py tests/data/test_augment.py \
    tests/engine/test_precision.py \
    "tests/engine/test_pipeline.py::test_an_interrupted_cuda_run_resumes" -q \
    -p no:cacheprovider
}
cli() {  # the whole CLI on CUDA, as a user runs it (tiny, seconds per stage)
  local t=/tmp/s2mts2-cli sets=(--set device=cuda --set data.dir=/tmp/s2mts2-cli/data)
  rm -rf "$t"
  python3 -m s2mts2 prepare synthetic --out "$t/data" --size 32 --labelled 0.15 --option n=320 \
    --option size=48 &&
    python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m s2mts2 pretrain \
      --config tiny --no-progress "${sets[@]}" --set data.size=32 --set pretrain.epochs=2 \
      --set pretrain.monitor_every=1 --set compile=true --out "$t/pre" &&
    python3 -m s2mts2 pretrain --config tiny --no-progress "${sets[@]}" --set data.size=32 \
      --set pretrain.epochs=2 --set pretrain.monitor_every=1 --out "$t/pre" --resume &&
    python3 -m s2mts2 finetune --config tiny --no-progress "${sets[@]}" --set data.size=32 \
      --set finetune.method=s2mts2 --set finetune.pretrained="$t/pre/last.pt" --out "$t/ft" &&
    python3 -m s2mts2 evaluate "$t/ft/best.pt" --split test --device cuda &&
    python3 -m s2mts2 predict "$t/ft/best.pt" "$t/data" --top-k 1 --cam "$t/cam" \
      --out "$t/predictions.csv" --device cuda --no-progress &&
    python3 -c "import sys; from s2mts2.engine.checkpoint import load_checkpoint as l; \
s = l(sys.argv[1]); print('stage 1 history', [(h['epoch'], h.get('loss'), \
h.get('knn_mean_auc')) for h in s['history']])" "$t/pre/last.pt" &&
    head -3 "$t/predictions.csv" && { ls "$t/cam" | head -3 || true; }
}
export -f bench bench_compile profile profile_compile precision_steps precision compile cudnn \
  bn_kernels levers profile_fp16 graph_tests tests cli
main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, torch.cuda.get_device_name())"
  nproc
  local parts=("$@")
  [ ${#parts[@]} -gt 0 ] || parts=(bench tests cli profile)
  for name in "${parts[@]}"; do
    part "$name" "$name"
  done
  echo "=== done ($(date -u +%T)), $failed part(s) failed"
  return "$failed"
}
main "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
