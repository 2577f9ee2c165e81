#!/usr/bin/env bash
# The HART generator benchmark of BENCHMARKS.md (issue #25), per modality (camera, lidar):
#   hart/seed<S>      the hybrid generator (configs/generative/hart_<modality>.yaml), SEEDS
#   discrete/seed0    the discrete-only tokenizer ablation (--set tokenizer.hybrid=false)
#   ldm/seed0         the latent diffusion baseline on hart/seed0's frozen tokenizer, trained for
#                     the same time: train.time_budget_s = hart/seed0's transformer-stage seconds
#                     (its log.jsonl), train.steps large (the budget stops it)
# and tools/eval_generator.py on each against the real held-out bank: residual head on vs off
# (--no-residual) on every HART run; on hart/seed0 also the tokenizer ablation
# (--discrete-tokenizer discrete/seed0), --throughput (batch 1 and 64) and the classification
# accuracy score for the rare classes (--cas --rare-classes bicycle,construction_vehicle); the
# baseline with --throughput at DDIM 8/16/32/50 steps. Order: hart/seed0, discrete, ldm and
# their evals first (every target but the three-seed one), then the other seeds.
#
# ALL RUNS ARE SCORED BY THE SAME CLASSIFIER: hart/seed0's crop classifier, copied to
# OUT/<modality>/classifier.safetensors, is every eval's --classifier (KIDs of two classifiers
# are not comparable; each report carries the file's sha256 and the collector checks them).
#
#   tools/generator_benchmark.sh [OUT_DIR] [MODALITY ...]   # camera | lidar (default both)
#   tools/generator_benchmark.sh --help
#
# Time on 2 CPU cores (paces of the first camera run, BENCHMARKS.md): tokenizer ~0.44 s and
# transformer ~0.65 s a step, so ~30 minutes a HART run with its classifier; four HART runs, the
# same-time baseline and the evals (~5 minutes each, CAS more) make ~2.5-3 hours a modality.
#
# Runs go to OUT/<modality>/<arm>/seed<S>/ (the work dir, train_time.json, eval.json); a run
# whose eval.json exists is skipped, a run with a work dir but no train_time.json resumes
# (tools/train_generator.py --resume), so an interrupted benchmark continues where it stopped.
# Then
#   python tools/benchmark.py generator --runs OUT --out benchmarks/results/generator_cpu.json
# writes the tables and the target checks. Environment:
#   SEEDS="0 1 2"      HART seeds (the residual-head target asks three)
#   TRAIN_BANK         training bank (default DATA/synth-train-rare-bank-train, built as
#                      tools/paste_benchmark.sh builds it when absent)
#   HELDOUT_BANK       held-out evaluation bank (default DATA/synth-heldout-bank-val, built from
#                      DATA/synth-heldout with --split val --allow-eval-split when absent)
#   DATA (default data), OMP_NUM_THREADS (default 2: one run at a time on both cores)
#   CLASSIFIER_STEPS, TOKENIZER_STEPS, TRANSFORMER_STEPS   HART stages (default the config's)
#   LDM_MAX_STEPS (default 100000: the time budget stops it), LDM_CHECKPOINT_EVERY (default
#                      50: the budget is checked at checkpoints), LDM_BUDGET_S (default: from
#                      hart/seed0's log)
#   N_EVAL (default 1000 held-out signals per eval; "all": every one), CAS_STEPS (500),
#   CAS_N (512), REPEATS (3 timed calls), THROUGHPUT_BATCH_SIZES ("1,64"),
#   DDIM_STEPS ("8,16,32,50"), RARE_CLASSES ("bicycle,construction_vehicle")
#   DEVICE             cpu | cuda | auto: train.device of every run and the evals' --device
#                      (default: neither is passed, the tools' defaults)
#   TINY=1             the tiny model of tests/tools/test_train_generator.py and a few steps
#                      each (a smoke run of the wiring, minutes; not a measurement), e.g.
#   TINY=1 SEEDS=0 TRAIN_BANK=/tmp/b HELDOUT_BANK=/tmp/h tools/generator_benchmark.sh /tmp/g camera
set -euo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-outputs/generator}
shift || true
MODALITIES=("$@")
[ ${#MODALITIES[@]} -eq 0 ] && MODALITIES=(camera lidar)
for modality in "${MODALITIES[@]}"; do  # checked before anything runs
    case "$modality" in camera|lidar) ;;
        *) echo "unknown modality $modality (camera or lidar)" >&2; exit 2 ;; esac
