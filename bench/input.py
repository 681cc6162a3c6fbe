"""python -m bench input [--data_dir DIR] [--size 50] [--batch_size 32] [--batches 300]

The tf.data input pipeline on its own, as the trainer builds it (trainer.input_pipeline:
interleaved shards, shuffle of serialized records, batch, parse path and label per batch,
prefetch), next to the same records read by TFDS with each video inflated on the host (the
trainer's input before the path feature) and the records alone, in one process. Reports
sequences per second and per core. Without --data_dir a dataset is generated first.
Ends with one JSON line.
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
    command = [sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={size}",
               "--num_train=2000", "--num_validation=64", "--num_test=64"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)


def main(argv=None):
    parser = cli.ArgumentParser(prog="bench input", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_<size> (default: generate one).")
    parser.add_argument("--size", type=cli.positive_int, default=contract.DEFAULT_SIZE)
    parser.add_argument("--batch_size", type=cli.positive_int, default=32)
    parser.add_argument("--batches", type=cli.positive_int, default=300)
    args = parser.parse_args(argv)
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
    figures["pipeline_seq_per_s_per_core"] = round(figures["pipeline_seq_per_s"] / cores)
    figures["pipeline_over_videos_inflated"] = round(
        figures["pipeline_seq_per_s"] / figures["videos_inflated_seq_per_s"], 1
    )
    per_core = figures["pipeline_seq_per_s_per_core"]
    print(f"  the trainer's pipeline (path, label): {figures['pipeline_seq_per_s']:,} seq/s ({per_core:,} per core)")
    print(f"  videos inflated on the host, example by example: {figures['videos_inflated_seq_per_s']:,} seq/s")
    print(f"  serialized records alone: {figures['records_only_seq_per_s']:,} seq/s")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
