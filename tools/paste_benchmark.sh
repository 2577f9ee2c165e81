#!/usr/bin/env bash
# The rare-class GT-paste benchmark of BENCHMARKS.md (issue #24): train the tiny detectors on a
# world where bicycle and construction_vehicle are rare (seed 1, 30 scenes, --rare), with no
# paste, LiDAR-only paste (mmdet3d's GT sampling: data.paste.cameras=false) and multimodal
# paste (LiDAR + the crops composited into the cameras), the same number of steps each, and
# score every run with the official devkit metrics on the normal held-out world (seed 2, the
# accuracy benchmark's data/synth-heldout: never seen in training, normal class mix).
#
#   tools/paste_benchmark.sh [OUT_DIR] [MODEL ...]        # MODEL: fused | lidar (default both)
#
# Runs go to OUT/<model>/<paste>/seed<S>/ (train_time.json, log.jsonl with the paste's counts,
# test/metrics.json); a run whose test/metrics.json exists is skipped, so an interrupted
# benchmark continues where it stopped. Then
#   python tools/benchmark.py paste --runs OUT --out benchmarks/results/paste_cpu.json
# collects them (rare-class AP, mAP, spread over seeds). Environment:
#   SEEDS="0 1"     seeds (weights and data order) per model x variant
#   VARIANTS="none lidar multimodal"
#                   the LiDAR-only model runs no "multimodal": without a camera branch the
#                   dataset loads no images and the paste is the LiDAR-only one (same run twice)
#                   Generated objects (issue #25/#26): "generated" pastes from a bank whose
#                   rare-class objects are all generated, "generated_real" from one holding
#                   the real ones too (tools/create_data.py generated [--with-real]); the banks
#                   are built here, into OUT/banks/<model>/<variant>, from
#   LIDAR_GENERATOR   a LiDAR generator's work dir (both models), and
#   CAMERA_GENERATOR  a camera generator's work dir (the fused model: its paste is multimodal,
#                   generated crops with generated points, the same conditions)
#   PER_OBJECT (default 4) generated objects per real one, GENERATED_SEED (default 0)
#   STEPS           steps of every run (default per model, the same for its three variants:
#                   fused 1200, lidar 1400 at 2 threads; from the accuracy benchmark's paces,
#                   0.87-0.94 / 0.7-0.8 s a step, plus the paste's ~0.1-0.13 s a sample in the
#                   loader: LiDAR only took ~15 minutes a run on 2 cores, BENCHMARKS.md)
#   PASTE_CLASSES="bicycle=2,construction_vehicle=2"  objects pasted per sample, per class
#   OMP_NUM_THREADS (default 2: one run at a time on both cores), BATCH (default 2)
#   CAMERA_START    the fused model trains LiDAR first (its config's train.camera_start, 0.5):
#                   until then the loader decodes no images and even the multimodal paste is
#                   LiDAR-only (log.jsonl's camera_skipped counts those samples); CAMERA_START=0
#                   trains fused (and pastes into the cameras) from the first step
#   SCENES (default 30), SAMPLES (samples per scene, default the generator's), IMAGE_SIZE
#   ("W H"), HELDOUT_SCENES (default 10), DATA (default data): smaller worlds for a smoke run,
#   kept apart from the real ones (e.g. DATA=/tmp/x SCENES=2 SAMPLES=3 HELDOUT_SCENES=1
#   IMAGE_SIZE="320 180" STEPS=2 SEEDS=0 PASTE_CLASSES=car=1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-outputs/paste}
shift || true
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(fused lidar)
SEEDS=${SEEDS:-0 1}
VARIANTS=${VARIANTS:-none lidar multimodal}
PASTE_CLASSES=${PASTE_CLASSES:-bicycle=2,construction_vehicle=2}
BATCH=${BATCH:-2}
THREADS=${OMP_NUM_THREADS:-2}
DATA=${DATA:-data}
SCENES=${SCENES:-30}
HELDOUT_SCENES=${HELDOUT_SCENES:-10}
WORLD_OPTS=()
[ -n "${SAMPLES:-}" ] && WORLD_OPTS+=(--samples-per-scene "$SAMPLES")
# shellcheck disable=SC2206  # "W H": two words on purpose
[ -n "${IMAGE_SIZE:-}" ] && WORLD_OPTS+=(--image-size $IMAGE_SIZE)
for model in "${MODELS[@]}"; do  # checked before any world is generated
    case "$model" in fused|lidar) ;; *) echo "unknown model $model (fused or lidar)" >&2; exit 2 ;; esac