done
SEEDS=${SEEDS:-0 1 2}
case " $SEEDS " in *" 0 "*) ;;
    *) echo "SEEDS must include 0 (the ablation, baseline and classifier use seed 0)" >&2
       exit 2 ;;
esac
THREADS=${OMP_NUM_THREADS:-2}
DATA=${DATA:-data}
TINY=${TINY:-0}
RARE_CLASSES=${RARE_CLASSES:-bicycle,construction_vehicle}
if [ "$TINY" = 1 ]; then
    CLASSIFIER_STEPS=${CLASSIFIER_STEPS:-3}; TOKENIZER_STEPS=${TOKENIZER_STEPS:-4}
    TRANSFORMER_STEPS=${TRANSFORMER_STEPS:-4}; LDM_MAX_STEPS=${LDM_MAX_STEPS:-1000}
    LDM_CHECKPOINT_EVERY=${LDM_CHECKPOINT_EVERY:-2}; N_EVAL=${N_EVAL:-all}
    CAS_STEPS=${CAS_STEPS:-3}; CAS_N=${CAS_N:-16}; REPEATS=${REPEATS:-1}
    THROUGHPUT_BATCH_SIZES=${THROUGHPUT_BATCH_SIZES:-1,4}; DDIM_STEPS=${DDIM_STEPS:-2,4}
fi
LDM_MAX_STEPS=${LDM_MAX_STEPS:-100000}
LDM_CHECKPOINT_EVERY=${LDM_CHECKPOINT_EVERY:-50}
N_EVAL=${N_EVAL:-1000}
CAS_STEPS=${CAS_STEPS:-500}
CAS_N=${CAS_N:-512}
REPEATS=${REPEATS:-3}
THROUGHPUT_BATCH_SIZES=${THROUGHPUT_BATCH_SIZES:-1,64}
DDIM_STEPS=${DDIM_STEPS:-8,16,32,50}

# the tiny model of tests/tools/test_train_generator.py (16x16 crops, scales 1,2,4)
HART_TINY=(--set data.image_size=16 --set data.lidar_grid=[16,16,4] --set "tokenizer.scales=[1,2,4]"
           --set tokenizer.latent_dim=4 --set tokenizer.vocab_size=16 --set tokenizer.hidden=16
           --set transformer.width=32 --set transformer.depth=1 --set transformer.heads=2
           --set transformer.cond_dim=32 --set residual_head.width=32 --set residual_head.depth=1
           --set train.batch_size=8 --set train.log_every=2 --set train.checkpoint_every=2)
LDM_TINY=(--set model.width=32 --set model.depth=1 --set model.heads=2 --set model.cond_dim=32
          --set train.batch_size=8 --set train.log_every=2)

# --- the banks ------------------------------------------------------------------------------
if [ -z "${TRAIN_BANK:-}" ]; then  # as tools/paste_benchmark.sh builds it
    TRAIN_BANK=$DATA/synth-train-rare-bank-train
    TRAIN_ROOT=$DATA/synth-train-rare
    if [ ! -f "$TRAIN_BANK/bank.json" ]; then
        [ -f "$TRAIN_ROOT/v1.0-trainval/sample.json" ] || $PY tools/create_data.py synth \
            --out "$TRAIN_ROOT" --version v1.0-trainval --scenes 30 --val-scenes 3 --seed 1 \
            --rare bicycle,construction_vehicle
        [ -f "$TRAIN_ROOT/perception_index_v1.0-trainval.json.gz" ] || \
            $PY tools/create_data.py nuscenes --root "$TRAIN_ROOT" --version v1.0-trainval
        $PY tools/create_data.py objects --root "$TRAIN_ROOT" --version v1.0-trainval \
            --split train --out "$TRAIN_BANK" --workers 2
    fi
