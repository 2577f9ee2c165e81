#!/usr/bin/env bash
# The project's GPU checks in one go, for a lent CUDA machine: the CUDA parity tests (ops against
# their CPU references, the detector against its CPU run, bfloat16 training steps), then the
# operator and end-to-end model benchmarks on CUDA (ratios against references in the same run).
# Results land in $OUT (or ./gpu_check): gpu_check.log, cuda_tests.xml and benchmark JSON/Markdown
# (six files), and the generators' two JSON files (below).
#
#   bash tools/gpu_check.sh                      # sets up .venv with `make setup` (needs PyPI)
#   GPU_CHECK_PYTHON=python3 GPU_CHECK_WHEELS=.whl bash tools/gpu_check.sh
#       # offline: a Python that already has CUDA PyTorch and triton; the project runs from this
#       # checkout (PYTHONPATH), missing packages are installed from the wheels in that folder
#
# GPU_CHECK_TESTS: the test paths (default: tests); GPU_CHECK_PYTEST_ARGS: more pytest arguments
# (e.g. "-n 8"); GPU_CHECK_LIMIT_S: seconds per stage (default 600).
#
# Generators (GPU_CHECK_GENERATORS=0 skips them; estimated 3 min on one H100/H200): a small
# synthetic world (6 scenes x 8 samples) and its training + held-out object banks in a scratch dir
# (GPU_CHECK_WORK, default a mktemp dir), then the HART camera generator, the latent diffusion
# baseline and the DiffAugment GAN (their configs/generative/*_camera.yaml models) trained on
# CUDA with bf16 autocast, GPU_CHECK_GENERATOR_STEPS steps each (default 300; HART: per stage),
# and tools/eval_generator.py --device cuda --throughput on the HART run. Writes
# generators_cuda.json (seconds per step of each run and stage: the first log interval, with the
# CUDA warm-up, apart from the median of the rest) and eval_generator_cuda.json.
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

if [ "${GPU_CHECK_GENERATORS:-1}" != 0 ]; then
    gen="${GPU_CHECK_WORK:-$(mktemp -d)}"
    steps="${GPU_CHECK_GENERATOR_STEPS:-300}"
    every=$(( steps >= 100 ? 50 : steps ))
    cuda=(--no-progress --set train.device=cuda --set train.amp=true --set train.log_every="$every"
          --set train.checkpoint_every="$steps")
    stage "generator data" bash -c "set -e
        '$py' tools/create_data.py synth --out '$gen/world' --version v1.0-mini --scenes 6 \
            --samples-per-scene 8 --image-size 320 180 --seed 0 --overwrite
        '$py' tools/create_data.py nuscenes --root '$gen/world' --version v1.0-mini
        '$py' tools/create_data.py objects --root '$gen/world' --version v1.0-mini \
            --split mini_train --out '$gen/bank-train' --overwrite
        '$py' tools/create_data.py objects --root '$gen/world' --version v1.0-mini \
            --split mini_val --allow-eval-split --out '$gen/bank-val' --overwrite"
    stage "generator hart (cuda, bf16)" "$py" tools/train_generator.py \
        configs/generative/hart_camera.yaml --work-dir "$gen/hart" "${cuda[@]}" \
        --set data.bank="$gen/bank-train" --set train.classifier_steps=100 \
        --set train.tokenizer_steps="$steps" --set train.transformer_steps="$steps"
    stage "generator ldm (cuda, bf16)" "$py" tools/train_generator.py \
        configs/generative/ldm_camera.yaml --work-dir "$gen/ldm" "${cuda[@]}" \
        --set data.bank="$gen/bank-train" --set tokenizer_from="$gen/hart" \
        --set train.steps="$steps"
    stage "generator gan (cuda, bf16)" "$py" tools/train_generator.py \
        configs/generative/gan_camera.yaml --work-dir "$gen/gan" "${cuda[@]}" \
        --set data.bank="$gen/bank-train" --set train.steps="$steps" --set train.kid_every=0
    stage "generator eval (cuda, throughput)" "$py" tools/eval_generator.py "$gen/hart" \
        --held-out-bank "$gen/bank-val" --device cuda --n 256 --throughput --no-progress \
        --out "$out/eval_generator_cuda.json"
    stage "generator seconds per step" "$py" - "$gen" "$out/generators_cuda.json" <<'PY'
import json, statistics, sys
from pathlib import Path

gen, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = {}
for run in ("hart", "ldm", "gan"):
    log = gen / run / "log.jsonl"
    if not log.is_file():
        runs[run] = {"error": f"{log} missing (the run failed: see gpu_check.log)"}
        continue
    records = [json.loads(line) for line in log.read_text().splitlines()]
    for stage in dict.fromkeys(r["stage"] for r in records):
        rows = [r for r in records if r["stage"] == stage and "seconds_per_step" in r]
        rest = [r["seconds_per_step"] for r in rows[1:]]
        runs[f"{run}/{stage}"] = {
            "steps": rows[-1]["step"] if rows else 0,
            "first_interval_s_per_step": rows[0]["seconds_per_step"] if rows else None,
            "median_s_per_step": statistics.median(rest) if rest else None,
            "last": {k: v for k, v in rows[-1].items() if isinstance(v, float)} if rows else {},
        }
out.write_text(json.dumps({"device": "cuda", "amp": "bf16", "runs": runs}, indent=1) + "\n")
for name, run in runs.items():
    print(f"{name:<24} {run}")
PY
fi
exit $status