done
for variant in $VARIANTS; do
    case "$variant" in none|lidar|multimodal) ;;
        generated|generated_real)
            [ -n "${LIDAR_GENERATOR:-}" ] || {
                echo "variant $variant needs LIDAR_GENERATOR (a LiDAR generator's work dir)" >&2
                exit 2; }
            for model in "${MODELS[@]}"; do
                [ "$model" = fused ] && [ -z "${CAMERA_GENERATOR:-}" ] && {
                    echo "variant $variant of the fused model needs CAMERA_GENERATOR (its" \
                         "paste is multimodal: generated crops with generated points)" >&2
                    exit 2; }
            done
            for dir in "${LIDAR_GENERATOR:-}" "${CAMERA_GENERATOR:-}"; do
                [ -z "$dir" ] || [ -f "$dir/config.yaml" ] || {
                    echo "$dir/config.yaml: not found (not a generator's work dir)" >&2; exit 2; }
            done ;;
        *) echo "unknown variant $variant (none, lidar, multimodal, generated or" \
                "generated_real)" >&2; exit 2 ;; esac
done
PER_OBJECT=${PER_OBJECT:-4}
GENERATED_SEED=${GENERATED_SEED:-0}
for kv in ${PASTE_CLASSES//,/ }; do
    [[ "$kv" =~ ^[a-z_]+=[0-9]+$ ]] || { echo "PASTE_CLASSES: $kv is not CLASS=COUNT" >&2; exit 2; }
done
mkdir -p "$OUT"

TRAIN_ROOT=$DATA/synth-train-rare
HELDOUT_ROOT=$DATA/synth-heldout
if [ "$SCENES" -ne 30 ] || [ ${#WORLD_OPTS[@]} -gt 0 ]; then TRAIN_ROOT=$TRAIN_ROOT-s$SCENES; fi
if [ "$HELDOUT_SCENES" -ne 10 ] || [ ${#WORLD_OPTS[@]} -gt 0 ]; then
    HELDOUT_ROOT=$HELDOUT_ROOT-s$HELDOUT_SCENES
fi
BANK=$TRAIN_ROOT-bank-train
VAL_SCENES=3
[ "$SCENES" -lt 10 ] && VAL_SCENES=1
if [ ! -f "$TRAIN_ROOT/v1.0-trainval/sample.json" ]; then
    $PY tools/create_data.py synth --out "$TRAIN_ROOT" --version v1.0-trainval --scenes "$SCENES" \
        --val-scenes "$VAL_SCENES" --seed 1 --rare bicycle,construction_vehicle "${WORLD_OPTS[@]}"
fi
[ -f "$TRAIN_ROOT/perception_index_v1.0-trainval.json.gz" ] || \
    $PY tools/create_data.py nuscenes --root "$TRAIN_ROOT" --version v1.0-trainval
if [ ! -f "$HELDOUT_ROOT/v1.0-trainval/sample.json" ]; then
    $PY tools/create_data.py synth --out "$HELDOUT_ROOT" --version v1.0-trainval \
        --scenes "$HELDOUT_SCENES" --val-scenes "$HELDOUT_SCENES" --seed 2 "${WORLD_OPTS[@]}"
fi
[ -f "$HELDOUT_ROOT/perception_index_v1.0-trainval.json.gz" ] || \
    $PY tools/create_data.py nuscenes --root "$HELDOUT_ROOT" --version v1.0-trainval
# the training split's objects only (the writer refuses the val split's scenes)
[ -f "$BANK/bank.json" ] || $PY tools/create_data.py objects --root "$TRAIN_ROOT" \
    --version v1.0-trainval --split train --out "$BANK" --workers 2

TRAIN_WORLD=(--set data.root="$TRAIN_ROOT" --set data.version=v1.0-trainval
             --set data.train_split=train --set data.val_split=val)
TEST_WORLD=(--set data.root="$HELDOUT_ROOT" --set data.version=v1.0-trainval)
PASTE_SET=(--set data.paste.enabled=true --set data.paste.bank="$BANK")
CLASS_SET=()
GENERATED_CLASSES=()
for kv in ${PASTE_CLASSES//,/ }; do
    CLASS_SET+=(--set "data.paste.classes.${kv%%=*}.count=${kv#*=}")
    GENERATED_CLASSES+=("${kv%%=*}")
done
PASTE_SET+=("${CLASS_SET[@]}")
GENERATED_CLASSES=$(IFS=,; echo "${GENERATED_CLASSES[*]}")

generated_bank() {  # MODEL VARIANT -> the bank's folder (built once, then reused)
    local model=$1 variant=$2 out="$OUT/banks/$1/$2"
    local cmd=($PY tools/create_data.py generated --bank "$BANK" --out "$out"
               --classes "$GENERATED_CLASSES" --lidar-generator "$LIDAR_GENERATOR"
               --per-object "$PER_OBJECT" --seed "$GENERATED_SEED" --no-progress)
    [ "$model" = fused ] && cmd+=(--camera-generator "$CAMERA_GENERATOR")
    [ "$variant" = generated_real ] && cmd+=(--with-real)
    if [ ! -f "$out/bank.json" ]; then
        echo "== $out: OMP_NUM_THREADS=$THREADS ${cmd[*]}" >&2
        rm -rf "$out"
        OMP_NUM_THREADS=$THREADS "${cmd[@]}" >&2
    fi
    echo "$out"
}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

for model in "${MODELS[@]}"; do
    extra=()
    case "$model" in
        # as the accuracy benchmark's fused variant: cameras at one frame, no modality dropout
        fused) config=configs/bevfusion_tiny.yaml; steps=${STEPS:-1200}
               extra=(--set data.clip_frames=1 --set model.camera.tsm_mode=off
                      --set "model.modality_dropout=[0.0,0.0]")
               [ -n "${CAMERA_START:-}" ] && extra+=(--set train.camera_start="$CAMERA_START") ;;
        lidar) config=configs/bevfusion_tiny_lidar.yaml; steps=${STEPS:-1400} ;;
        *) echo "unknown model $model (fused or lidar)" >&2; exit 2 ;;
    esac
    for variant in $VARIANTS; do
        case "$variant" in
            none) paste=() ;;
            lidar) paste=("${PASTE_SET[@]}" --set data.paste.cameras=false) ;;
            multimodal)
                if [ "$model" = lidar ]; then
                    echo "lidar/multimodal: skipped (no camera branch: the same run as lidar/lidar)"
                    continue
                fi
                paste=("${PASTE_SET[@]}" --set data.paste.cameras=true) ;;
            generated|generated_real)
                cameras=false
                [ "$model" = fused ] && cameras=true
                bank=$(generated_bank "$model" "$variant")
                paste=(--set data.paste.enabled=true --set data.paste.bank="$bank"
                       --set data.paste.source=generated "${CLASS_SET[@]}"
                       --set data.paste.cameras=$cameras) ;;
            *) echo "unknown variant $variant (none, lidar or multimodal)" >&2; exit 2 ;;
        esac
        for seed in $SEEDS; do
            work="$OUT/$model/$variant/seed$seed"
            if [ -f "$work/test/metrics.json" ]; then echo "$work: done, skipped"; continue; fi
            train=($PY tools/train.py "$config" --work-dir "$work" --no-progress
                   "${TRAIN_WORLD[@]}" "${extra[@]}" "${paste[@]}" --set seed="$seed"
                   --set train.max_steps="$steps" --set train.batch_size="$BATCH")
            if [ ! -f "$work/train_time.json" ]; then  # else trained, only its test is missing
                rm -rf "$work"  # an unfinished training starts over (same steps, same seed)
                echo "== $work: ${train[*]}"
                start=$(date +%s)
                OMP_NUM_THREADS=$THREADS "${train[@]}"
                end=$(date +%s)
                $PY -c 'import json, sys; a = sys.argv; print(json.dumps({"variant": a[1], "model": a[1],
                    "paste": a[2], "seed": int(a[3]), "train_seconds": int(a[4]), "steps": int(a[5]),
                    "commit": a[6], "command": "OMP_NUM_THREADS=" + a[7] + " " + " ".join(a[8:])}))' \
                    "$model" "$variant" "$seed" $((end - start)) "$steps" "$COMMIT" "$THREADS" \
                    "${train[@]}" > "$work/train_time.json"
            fi
            OMP_NUM_THREADS=$THREADS $PY tools/test.py "$config" "$work" --split val \
                --out "$work/test" --no-progress "${TEST_WORLD[@]}" "${extra[@]}"
        done
    done
done
echo "collect: $PY tools/benchmark.py paste --runs $OUT --out benchmarks/results/paste_cpu.json"
