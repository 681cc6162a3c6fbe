#!/usr/bin/env bash
# The main job on configs/default.yaml: generate -> train -> evaluate -> export -> predict.
#   bash scripts/run_default.sh [WORK]      (what `make run` does; WORK defaults to work)
# Running it again reuses the data and the finished model (each step says "nothing to do").
set -euo pipefail

WORK="${1:-work}"
PYTHON="${PYTHON:-.venv/bin/python}"
CONFIG="${CONFIG:-configs/default.yaml}"
DATA="$WORK/data"
MODEL="$WORK/model"
START=$(date +%s)

step() { echo "=== $* (at $(($(date +%s) - START)) s)"; }

# The dataset's counts and seed come from the config, so one file describes the whole job.
read -r SIZE NUM_TRAIN NUM_VALIDATION NUM_TEST DATA_SEED < <(
  "$PYTHON" -c 'import sys; from trainer import config; c = config.load(sys.argv[1]);
print(c["size"], c["num_train"], c["num_validation"], c["num_test"], c["data_seed"])' "$CONFIG"
)

step "generate: moving_line/size_$SIZE, $NUM_TRAIN train / $NUM_VALIDATION validation / $NUM_TEST test"
"$PYTHON" -m pipeline.generate --data_dir "$DATA" --size "$SIZE" --num_train "$NUM_TRAIN" \
  --num_validation "$NUM_VALIDATION" --num_test "$NUM_TEST" --seed "$DATA_SEED"

step "train and export: $CONFIG"
"$PYTHON" -m trainer.task --config "$CONFIG" --data_dir "$DATA" --model_dir "$MODEL"

step "evaluate the exported SavedModel on the test split"
"$PYTHON" -m trainer.evaluate --model_dir "$MODEL" --data_dir "$DATA" --split test

step "predict new sequences"
# Seeds far from the dataset's, so these sequences are new ones.
"$PYTHON" -m trainer.predict --model "$MODEL" --count 5 --seed "$((DATA_SEED + 1000003))"

step "done in $(($(date +%s) - START)) s"
cat <<DONE
data:            $DATA/moving_line/size_$SIZE
checkpoints:     $MODEL/checkpoints
TensorBoard:     $MODEL/logs   (tensorboard --logdir $MODEL/logs)
history:         $MODEL/history.csv, $MODEL/history.json
learning curves: $MODEL/learning_curves.png
test metrics:    $MODEL/metrics.json
SavedModel:      $MODEL/export
Keras model:     $MODEL/model.keras
DONE
