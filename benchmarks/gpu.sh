#!/usr/bin/env bash
# The GPU checks in one script, for a machine with one CUDA GPU:
#   1. the kernel tests compiled on the GPU (ZOO_KERNEL_TEST_DEVICE=cuda: tests/test_kernels.py moves each
#      kernel's inputs to CUDA and compares with its CPU reference), then the wiring tests, which
#      build CPU models and so still run the Triton route interpreted;
#   2. benchmarks/run.py --gpu: every Triton kernel against its torch reference (agreement and % of
#      the GPU's datasheet peak) and the population trainer on the GPU vs on the CPU, appended to
#      benchmarks/results/<date>-gpu.jsonl and the CUDA table of docs/benchmarks.md;
#   3. zoo presets --calibrate --device cuda (measured GPU throughput for the cost estimates).
# Not yet run on a GPU: no device has been lent to this project's sessions, so step 1's CUDA route has
# only been checked to collect (--dry-run).
#
#   benchmarks/gpu.sh            run it (needs CUDA)
#   benchmarks/gpu.sh --dry-run  print what would run and check that every piece imports and parses
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
THREADS=$(nproc)  # the CPU side of "GPU vs CPU" gets every core of this machine

STEPS=(
  "ZOO_KERNEL_TEST_DEVICE=cuda $PY -m pytest -q tests/test_kernels.py"
  "ZOO_KERNELS=triton $PY -m pytest -q tests/test_kernel_wiring.py"
  "$PY benchmarks/run.py --gpu --threads $THREADS"
  "$PY -m zoo.cli presets --calibrate --device cuda"
)

if [ "${1:-}" = "--dry-run" ]; then
  printf 'would run:\n'
  printf '  %s\n' "${STEPS[@]}"
  fail=0
  check() { if eval "$2" >/dev/null 2>&1; then echo "ok: $1"; else echo "FAILED: $1"; fail=1; fi; }
  check "this script parses" "bash -n '$0'"
  check "torch and zoo.kernels import" "$PY -c 'import torch, zoo.kernels'"
  check "kernel tests collect" "ZOO_KERNEL_TEST_DEVICE=cuda $PY -m pytest -q --collect-only tests/test_kernels.py tests/test_kernel_wiring.py"
  check "GPU benchmarks parse and import" "$PY benchmarks/run.py --gpu --dry-run --threads $THREADS"
  check "zoo presets takes --calibrate --device cuda" \
    "$PY -m zoo.cli presets --help | grep -q -- '--calibrate' && $PY -m zoo.cli presets --help | grep -q 'cpu,cuda'"
  [ "$fail" = 0 ] && echo "dry run ok (nothing measured)"
  exit "$fail"
fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu.sh: no CUDA device here; use --dry-run to check the script on a CPU machine" >&2
  exit 2
fi
nvidia-smi -L || true
status=0
for step in "${STEPS[@]}"; do
  echo "+ $step"
  eval "$step" || { echo "FAILED: $step" >&2; status=1; }
done
exit "$status"
