"""python -m bench input [--data_dir DIR] [--size 50] [--batch_size 32] [--batches 300] [--pipelines 1,2,4,8]

The tf.data input pipeline on its own, as the trainer builds it (trainer.input_pipeline:
the input streams' shard ranges, shuffled in windows, batch, parse path and label per batch,
prefetch), next to the same records read by TFDS with each video inflated on the host (the
trainer's input before the path feature) and the records alone, in one process. Reports
sequences per second and per core. Then, for each count W of --pipelines, every one of W input
pipelines (as W workers would have them) reads 3 epochs, one after another: the bytes each reads
from the shard files in an epoch (this process's rchar, /proc/self/io) against the split's, and its
sequences per second. Without --data_dir a dataset is generated first. Ends with one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

from pipeline import cli, contract


def rate(dataset, batches: int, batch_size: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # start-up (opening shards, filling the shuffle buffer) is not the steady rate
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def generate_data(data_dir: str, size: int):
    # Enough for the input pipelines' bytes to be shares of the split rather than of one read buffer.
    command = [sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={size}",
               "--num_train=20000", "--num_validation=64", "--num_test=64"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)


def main(argv=None):
    parser = cli.ArgumentParser(prog="bench input", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_<size> (default: generate one).")
    parser.add_argument("--size", type=cli.positive_int, default=contract.DEFAULT_SIZE)
    parser.add_argument("--batch_size", type=cli.positive_int, default=32)
    parser.add_argument("--batches", type=cli.positive_int, default=300)
    parser.add_argument("--pipelines", default="1,2,4,8", help="Comma-separated input pipeline counts (workers).")
    args = parser.parse_args(argv)
    given = args.pipelines
    try:
        args.pipelines = [int(count) for count in given.split(",")]
    except ValueError:
        parser.error(f"--pipelines {given}: expected whole numbers, e.g. 1,2,4,8")
    from trainer import config as config_lib

    streams = config_lib.DEFAULTS["input_streams"]  # the trainer's, which the pipelines below read
    if any(count < 1 or streams % count for count in args.pipelines):
        parser.error(f"--pipelines {given}: each count must divide the {streams} input streams "
                     f"({config_lib.spoken_list(config_lib.divisors(streams))})")  # fmt: skip
    cli.quiet_tensorflow()
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_input_"))
            generate_data(data_dir, args.size)
        return measure(data_dir, args)


def measure(data_dir: str, args) -> dict:
    import tensorflow as tf

    from trainer import config as config_lib
    from trainer import input_pipeline

    builder = input_pipeline.load_builder(data_dir, args.size)
    config = {**config_lib.DEFAULTS, "size": args.size, "batch_size": args.batch_size}
    cores = os.cpu_count() or 1
    print(f"bench input: size {args.size}, batch {args.batch_size}, {args.batches} batches, {cores} cores, {data_dir}")

    trainer_input = input_pipeline.training_dataset(builder, config)
    records = input_pipeline.read_serialized(
        builder, "train", shuffle_files=True, seed=0, cycle_length=config["interleave_cycle_length"],
        deterministic=False,
    ).repeat().batch(args.batch_size).prefetch(tf.data.AUTOTUNE)  # fmt: skip
    videos = input_pipeline.read_records(
        builder, "train", shuffle_files=True, seed=0, cycle_length=config["interleave_cycle_length"],
        deterministic=False,
    ).repeat()  # fmt: skip
    videos = input_pipeline.batch_and_decode(videos, builder, args.batch_size, False, drop_remainder=True)
    figures = {
        "benchmark": "input",
        "size": args.size,
        "batch_size": args.batch_size,
        "cores": cores,
        "pipeline_seq_per_s": round(rate(trainer_input, args.batches, args.batch_size)),
        "videos_inflated_seq_per_s": round(rate(videos, args.batches, args.batch_size)),
        "records_only_seq_per_s": round(rate(records, args.batches, args.batch_size)),
    }
    figures["pipelines"] = {str(count): per_pipeline(builder, config, count) for count in args.pipelines}
    figures["pipeline_seq_per_s_per_core"] = round(figures["pipeline_seq_per_s"] / cores)
    figures["pipeline_over_videos_inflated"] = round(
        figures["pipeline_seq_per_s"] / figures["videos_inflated_seq_per_s"], 1
    )
    per_core = figures["pipeline_seq_per_s_per_core"]
    print(f"  the trainer's pipeline (path, label): {figures['pipeline_seq_per_s']:,} seq/s ({per_core:,} per core)")
    print(f"  videos inflated on the host, example by example: {figures['videos_inflated_seq_per_s']:,} seq/s")
    print(f"  serialized records alone: {figures['records_only_seq_per_s']:,} seq/s")
    for count, shares in figures["pipelines"].items():
        print(
            f"  {count} input pipeline(s): {shares['read_fraction_max']:.3f} of the split's bytes read in an epoch "
            f"by the one that read most (1/{count} = {1 / int(count):.3f}), {shares['seq_per_s_min']:,} to "
            f"{shares['seq_per_s_max']:,} seq/s each"
        )
    print(json.dumps(figures))
    return figures


def bytes_read() -> int:
    """What this process has read through system calls so far (page cache included): /proc/self/io's rchar."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


# Epochs each input pipeline reads: several, so that one pipeline's start-up weighs little on its rate.
EPOCHS = 3


def per_pipeline(builder, config: dict, pipelines: int) -> dict:
    """Each of `pipelines` input pipelines reading EPOCHS epochs in turn: the largest share of the split's bytes one
    read in an epoch, and the slowest and fastest rate."""
    import tensorflow as tf

    from trainer import input_pipeline

    info = builder.info.splits["train"]
    split_bytes = sum(os.path.getsize(path) for path in info.filepaths)
    steps = info.num_examples // config["batch_size"]
    fractions, rates = [], []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, pipelines)
        dataset = input_pipeline.training_dataset(builder, config, steps_per_epoch=steps, epochs=EPOCHS,
                                                  input_context=context if pipelines > 1 else None)  # fmt: skip
        before = bytes_read()
        batches = iter(dataset.take(steps * EPOCHS))
        next(batches)  # start-up (opening shards, the first windows) is not the steady rate
        start = time.perf_counter()
        examples = sum(len(labels) for _, labels in batches)
        rates.append(examples / (time.perf_counter() - start))
        fractions.append((bytes_read() - before) / split_bytes / EPOCHS)
    return {
        "read_fraction_max": round(max(fractions), 4),
        "read_fraction_per_pipeline_times_w": round(max(fractions) * pipelines, 3),
        "seq_per_s_min": round(min(rates)),
        "seq_per_s_max": round(max(rates)),
    }


if __name__ == "__main__":
    main()
