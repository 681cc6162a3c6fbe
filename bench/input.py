"""python -m bench input [--data_dir DIR] [--size 50] [--batch_size 32] [--batches 300]

The tf.data input pipeline on its own, as the trainer builds it (trainer.input_pipeline:
interleaved shards, shuffle of compressed records, parallel decode, batch, prefetch),
next to reading the same records without decoding them, in one process. Reports
sequences per second and per core. Without --data_dir a dataset is generated first.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench.feed import generate_data
from pipeline import cli


def rate(dataset, batches: int, batch_size: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # start-up (opening shards, filling the shuffle buffer) is not the steady rate
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench input", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_<size> (default: generate one).")
    parser.add_argument("--size", type=cli.positive_int, default=50)
    parser.add_argument("--batch_size", type=cli.positive_int, default=32)
    parser.add_argument("--batches", type=cli.positive_int, default=300)
    args = parser.parse_args(argv)
    cli.quiet_tensorflow()
    import tensorflow as tf

    from trainer import config as config_lib
    from trainer import input_pipeline

    data_dir = args.data_dir or generate_data(args.size)
    builder = input_pipeline.load_builder(data_dir, args.size)
    config = {**config_lib.DEFAULTS, "size": args.size, "batch_size": args.batch_size}
    cores = os.cpu_count() or 1
    print(f"bench input: size {args.size}, batch {args.batch_size}, {args.batches} batches, {cores} cores, {data_dir}")

    decoded = input_pipeline.training_dataset(builder, config)
    records = (
        input_pipeline.read_records(
            builder, "train", shuffle_files=True, seed=0, cycle_length=config["interleave_cycle_length"],
            deterministic=False,
        )
        .repeat()
        .batch(args.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )  # fmt: skip
    figures = {
        "benchmark": "input",
        "size": args.size,
        "batch_size": args.batch_size,
        "cores": cores,
        "pipeline_seq_per_s": round(rate(decoded, args.batches, args.batch_size)),
        "records_only_seq_per_s": round(rate(records, args.batches, args.batch_size)),
    }
    figures["pipeline_seq_per_s_per_core"] = round(figures["pipeline_seq_per_s"] / cores)
    figures["decode_share"] = round(1 - figures["pipeline_seq_per_s"] / figures["records_only_seq_per_s"], 3)
    per_core = figures["pipeline_seq_per_s_per_core"]
    print(f"  full pipeline: {figures['pipeline_seq_per_s']:,} seq/s ({per_core:,} per core)")
    print(f"  records without decoding: {figures['records_only_seq_per_s']:,} seq/s")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
