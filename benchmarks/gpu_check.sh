#!/usr/bin/env bash
# The GPU checks, run from the repository root on a CUDA machine (about 9 minutes at most):
#   1. the kernel benchmark (correctness pass first, then timings), results in $OUT/kernels/;
#   2. the kernel and model test suites compiled for the GPU (no interpreter), log in $OUT/.
# It uses the machine's own torch and triton, which may differ from paralab's pins: paralab is
# put on the path without installing it, so nothing is reinstalled. flash-linear-attention is
# optional: wheels in .whl/ (such as fla-core's) are installed offline into /tmp/site.
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

timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q -x -p no:cacheprovider -o addopts="" -m "not slow" tests/kernels tests/models/test_gpu.py 2>&1 | tail -40 > "$OUT/gpu_tests.log"
echo "tests exit: ${PIPESTATUS[0]}" >> "$OUT/gpu_tests.log"
cat "$OUT/gpu_tests.log"