fi
if [ -z "${HELDOUT_BANK:-}" ]; then
    HELDOUT_BANK=$DATA/synth-heldout-bank-val
    HELDOUT_ROOT=$DATA/synth-heldout
    if [ ! -f "$HELDOUT_BANK/bank.json" ]; then
        [ -f "$HELDOUT_ROOT/v1.0-trainval/sample.json" ] || $PY tools/create_data.py synth \
            --out "$HELDOUT_ROOT" --version v1.0-trainval --scenes 10 --val-scenes 10 --seed 2
        [ -f "$HELDOUT_ROOT/perception_index_v1.0-trainval.json.gz" ] || \
            $PY tools/create_data.py nuscenes --root "$HELDOUT_ROOT" --version v1.0-trainval
        $PY tools/create_data.py objects --root "$HELDOUT_ROOT" --version v1.0-trainval \
            --split val --allow-eval-split --out "$HELDOUT_BANK" --workers 2
    fi
fi
for bank in "$TRAIN_BANK" "$HELDOUT_BANK"; do
    [ -f "$bank/bank.json" ] || { echo "$bank/bank.json: not found" >&2; exit 2; }
done
mkdir -p "$OUT"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

# train WORK MODALITY ARM SEED COMMAND...: trains unless train_time.json exists (resumes a
# started run), then writes train_time.json (the command, wall seconds, commit)
train() {
    local work=$1 modality=$2 arm=$3 seed=$4
    shift 4
    local cmd=("$@")
    [ -f "$work/train_time.json" ] && return 0
    [ -f "$work/config.yaml" ] && cmd+=(--resume)
    echo "== $work: OMP_NUM_THREADS=$THREADS ${cmd[*]}"
    local start end
    start=$(date +%s)
    OMP_NUM_THREADS=$THREADS "${cmd[@]}"
    end=$(date +%s)
    $PY -c 'import json, sys; a = sys.argv; print(json.dumps({"modality": a[1], "arm": a[2],
        "seed": int(a[3]), "train_seconds": int(a[4]), "commit": a[5],
        "command": "OMP_NUM_THREADS=" + a[6] + " " + " ".join(a[7:])}))' \
        "$modality" "$arm" "$seed" $((end - start)) "$COMMIT" "$THREADS" "$@" \
        > "$work/train_time.json"
}

# evaluate WORK EXTRA...: tools/eval_generator.py against the held-out bank, shared classifier
evaluate() {
    local work=$1
    shift
    local n=()
    [ "$N_EVAL" = all ] || n=(--n "$N_EVAL")
    [ -n "${DEVICE:-}" ] && n+=(--device "$DEVICE")
    local cmd=($PY tools/eval_generator.py "$work" --held-out-bank "$HELDOUT_BANK"
               --classifier "$CLASSIFIER" --threads "$THREADS" --repeats "$REPEATS"
               --throughput-batch-sizes "$THROUGHPUT_BATCH_SIZES" --no-progress "${n[@]}" "$@"
               --out "$work/eval.json")
    echo "== $work: OMP_NUM_THREADS=$THREADS ${cmd[*]}"
    OMP_NUM_THREADS=$THREADS "${cmd[@]}"
}

