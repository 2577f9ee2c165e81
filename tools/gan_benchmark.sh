#!/usr/bin/env bash
# The DiffAugment GAN benchmark of BENCHMARKS.md (issue #26): the class-conditional GAN
# (configs/generative/gan_camera.yaml) trained on N real crops of the training bank, N in
# N_VALUES (train.num_real; "all": the whole bank), with augment mode none / both (DiffAugment)
# / reals_only (the known-bad control), SEEDS each (N100_SEEDS at N=100: the issue asks three),
# then tools/eval_generator.py on the final generator (eval.json) and on the checkpoint of the
# lowest logged KID (WORK/best: eval_best.json) against the real held-out bank.
#
# ALL RUNS USE THE SAME CLASSIFIER, for the KID logged in training (train.classifier) and for
# every eval (--classifier): CLASSIFIER, default OUT/classifier.safetensors; when absent the
# first run trains it on all the bank's crops (train.classifier_steps) and it is copied there.
# CLASSIFIER=outputs/generator/camera/classifier.safetensors scores the GAN with the HART
# benchmark's features (tools/generator_benchmark.sh), so GAN and HART KIDs compare.
#
#   tools/gan_benchmark.sh [OUT_DIR]
#   tools/gan_benchmark.sh --help
#
# Runs go to OUT/n<N>/<mode>/seed<S>/ (the work dir, train_time.json, eval.json,
# eval_best.json); a run whose eval.json exists is skipped, a started run resumes. Then
#   python tools/benchmark.py gan --runs OUT --out benchmarks/results/gan_cpu.json
# Environment:
#   SEEDS="0 1"  N100_SEEDS="0 1 2"  N_VALUES="100 500 2000 all"  MODES="none both reals_only"
#   STEPS (train.steps, default the config's 5000), KID_EVERY (default the config's 500),
#   BATCH_SIZE (train.batch_size, default the config's 64),
#   CLASSIFIER_STEPS (the shared classifier's, default the config's 500)
#   TRAIN_BANK (default DATA/synth-train-rare-bank-train), HELDOUT_BANK (default
#   DATA/synth-heldout-bank-val): build them with tools/generator_benchmark.sh or
#   tools/paste_benchmark.sh; DATA (default data), OMP_NUM_THREADS (default 2)
#   N_EVAL (default 1000 held-out crops per eval; "all"), BEST=0 (no eval of the best checkpoint)
#   DEVICE  cpu | cuda | auto: train.device of every run and the evals' --device (default:
#           neither is passed)
#   TINY=1  a tiny GAN and a few steps (a smoke run of the wiring; not a measurement), e.g.
#   TINY=1 SEEDS=0 N100_SEEDS=0 N_VALUES="8 all" TRAIN_BANK=/tmp/b HELDOUT_BANK=/tmp/h \
#       tools/gan_benchmark.sh /tmp/gan
set -euo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-outputs/gan}
SEEDS=${SEEDS:-0 1}
N100_SEEDS=${N100_SEEDS:-0 1 2}
N_VALUES=${N_VALUES:-100 500 2000 all}
MODES=${MODES:-none both reals_only}
THREADS=${OMP_NUM_THREADS:-2}
DATA=${DATA:-data}
TRAIN_BANK=${TRAIN_BANK:-$DATA/synth-train-rare-bank-train}
HELDOUT_BANK=${HELDOUT_BANK:-$DATA/synth-heldout-bank-val}
TINY=${TINY:-0}
BEST=${BEST:-1}
if [ "$TINY" = 1 ]; then
    STEPS=${STEPS:-4}; KID_EVERY=${KID_EVERY:-2}; CLASSIFIER_STEPS=${CLASSIFIER_STEPS:-2}
    N_EVAL=${N_EVAL:-all}
fi
N_EVAL=${N_EVAL:-1000}
for n in $N_VALUES; do
    [[ "$n" =~ ^([1-9][0-9]*|all)$ ]] || {
        echo "N_VALUES: $n is not a count or 'all'" >&2; exit 2; }
done
for mode in $MODES; do
    case "$mode" in none|both|reals_only) ;;
        *) echo "MODES: unknown mode $mode (none, both or reals_only)" >&2; exit 2 ;; esac
