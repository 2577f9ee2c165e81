#!/usr/bin/env bash
# The accuracy benchmark of BENCHMARKS.md: train the tiny detectors on one synthetic world and
# score them with the official nuScenes metrics on a world generated with a seed never used in
# training. Each variant trains for a fixed number of steps chosen to fit in 30 minutes on the
# 2-core CI machine; the script records the wall time of every run beside its metrics.
#
# Two modes, both recorded in BENCHMARKS.md; the default step counts follow the mode:
#   paired (OMP_NUM_THREADS=1, the default): two variants at a time, one thread each;
#   alone  (OMP_NUM_THREADS=2): one variant at a time on both cores, nothing else running.
#
#   tools/accuracy_benchmark.sh [OUT_DIR] [VARIANT ...]
#
# VARIANT: fused | lidar | camera | camera_t1 (camera-only with one frame, no TSM history) |
# camera_distill | camera_t1_distill (the camera-only pair as students of the LiDAR-only
# checkpoint TEACHER=DIR, configs/bevfusion_tiny_camera_distill.yaml, docs/distillation.md; the
# teacher's forward is left out of the time budget). Default: the first four. Worlds go to data/synth-train (seed 1, 30 scenes) and data/synth-heldout
# (seed 2, 10 scenes, all in the val split); both are generated when absent. Paired: once the
# worlds exist, `tools/accuracy_benchmark.sh OUT fused & tools/accuracy_benchmark.sh OUT lidar`;
# alone: `OMP_NUM_THREADS=2 tools/accuracy_benchmark.sh OUT fused lidar`. STEPS overrides the
# step count; SEED (default: the config's) reseeds the weights and the data order, for repeats.
# BUDGET_MIN=M trains each variant for M minutes of training loop instead of a fixed step count
# (train.time_budget_min: the schedule is fitted to the machine's pace; at most STEPS, default
# 4000, steps); train_time.json then records the steps that ran. The fused variant trains LiDAR
# first as its config says (train.camera_start, 0.5 since 2026-12-04); CAMERA_START=F overrides
# it (CAMERA_START=0: fused from the first step, as every fused run recorded before that).
# SET="key=value ..." adds config overrides to every variant's training and test (e.g.
# SET="data.sweep_stride=4"); each run's config.yaml records what it ran.
# TRAIN_SCENES=N (default 30) trains on a world of N scenes from the same seed (1), 3 of them
# in its val split: data/synth-train for 30, else data/synth-train-sN (generated when absent).
# The test world is the same whatever N.
# PRETRAINED=DIR starts the camera encoder of the fused and camera-only variants from the
# camera run in DIR (tools/pretrain_camera.sh: another world, seed 5); the rest of each model
# trains from scratch, and the pretraining's minutes are not part of the budget (as an
# ImageNet- or nuImages-pretrained backbone's are not). FREEZE_ENCODER=1 (with PRETRAINED) also
# keeps that encoder frozen (train.freeze_prefixes): no backward through it, a cheaper step.
# TEACHER_INIT=1 (with TEACHER) starts a distilled student's fuser, BEV decoder and head from
# the teacher's weights (train.init_from=TEACHER, init_prefixes [fuser., decoder., head.]; as
# CMKD's student starts its BEV backbone and head from its LiDAR teacher): the camera branch
# then learns to produce the BEV map the teacher's head already reads. Not with PRETRAINED
# (one train.init_from per run).
# Then `python tools/benchmark.py accuracy --runs OUT` collects every finished variant into
# benchmarks/results/accuracy_cpu.json (+ .md) and checks the targets on those numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-outputs/accuracy}
shift || true
VARIANTS=("$@")
[ ${#VARIANTS[@]} -eq 0 ] && VARIANTS=(fused lidar camera camera_t1)
BATCH=${BATCH:-2}
SEED_SET=()
[ -n "${SEED:-}" ] && SEED_SET=(--set seed="$SEED")
BUDGET_SET=()
[ -n "${BUDGET_MIN:-}" ] && BUDGET_SET=(--set train.time_budget_min="$BUDGET_MIN")
LIDAR_FIRST=()
[ -n "${CAMERA_START:-}" ] && LIDAR_FIRST=(--set train.camera_start="$CAMERA_START")
EXTRA_SET=()
for kv in ${SET:-}; do EXTRA_SET+=(--set "$kv"); done
INIT_SET=()
if [ "${TEACHER_INIT:-0}" = 1 ]; then
    [ -n "${TEACHER:-}" ] || { echo "TEACHER_INIT=1 needs TEACHER=DIR (a LiDAR-only run)" >&2; exit 2; }
    [ -z "${PRETRAINED:-}" ] || {
        echo "TEACHER_INIT=1 and PRETRAINED both set train.init_from: use one" >&2; exit 2; }
fi
[ -n "${PRETRAINED:-}" ] && INIT_SET=(--set train.init_from="$PRETRAINED"
                                      --set "train.init_prefixes=[camera.encoder.]")
if [ -n "${FREEZE_ENCODER:-}" ]; then
    [ -n "${PRETRAINED:-}" ] || { echo "FREEZE_ENCODER needs PRETRAINED" >&2; exit 2; }
    INIT_SET+=(--set "train.freeze_prefixes=[camera.encoder.]")
fi
THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"

SCENES=${TRAIN_SCENES:-30}
TRAIN_ROOT=data/synth-train
[ "$SCENES" -ne 30 ] && TRAIN_ROOT=data/synth-train-s$SCENES
if [ ! -f $TRAIN_ROOT/v1.0-trainval/sample.json ]; then
    $PY tools/create_data.py synth --out $TRAIN_ROOT --version v1.0-trainval \
        --scenes "$SCENES" --val-scenes 3 --seed 1
fi
[ -f $TRAIN_ROOT/perception_index_v1.0-trainval.json.gz ] || \
    $PY tools/create_data.py nuscenes --root $TRAIN_ROOT --version v1.0-trainval
if [ ! -f data/synth-heldout/v1.0-trainval/sample.json ]; then
    $PY tools/create_data.py synth --out data/synth-heldout --version v1.0-trainval \
        --scenes 10 --val-scenes 10 --seed 2
fi
[ -f data/synth-heldout/perception_index_v1.0-trainval.json.gz ] || \
    $PY tools/create_data.py nuscenes --root data/synth-heldout --version v1.0-trainval

TRAIN_WORLD=(--set data.root=$TRAIN_ROOT --set data.version=v1.0-trainval
             --set data.train_split=train --set data.val_split=val)
TEST_WORLD=(--set data.root=data/synth-heldout --set data.version=v1.0-trainval)

for variant in "${VARIANTS[@]}"; do
    extra=()
    case "$variant" in
        # steps: what fit in <= 30 minutes on the 2-core machine with a few minutes to spare
        # (BENCHMARKS.md), paired / alone. fused: the cameras at one frame (no TSM history):
        # 1.3x the steps of T=2 in the same time; no modality dropout (the benchmark scores
        # all-sensor accuracy; the config's dropout is for the robustness table). The
        # camera-only pair, where TSM is measured, trains the same number of steps.
        fused) config=configs/bevfusion_tiny.yaml
               if [ "$THREADS" -ge 2 ]; then steps=${STEPS:-1800}; else steps=${STEPS:-760}; fi
               extra=(--set data.clip_frames=1 --set model.camera.tsm_mode=off
                      --set "model.modality_dropout=[0.0,0.0]" "${LIDAR_FIRST[@]}") ;;
        lidar) config=configs/bevfusion_tiny_lidar.yaml
               if [ "$THREADS" -ge 2 ]; then steps=${STEPS:-2000}; else steps=${STEPS:-1400}; fi ;;
        camera) config=configs/bevfusion_tiny_camera.yaml
                if [ "$THREADS" -ge 2 ]; then steps=${STEPS:-1800}; else steps=${STEPS:-900}; fi ;;
        camera_t1) config=configs/bevfusion_tiny_camera.yaml
                   if [ "$THREADS" -ge 2 ]; then steps=${STEPS:-1800}; else steps=${STEPS:-900}; fi
                   extra=(--set data.clip_frames=1 --set model.camera.tsm_mode=off) ;;
        camera_distill|camera_t1_distill)
            [ -n "${TEACHER:-}" ] || { echo "$variant needs TEACHER=DIR (a LiDAR-only run)" >&2; exit 2; }
            config=configs/bevfusion_tiny_camera_distill.yaml
            if [ "$THREADS" -ge 2 ]; then steps=${STEPS:-1800}; else steps=${STEPS:-900}; fi
            extra=()
            [ "$variant" = camera_t1_distill ] && extra=(--set data.clip_frames=1
                                                         --set model.camera.tsm_mode=off) ;;
        *) echo "unknown variant $variant" >&2; exit 2 ;;
    esac
    [ -n "${BUDGET_MIN:-}" ] && steps=${STEPS:-4000}
    init=()
    [ "$variant" != lidar ] && init=("${INIT_SET[@]}")
    work="$OUT/$variant"
    teach=()
    if [[ "$variant" == *_distill ]]; then
        teach=(--set train.teacher="$TEACHER")
        [ "${TEACHER_INIT:-0}" = 1 ] && teach+=(--set train.init_from="$TEACHER"
                                                --set "train.init_prefixes=[fuser.,decoder.,head.]")
    fi
    train=($PY tools/train.py "$config" --work-dir "$work" --no-progress "${TRAIN_WORLD[@]}"
           "${extra[@]}" "${EXTRA_SET[@]}" --set train.max_steps="$steps" --set train.batch_size="$BATCH"
           "${SEED_SET[@]}" "${BUDGET_SET[@]}" "${init[@]}" "${teach[@]}")
    start=$(date +%s)
    OMP_NUM_THREADS=$THREADS "${train[@]}"
    end=$(date +%s)
    if [ -n "${BUDGET_MIN:-}" ]; then  # the steps the budget allowed: the last checkpoint's
        steps=$(ls "$work/checkpoints" | sed -n 's/^step_//p' | sort -n | tail -1)
    fi
    $PY -c 'import json, sys; print(json.dumps({"variant": sys.argv[1], "train_seconds": int(sys.argv[2]),
        "steps": int(sys.argv[3]), "command": "OMP_NUM_THREADS=" + sys.argv[4] + " " + " ".join(sys.argv[5:])}))' \
        "$variant" $((end - start)) "$steps" "$THREADS" "${train[@]}" > "$work/train_time.json"
    OMP_NUM_THREADS=$THREADS $PY tools/test.py "$config" "$work" --split val \
        --out "$work/test" --no-progress \
        "${TEST_WORLD[@]}" "${extra[@]}" "${EXTRA_SET[@]}"
done
echo "collect: $PY tools/benchmark.py accuracy --runs $OUT --out benchmarks/results/accuracy_cpu.json"
