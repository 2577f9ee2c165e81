#!/usr/bin/env bash
# Pretrains the tiny camera encoder (EfficientViT-B0 + neck) on a world of its own, as camera
# BEV detectors start from an image backbone trained elsewhere (BEVFusion: nuImages; BEVFormer,
# DETR3D: FCOS3D). No weights can be downloaded here, so the "elsewhere" is a generated world
# from a seed used by nothing else (5; the accuracy benchmark trains on seed 1 and tests on
# seed 2): the camera-only tiny model at one frame, with its depth supervised by the LiDAR
# points and the perspective loss (the class of every image cell), for BUDGET_MIN minutes
# (default 25) of training loop, at most STEPS (default 6000) steps. SCENES=N (default 30)
# pretrains on a world of N scenes from the same seed: data/synth-pretrain for 30, else
# data/synth-pretrain-sN (generated when absent).
#
#   tools/pretrain_camera.sh [OUT_DIR]        # default outputs/camera_pretrain
#
# Then any run can start its camera encoder from it (the rest of the model from scratch):
#   --set train.init_from=OUT_DIR --set "train.init_prefixes=[camera.encoder.]"
# or, for the accuracy benchmark, PRETRAINED=OUT_DIR tools/accuracy_benchmark.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-outputs/camera_pretrain}
SCENES=${SCENES:-30}
WORLD=data/synth-pretrain
[ "$SCENES" -ne 30 ] && WORLD=data/synth-pretrain-s$SCENES
if [ ! -f $WORLD/v1.0-trainval/sample.json ]; then
    $PY tools/create_data.py synth --out $WORLD --version v1.0-trainval \
        --scenes "$SCENES" --val-scenes 3 --seed 5
fi
[ -f $WORLD/perception_index_v1.0-trainval.json.gz ] || \
    $PY tools/create_data.py nuscenes --root $WORLD --version v1.0-trainval
$PY tools/train.py configs/bevfusion_tiny_camera.yaml --work-dir "$OUT" --no-progress \
    --set data.root=$WORLD --set data.version=v1.0-trainval \
    --set data.train_split=train --set data.val_split=val \
    --set data.clip_frames=1 --set model.camera.tsm_mode=off \
    --set model.camera.perspective_loss_weight=1.0 \
    --set train.max_steps="${STEPS:-6000}" --set train.time_budget_min="${BUDGET_MIN:-25}"
