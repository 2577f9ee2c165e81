#!/usr/bin/env bash
# The project's GPU checks in one go, for a lent CUDA machine: the CUDA parity tests (ops against
# their CPU references, the detector against its CPU run, bfloat16 training steps), then the
# operator and end-to-end model benchmarks on CUDA (ratios against references in the same run).
# Results land in $OUT (or ./gpu_check): gpu_check.log, cuda_tests.xml and benchmark JSON/Markdown
# (six files).
#
#   bash tools/gpu_check.sh                      # sets up .venv with `make setup` (needs PyPI)
#   GPU_CHECK_PYTHON=python3 GPU_CHECK_WHEELS=.whl bash tools/gpu_check.sh
#       # offline: a Python that already has CUDA PyTorch and triton; the project runs from this
#       # checkout (PYTHONPATH), missing packages are installed from the wheels in that folder
#
# GPU_CHECK_TESTS: the test paths (default: tests); GPU_CHECK_PYTEST_ARGS: more pytest arguments
# (e.g. "-n 8"); GPU_CHECK_LIMIT_S: seconds per stage (default 600).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
log="$out/gpu_check.log"
limit="${GPU_CHECK_LIMIT_S:-600}"
: >"$log"
say() { echo "== $*" | tee -a "$log"; }

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    py="$GPU_CHECK_PYTHON"
    if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
        site="$(mktemp -d)"
        "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" \
            "$GPU_CHECK_WHEELS"/*.whl >>"$log" 2>&1 || { say "wheel install failed"; exit 1; }
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # the installed layout (perception.ops = ops/, perception.deploy = deploy/) from this checkout
    made=()
    for pkg in ops deploy; do
        if [ ! -e "perception/$pkg" ]; then ln -s "../$pkg" "perception/$pkg" && made+=("perception/$pkg"); fi
    done
    trap '[ ${#made[@]} -eq 0 ] || rm -f "${made[@]}"' EXIT
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    make setup >>"$log" 2>&1 || { say "setup failed: see $log"; exit 1; }
    py=.venv/bin/python
fi
export PYTHONUNBUFFERED=1

say device
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$py" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not importable (the ops fall back to their torch paths)")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name())
PY
} 2>&1 | tee -a "$log"

status=0
stage() {  # stage NAME COMMAND...: runs with the time limit, output into the log
    local name="$1"
    shift
    say "$name"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    say "$name: rc $rc in $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}
# shellcheck disable=SC2086
stage "CUDA tests" "$py" -m pytest -q -m cuda -p no:cacheprovider --tb=short \
    --junitxml="$out/cuda_tests.xml" ${GPU_CHECK_PYTEST_ARGS:-} ${GPU_CHECK_TESTS:-tests}
stage "ops benchmark" "$py" tools/benchmark.py ops --device cuda --out "$out/bench_ops_cuda.json"
stage "model benchmark" "$py" tools/benchmark.py model --device cuda \
    --config configs/bevfusion_tiny.yaml configs/bevfusion_b2_nusc.yaml \
    --repeat 10 --out "$out/bench_model_cuda.json"
exit $status
