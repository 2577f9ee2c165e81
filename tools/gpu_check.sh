#!/usr/bin/env bash
# The project's GPU checks in one go, for a lent CUDA machine: CUDA parity tests, then the
# operator benchmarks on CUDA (ratios against references in the same run). Results land in
# $OUT (or ./gpu_check) as JUnit XML, logs and benchmark JSON/Markdown.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
make setup >"$out/setup.log" 2>&1 || { echo "setup failed: see $out/setup.log"; exit 1; }
py=.venv/bin/python
$py - <<'PY' | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name())
PY
status=0
$py -m pytest -q -m cuda --junitxml="$out/cuda_tests.xml" tests 2>&1 | tee "$out/cuda_tests.log" || status=1
$py tools/benchmark.py ops --device cuda --out "$out/bench_ops_cuda.json" 2>&1 | tee "$out/bench_ops_cuda.log" || status=1
exit $status
