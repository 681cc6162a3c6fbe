#!/usr/bin/env bash
# The main job on configs/default.yaml: generate -> train -> evaluate -> export -> predict.
#   bash scripts/run_default.sh [WORK]      (what `make run` does; WORK defaults to work)
# Running it again reuses the data and the finished model (each step says "nothing to do").
# WORK gets a .moving-line-work file, by which `make clean` knows it may delete the folder; a folder
# that holds anything else is refused, so that `make clean` never deletes files of yours.
set -euo pipefail

WORK="${1:-work}"
PYTHON="${PYTHON:-.venv/bin/python}"
CONFIG="${CONFIG:-configs/default.yaml}"
DATA="$WORK/data"
MODEL="$WORK/model"
MARK="$WORK/.moving-line-work"
START=$(date +%s)

say() { echo "[run_default.sh] $*" >&2; }
fail() { echo "run_default.sh: error: $*" >&2; exit 2; }
step() { say "$* (at $(($(date +%s) - START)) s)"; }

# WORK: new, empty, or one this script made (older runs left data/ and model/ only, without the mark).
if [ -e "$WORK" ] && [ ! -e "$MARK" ]; then
  [ -d "$WORK" ] || fail "WORK $WORK is a file; give a folder"
  for entry in "$WORK"/* "$WORK"/.[!.]*; do
    [ -e "$entry" ] || continue
    case "$(basename -- "$entry")" in
      data | model) ;;
      *) fail "WORK $WORK holds other files ($entry); give a new or empty folder (make run WORK=...)" ;;
    esac
  done
fi
mkdir -p -- "$WORK" || fail "WORK $WORK cannot be created; give a writable folder"
echo "Made by make run (scripts/run_default.sh); make clean deletes this folder." > "$MARK"

# The dataset's counts and seed come from the config, so one file describes the whole job.
SETTINGS=$("$PYTHON" -c '
import sys
from pipeline.cli import UsageError
from trainer import config
try:
    c = config.load(sys.argv[1])
except UsageError as error:
    sys.exit(f"run_default.sh: error: {error}")
print(c["size"], c["num_train"], c["num_validation"], c["num_test"], c["data_seed"])' "$CONFIG")
read -r SIZE NUM_TRAIN NUM_VALIDATION NUM_TEST DATA_SEED <<< "$SETTINGS"

step "generate: moving_line/size_$SIZE, $NUM_TRAIN train / $NUM_VALIDATION validation / $NUM_TEST test"
"$PYTHON" -m pipeline.generate --data_dir="$DATA" --size="$SIZE" --num_train="$NUM_TRAIN" \
  --num_validation="$NUM_VALIDATION" --num_test="$NUM_TEST" --seed="$DATA_SEED"

step "train and export: $CONFIG"
"$PYTHON" -m trainer.task --config="$CONFIG" --data_dir="$DATA" --model_dir="$MODEL"

step "evaluate the exported SavedModel on the test split"
"$PYTHON" -m trainer.evaluate --model_dir="$MODEL" --data_dir="$DATA" --split=test

step "predict new sequences"
# Seeds far from the dataset's, so these sequences are new ones.
"$PYTHON" -m trainer.predict --model="$MODEL" --count=5 --seed="$((DATA_SEED + 1000003))"

step "done in $(($(date +%s) - START)) s"
say "data:            $DATA/moving_line/size_$SIZE"
say "checkpoints:     $MODEL/checkpoints"
say "TensorBoard:     $MODEL/logs   (tensorboard --logdir $(printf %q "$MODEL/logs"))"
say "history:         $MODEL/history.csv, $MODEL/history.json"
say "learning curves: $MODEL/learning_curves.png"
say "test metrics:    $MODEL/metrics.json"
say "SavedModel:      $MODEL/export"
say "Keras model:     $MODEL/model.keras"