done
for bank in "$TRAIN_BANK" "$HELDOUT_BANK"; do
    [ -f "$bank/bank.json" ] || {
        echo "$bank/bank.json: not found (tools/generator_benchmark.sh builds both banks)" >&2
        exit 2; }
done
mkdir -p "$OUT"
CLASSIFIER=${CLASSIFIER:-$OUT/classifier.safetensors}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
GAN_TINY=(--set data.image_size=16 --set model.z_dim=8 --set model.g_width=8 --set model.d_width=8
          --set model.cond_dim=16 --set train.batch_size=4 --set train.log_every=1
          --set train.checkpoint_every=2)
base_cmd=($PY tools/train_generator.py configs/generative/gan_camera.yaml --no-progress
          --set data.bank="$TRAIN_BANK")
[ "$TINY" = 1 ] && base_cmd+=("${GAN_TINY[@]}")
[ -n "${STEPS:-}" ] && base_cmd+=(--set train.steps="$STEPS")
[ -n "${KID_EVERY:-}" ] && base_cmd+=(--set train.kid_every="$KID_EVERY")
[ -n "${BATCH_SIZE:-}" ] && base_cmd+=(--set train.batch_size="$BATCH_SIZE")
[ -n "${CLASSIFIER_STEPS:-}" ] && base_cmd+=(--set train.classifier_steps="$CLASSIFIER_STEPS")
[ -n "${DEVICE:-}" ] && base_cmd+=(--set train.device="$DEVICE")
n_eval=()
[ "$N_EVAL" = all ] || n_eval=(--n "$N_EVAL")
[ -n "${DEVICE:-}" ] && n_eval+=(--device "$DEVICE")

for n in $N_VALUES; do
    seeds=$SEEDS
    [ "$n" = 100 ] && seeds=$N100_SEEDS
    for mode in $MODES; do
        for seed in $seeds; do
            work=$OUT/n$n/$mode/seed$seed
            if [ -f "$work/eval.json" ]; then echo "$work: done, skipped"; continue; fi
            cmd=("${base_cmd[@]}" --work-dir "$work" --set augment.mode="$mode"
                 --set train.seed="$seed")
            [ "$n" = all ] || cmd+=(--set train.num_real="$n")
            # the shared classifier; the first run trains it when there is none yet
            [ -f "$CLASSIFIER" ] && cmd+=(--set train.classifier="$CLASSIFIER")
            if [ ! -f "$work/train_time.json" ]; then
                [ -f "$work/config.yaml" ] && cmd+=(--resume)
                echo "== $work: OMP_NUM_THREADS=$THREADS ${cmd[*]}"
                start=$(date +%s)
                OMP_NUM_THREADS=$THREADS "${cmd[@]}"
                end=$(date +%s)
                $PY -c 'import json, sys; a = sys.argv; print(json.dumps({"num_real": a[1],
                    "mode": a[2], "seed": int(a[3]), "train_seconds": int(a[4]), "commit": a[5],
                    "command": "OMP_NUM_THREADS=" + a[6] + " " + " ".join(a[7:])}))' \
                    "$n" "$mode" "$seed" $((end - start)) "$COMMIT" "$THREADS" "${cmd[@]}" \
                    > "$work/train_time.json"
            fi
            if [ ! -f "$CLASSIFIER" ]; then
                cp "$work/classifier.safetensors" "$CLASSIFIER"
                echo "$CLASSIFIER: $work's crop classifier, the features of every run and eval"
            fi
            evals=("$work:eval.json")
            [ "$BEST" = 1 ] && [ -d "$work/best" ] && \
                evals=("$work/best:eval_best.json" "${evals[@]}")
            for item in "${evals[@]}"; do  # eval.json last: it marks the run done
                target=${item%%:*}
                cmd=($PY tools/eval_generator.py "$target" --held-out-bank "$HELDOUT_BANK"
                     --classifier "$CLASSIFIER" --no-progress "${n_eval[@]}"
                     --out "$work/${item##*:}")
                echo "== $work: OMP_NUM_THREADS=$THREADS ${cmd[*]}"
                OMP_NUM_THREADS=$THREADS "${cmd[@]}"
            done
        done
    done
done
echo "collect: $PY tools/benchmark.py gan --runs $OUT --out benchmarks/results/gan_cpu.json"
