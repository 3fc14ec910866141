#!/usr/bin/env bash
# The GPU checks, run from the repository root on a CUDA machine (9 minutes at most):
#   1. the kernel benchmark (correctness pass first, then timings), results in $OUT/kernels/;
#   2. the kernel and model test suites compiled for the GPU (no interpreter), log in $OUT/.
# It uses the machine's own torch and triton, which may differ from paralab's pins: paralab is
# put on the path without installing it, so nothing is reinstalled. flash-linear-attention is
# optional: wheels in .whl/ (such as fla-core's) are installed offline into /tmp/site. To
# bring them to a machine without network, before the run:
#   pip download --no-deps -d .whl fla-core==0.5.2 einops==0.8.2   # .whl/ is git-ignored
# and carry .whl along (the device tool's `carry: [".whl"]`).
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
shim=$(mktemp -d)
mkdir -p "$shim/paralab"
for folder in kernels models platform; do ln -s "$PWD/$folder" "$shim/paralab/$folder"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

timeout "${BENCH_TIMEOUT:-400}" python3 benchmarks/kernels.py --out "$OUT/kernels" --budget-s "${BENCH_BUDGET:-360}" 2>&1 | tee "$OUT/kernels.log"
echo "benchmark exit: ${PIPESTATUS[0]}" | tee -a "$OUT/kernels.log"

# The model tests first: every mode against `sequential` on CUDA, and a bf16 LM that trains.
# The kernel suite's many shapes each compile anew, so it gets what time is left. A time
# limit of 0 skips that stage (TEST_TIMEOUT=0, KERNEL_TEST_TIMEOUT=0).
: > "$OUT/gpu_tests.log"
if [ "${TEST_TIMEOUT:-60}" != 0 ]; then
  timeout "${TEST_TIMEOUT:-60}" python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/models/test_gpu.py 2>&1 | tail -30 >> "$OUT/gpu_tests.log"
  echo "model GPU tests exit: ${PIPESTATUS[0]} (124: stopped at its time limit)" >> "$OUT/gpu_tests.log"
fi
if [ "${KERNEL_TEST_TIMEOUT:-90}" != 0 ]; then
  timeout "${KERNEL_TEST_TIMEOUT:-90}" python3 -m pytest -q -p no:cacheprovider -o addopts="" -m "not slow" tests/kernels 2>&1 | tail -30 >> "$OUT/gpu_tests.log"
  echo "kernel tests exit: ${PIPESTATUS[0]} (124: stopped at its time limit)" >> "$OUT/gpu_tests.log"
fi
cat "$OUT/gpu_tests.log"
