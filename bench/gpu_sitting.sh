#!/usr/bin/env bash
# The one-GPU figures of BENCHMARKS.md, taken in one sitting on a GPU machine that has TensorFlow's
# GPU build and this project's Python packages (PYTHON, default python3, must import them).
#   bash bench/gpu_sitting.sh DATA_DIR OUT_DIR one|two
# DATA_DIR holds moving_line/size_50 (64,000 train examples in 16 shards were used); each benchmark's
# full output goes to OUT_DIR/NAME.log and its summary lines to stdout.
set -uo pipefail
data=$1 out=$2 phase=$3
python=${PYTHON:-python3}
mkdir -p "$out"

run() {  # NAME SECONDS ARGS...: one benchmark, stopped after SECONDS
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    PYTHONUNBUFFERED=1 timeout "$seconds" "$python" "$@" >"$out/$name.log" 2>&1
    echo "   exit $? after $((SECONDS - start)) s"
    grep -E '^  |^bench|^\[trainer|Error|error:' "$out/$name.log" | grep -v -E 'ordered dataset|^ +File ' | tail -40
}

case $phase in
one)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # The train step on a batch in memory: the model computed from the path against the frames drawn.
    run step 240 -m bench step --batch_sizes 1024,4096
    # As trainer.task trains on one GPU (the model computed from the path, XLA), with each input candidate.
    run feed_trainer 300 -m bench feed --data_dir "$data" --batch_sizes 1024,256 --steps 60 \
        --candidates path,video_host,video_host_batched
    # The frames drawn on the GPU (XLA layers, XLA), as the trainer trained before.
    run feed_rendering 150 -m bench feed --data_dir "$data" --batch_sizes 1024 --steps 60 --candidates path --rendering
    # Keras's layers (cuDNN), no XLA.
    run feed_keras 150 -m bench feed --data_dir "$data" --batch_sizes 1024,256 --steps 60 --candidates path --model keras
    # Past cuDNN's max-pool limit (about 100,000 frames): the XLA layers have no such limit.
    run feed_large_batches 150 -m bench feed --data_dir "$data" --batch_sizes 2048,4096 --steps 30 --repeats 1 \
        --candidates path
    ;;
two)
    run feed_two_logical_gpus 240 -m bench feed --data_dir "$data" --batch_sizes 1024,256 --steps 60 \
        --candidates path --logical_devices 2
    run feed_time_distributed 150 -m bench feed --data_dir "$data" --batch_sizes 256 --steps 30 --repeats 1 \
        --candidates video_host --model keras --time_distributed
    run trainer_gpu 200 -m trainer.task --config configs/default.yaml --data_dir "$data" --model_dir "$out/run" \
        --set batch_size=1024 --set steps_per_epoch=50 --set epochs=3 --set validation_steps=2 --set verbose=2
    rm -rf "$out/run"
    ;;
esac
