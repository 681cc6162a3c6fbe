"""python -m bench feed [--data_dir DIR] [--size 50] [--batch_sizes 32] [--steps 30] [--time_distributed]

Training speed of the folded model, built and compiled as trainer.task does (its
MirroredStrategy; on one CPU the XLA layers under XLA), fed from the TFRecords
(trainer.input_pipeline: read, shuffle, decode, batch) versus fed one batch already in memory, side by side in one
process, alternating so that both see the same machine load. Also the input pipeline on
its own (read and decode, no training), and with --time_distributed the tutorial's
TimeDistributed form on the batch in memory. Without --data_dir a small dataset is
generated first (pipeline.generate, in a temporary folder). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

from pipeline import cli


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench feed", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_<size> (default: generate one).")
    parser.add_argument("--size", type=cli.positive_int, default=50)
    parser.add_argument("--batch_sizes", default="32", help="Comma-separated global batch sizes.")
    parser.add_argument("--steps", type=cli.positive_int, default=30, help="Train steps per timed run.")
    parser.add_argument("--repeats", type=cli.positive_int, default=2, help="Timed runs of each kind (best kept).")
    parser.add_argument("--time_distributed", action="store_true", help="Also time the TimeDistributed form.")
    return parser.parse_args(argv)


def generate_data(size: int) -> str:
    data_dir = tempfile.mkdtemp(prefix="bench_feed_")
    command = [sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={size}",
               "--num_train=2000", "--num_validation=64", "--num_test=64"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return data_dir


def train_rate(model, dataset, steps: int) -> float:
    """Sequences per second over `steps` train steps of model.fit (already traced)."""
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps * int(dataset.element_spec[0].shape[0]) / (time.perf_counter() - start)


def read_rate(dataset, steps: int) -> float:
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    batch = 0
    for _ in range(steps):
        batch = len(next(iterator)[1])
    return steps * batch / (time.perf_counter() - start)


def main(argv):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    import tensorflow as tf

    from trainer import config as config_lib
    from trainer import input_pipeline, task
    from trainer import model as model_lib

    data_dir = args.data_dir or generate_data(args.size)
    builder = input_pipeline.load_builder(data_dir, args.size)
    results = {"benchmark": "feed", "size": args.size, "cpus": os.cpu_count(), "steps": args.steps, "batches": {}}
    print(f"bench feed: size {args.size}, {args.steps} steps per timed run, best of {args.repeats}, data {data_dir}")
    for batch_size in [int(text) for text in args.batch_sizes.split(",")]:
        config = {**config_lib.DEFAULTS, "size": args.size, "batch_size": batch_size}
        fed = input_pipeline.training_dataset(builder, config)
        resident_batch = next(iter(fed))
        resident = tf.data.Dataset.from_tensors(resident_batch).repeat()
        # As trainer.task builds it: under its MirroredStrategy, with the XLA layers and XLA on one CPU.
        strategy = task.make_strategy(None)
        xla = model_lib.xla_layers_for(strategy, config["xla_layers_on_cpu"])
        builds = {"folded": functools.partial(model_lib.build_model, xla_layers=xla)}
        if args.time_distributed:
            builds["time_distributed"] = model_lib.build_time_distributed_model
        models = {}
        for name, build in builds.items():
            with strategy.scope():
                models[name] = model_lib.compile_model(build(config), 0.001, jit_compile=xla and name == "folded")
            models[name].fit(resident, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace once
        rates = {"resident": [], "fed": [], "time_distributed_resident": [], "pipeline_only": []}
        for _ in range(args.repeats):
            rates["resident"].append(train_rate(models["folded"], resident, args.steps))
            rates["fed"].append(train_rate(models["folded"], fed, args.steps))
            rates["pipeline_only"].append(read_rate(fed, args.steps * 4))
            if "time_distributed" in models:
                rates["time_distributed_resident"].append(train_rate(models["time_distributed"], resident, args.steps))
        best = {name: max(values) for name, values in rates.items() if values}
        figures = {f"{name}_seq_per_s": round(value, 1) for name, value in best.items()}
        figures["fed_over_resident"] = round(best["fed"] / best["resident"], 3)
        if "time_distributed_resident" in best:
            figures["folded_over_time_distributed"] = round(best["resident"] / best["time_distributed_resident"], 3)
        figures["xla_layers"] = xla
        results["batches"][str(batch_size)] = figures
        print(f"  batch {batch_size}: " + ", ".join(f"{name} {value}" for name, value in figures.items()), flush=True)
    first = results["batches"][args.batch_sizes.split(",")[0].strip()]
    results["fed_over_resident"] = first["fed_over_resident"]
    print(json.dumps(results))
    return 0
