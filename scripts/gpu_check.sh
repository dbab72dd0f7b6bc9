#!/usr/bin/env bash
# The GPU checks in one run on a GPU machine: bench/gpu_kernels.py's table, the CUDA tests on
# the real GPU, the whole station on the GPU beside the CPU (bench/throughput.py), and the
# kernels' doctests.
#
# Usage: bash scripts/gpu_check.sh [OUTDIR]      (OUTDIR: default ./gpu-check-results, created)
#
# Every check runs in this one call, each step under its own time limit, and a failed step
# never stops the run: whatever did run leaves its files in OUTDIR. It is made for an offline
# GPU machine: no package registry, Python 3.12, with numba, numba-cuda, CuPy, OpenCV,
# ONNX Runtime and pytest but without pydantic, pyzmq and watchdog (which the U-Net
# device-flow tests import through inspectd). `make gpu-wheels` downloads those as wheels
# into .gpu-wheels/ (ignored by git) on a machine with a registry; copy the repository and
# .gpu-wheels/ to the GPU machine, then run this script there:
#
#   make gpu-wheels                                   # with a registry, once: .gpu-wheels/wheels
#   bash scripts/gpu_check.sh OUTDIR               # on the GPU machine
#
# Files in OUTDIR: summary.txt (one line a step, its exit code and seconds), machine.txt,
# wheels.log, gpu_kernels.txt, gpu_kernels.json, gpu_tests.log, throughput.log,
# throughput.json, throughput.md, doctests.log and sanitizer.log. Put the tables, the device
# and the date in bench/RESULTS.md. The steps' limits add up to about 13 minutes; the whole
# run should take about 7 on an H200 (most of it numba compiling the kernels). If the run is stopped early, the steps already done keep
# their files; the most wanted figures come first.
#
# To check this script on a CPU machine (numba's simulator, meaningless numbers):
#   PYTHON=.venv/bin/python GPU_CHECK_SIMULATOR=1 bash scripts/gpu_check.sh "$(mktemp -d)"
set -u
# OUTDIR is taken relative to where the script is called from, before moving to the repository.
RESULTS=${1:-gpu-check-results}
mkdir -p "$RESULTS" || exit 1
RESULTS=$(cd "$RESULTS" && pwd) || exit 1
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
BENCH_ARGS=(--json "$RESULTS/gpu_kernels.json")
if [ "${GPU_CHECK_SIMULATOR:-0}" = 1 ]; then
  export NUMBA_ENABLE_CUDASIM=1
  BENCH_ARGS=(--simulator-smoke-test)
fi

# step NAME SECONDS COMMAND...: COMMAND's output to $RESULTS/NAME.log, its exit code to summary.txt.
step() {
  local name=$1 limit=$2 began rc
  shift 2
  began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  rc=$?
  printf '%-12s rc=%-3s %4ss  %s\n' "$name" "$rc" "$(($(date +%s) - began))" "$*" | tee -a "$RESULTS/summary.txt"
  tail -n 15 "$RESULTS/$name.log"
}

machine_facts() {
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
  "$PYTHON" -m pip list 2>/dev/null | grep -iE '^(numba|numba-cuda|cupy|onnxruntime|opencv|numpy|pydantic|tensorrt|cucim) ' || true
  "$PYTHON" -c 'import sys; from kernels import cuda_device; print(sys.version.split()[0], cuda_device.cuda_usable())'
}

install_wheels() {
  if [ ! -f .gpu-wheels/requirements.txt ]; then
    echo "no .gpu-wheels/requirements.txt (run make gpu-wheels where there is a registry and copy .gpu-wheels/ here): the U-Net device-flow tests will fail to import"
    return 0
  fi
  "$PYTHON" -m pip install --no-index --find-links .gpu-wheels/wheels -r .gpu-wheels/requirements.txt
}

# Memory errors and shared-memory races of every CUDA kernel, once each on a small frame
# (skipped without compute-sanitizer; it does not work inside a gVisor sandbox).
sanitize() {
  if ! command -v compute-sanitizer >/dev/null; then
    echo "no compute-sanitizer on this machine"
    return 0
  fi
  local tool worst=0
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 "$PYTHON" bench/gpu_kernels.py \
      --sizes 320x240 --repeats 1 --warmup 1 --json /tmp/gpu_check_sanitize.json || worst=$?
  done
  return "$worst"
}

export -f machine_facts install_wheels sanitize
export PYTHON
# Most wanted first: the figures only a real GPU gives, then the tests that say they are right.
step machine 30 bash -c machine_facts
step wheels 60 bash -c install_wheels
step gpu_kernels 150 "$PYTHON" bench/gpu_kernels.py "${BENCH_ARGS[@]}"
# The CUDA kernels against the CPU ones, backend auto/cuda selection (auto must pick this GPU),
# the device frame flow against the host flow, and the TensorRT tests (they skip without it).
step gpu_tests 200 "$PYTHON" -m pytest -q -p no:cacheprovider -rs \
  tests/kernels/test_gpu_clahe.py tests/kernels/test_gpu_threshold.py tests/kernels/test_gpu_guided.py \
  tests/kernels/test_backend_selection.py tests/kernels/test_kernels_validation.py \
  tests/unet/test_engine_device.py tests/unet/test_tensorrt.py
# The station end to end: both engines on every backend this machine has (cuda: the CUDA
# kernels; ONNX Runtime's CUDA provider where it is installed), the seed-style peer beside them.
if [ "${GPU_CHECK_SIMULATOR:-0}" != 1 ]; then
  step throughput 200 "$PYTHON" bench/throughput.py --frames 60 --size 2560x1920 --engines classical,unet \
    --backends all --workers 1,2 --unet-scales 1.0 --peer-frames 5 --skimage-frames 0 --accuracy-frames 0 \
    --cache-dir /tmp/inspectd-bench \
    --json "$RESULTS/throughput.json" --results-md "$RESULTS/throughput.md"
fi
step doctests 60 "$PYTHON" -m pytest -q -p no:cacheprovider --doctest-modules \
  kernels/gpu_clahe.py kernels/gpu_threshold.py kernels/gpu_guided.py kernels/gpu_tiles.py
if [ "${GPU_CHECK_SIMULATOR:-0}" != 1 ]; then
  step sanitizer 120 bash -c sanitize
fi
mv "$RESULTS/machine.log" "$RESULTS/machine.txt"
mv "$RESULTS/gpu_kernels.log" "$RESULTS/gpu_kernels.txt"