for modality in "${MODALITIES[@]}"; do
    config=configs/generative/hart_$modality.yaml
    base="$OUT/$modality"
    CLASSIFIER=$base/classifier.safetensors
    hart_cmd=($PY tools/train_generator.py "$config" --no-progress --set data.bank="$TRAIN_BANK")
    [ "$TINY" = 1 ] && hart_cmd+=("${HART_TINY[@]}")
    [ -n "${DEVICE:-}" ] && hart_cmd+=(--set train.device="$DEVICE")
    [ -n "${CLASSIFIER_STEPS:-}" ] && hart_cmd+=(--set train.classifier_steps="$CLASSIFIER_STEPS")
    [ -n "${TOKENIZER_STEPS:-}" ] && hart_cmd+=(--set train.tokenizer_steps="$TOKENIZER_STEPS")
    [ -n "${TRANSFORMER_STEPS:-}" ] && \
        hart_cmd+=(--set train.transformer_steps="$TRANSFORMER_STEPS")
    seed0=$base/hart/seed0
    discrete=$base/discrete/seed0

    # 1. seed 0, the tokenizer ablation and the baseline (most targets need only these):
    #    hart/seed0's classifier scores everything, its transformer time is the baseline's
    [ -f "$seed0/eval.json" ] || train "$seed0" "$modality" hart 0 "${hart_cmd[@]}" \
        --work-dir "$seed0" --set train.seed=0
    if [ ! -f "$CLASSIFIER" ]; then
        cp "$seed0/classifier.safetensors" "$CLASSIFIER"
        echo "$CLASSIFIER: hart/seed0's crop classifier, the features of every eval below"
    fi
    [ -f "$discrete/eval.json" ] || train "$discrete" "$modality" discrete 0 "${hart_cmd[@]}" \
        --work-dir "$discrete" --set train.seed=0 --set tokenizer.hybrid=false
    ldm=$base/ldm/seed0
    if [ ! -f "$ldm/eval.json" ]; then
        budget=${LDM_BUDGET_S:-}
        [ -n "$budget" ] || budget=$($PY -c 'import sys
from perception.benchmarks.generator import stage_seconds
print(round(max(stage_seconds(sys.argv[1], sys.argv[2]), 1.0), 1))' "$seed0/log.jsonl" transformer)
        # the baseline learns from exactly HART's data section (its saved config.yaml)
        mapfile -t data_set < <($PY -c 'import json, sys, yaml
for k, v in yaml.safe_load(open(sys.argv[1]))["data"].items():
    print("--set"); print(f"data.{k}={json.dumps(v)}")' "$seed0/config.yaml")
        ldm_cmd=($PY tools/train_generator.py configs/generative/ldm_camera.yaml --no-progress
                 --work-dir "$ldm" --set name=ldm_$modality --set tokenizer_from="$seed0"
                 "${data_set[@]}" --set train.seed=0 --set train.time_budget_s="$budget"
                 --set train.steps="$LDM_MAX_STEPS"
                 --set train.checkpoint_every="$LDM_CHECKPOINT_EVERY")
        [ "$TINY" = 1 ] && ldm_cmd+=("${LDM_TINY[@]}")
        [ -n "${DEVICE:-}" ] && ldm_cmd+=(--set train.device="$DEVICE")
        train "$ldm" "$modality" ldm 0 "${ldm_cmd[@]}"
    fi
    # every eval with $CLASSIFIER; hart/seed0 also the ablation, throughput and CAS
    if [ -f "$seed0/eval.json" ]; then echo "$seed0: done, skipped"
    else evaluate "$seed0" --no-residual --throughput --discrete-tokenizer "$discrete" --cas \
        --cas-steps "$CAS_STEPS" --cas-n "$CAS_N" --rare-classes "$RARE_CLASSES"; fi
    if [ -f "$discrete/eval.json" ]; then echo "$discrete: done, skipped"
    else evaluate "$discrete" --no-residual; fi
    if [ -f "$ldm/eval.json" ]; then echo "$ldm: done, skipped"
    else evaluate "$ldm" --throughput --steps "$DDIM_STEPS"; fi

    # 2. the other seeds (residual head on vs off over seeds)
    for seed in $SEEDS; do
        [ "$seed" = 0 ] && continue
        work=$base/hart/seed$seed
        if [ -f "$work/eval.json" ]; then echo "$work: done, skipped"; continue; fi
        train "$work" "$modality" hart "$seed" "${hart_cmd[@]}" --work-dir "$work" \
            --set train.seed="$seed"
        evaluate "$work" --no-residual
    done
done
echo "collect: $PY tools/benchmark.py generator --runs $OUT --out benchmarks/results/generator_cpu.json"
