"""python -m bench step [--size 50] [--batch_sizes 32,256] [--rounds 3] [--round_seconds 3]

Train steps on one batch held in memory (no input pipeline), side by side in one process:
Keras's train step (binary cross-entropy, Adam), compiled with XLA as trainer.task compiles
it, on a batch of real paths, for each candidate model:

  rendering    RenderVideo draws the frames, then XlaConv2D, XlaMaxPooling2D, Flatten and
               XLA's LSTM (trainer.model.build_path_model(incremental=False, xla_layers=True))
  incremental  the same function from the path without drawing a frame (PathConv2D, PathLSTM:
               build_path_model(incremental=True))

Each round times every candidate in turn for about --round_seconds; a candidate's figure is
the median of its rounds, in sequences per second. Ends with one JSON line holding the
figures, incremental_over_rendering per batch size, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from pipeline import cli

CANDIDATES = ("rendering", "incremental")


def parse_args(argv):
    parser = cli.ArgumentParser(prog="bench step", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=cli.positive_int, default=50)
    parser.add_argument("--batch_sizes", default="32,256", help="Comma-separated batch sizes.")
    parser.add_argument("--rounds", type=cli.positive_int, default=3)
    parser.add_argument("--round_seconds", type=float, default=3.0, help="Time each candidate this long per round.")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"Comma-separated, from {CANDIDATES}.")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [cli.positive_int(text) for text in args.batch_sizes.split(",")]
    except argparse.ArgumentTypeError as error:
        parser.error(f"--batch_sizes: {error}")
    args.candidates = [name.strip() for name in args.candidates.split(",")]
    unknown = [name for name in args.candidates if name not in CANDIDATES]
    if unknown:
        parser.error(f"--candidates: unknown candidate {unknown[0]!r}; choose from {', '.join(CANDIDATES)}")
    if args.size < 3:
        parser.error(f"--size: the model needs a size of at least 3, got {args.size}")
    if args.round_seconds <= 0:
        parser.error(f"--round_seconds: must be positive, got {args.round_seconds}")
    return args


def build(candidate: str, size: int):
    from trainer import model as model_lib

    incremental = candidate == "incremental"
    model = model_lib.build_path_model(size, incremental=incremental, xla_layers=True)
    return model_lib.compile_model(model, 0.001, jit_compile=True)


def timed_steps(model, path, labels, calls: int) -> float:
    """Seconds for calls train steps (the last one's result fetched, so that all have run)."""
    start = time.perf_counter()
    for _ in range(calls):
        logs = model.train_on_batch(path, labels, return_dict=True)
    float(logs["loss"])
    return time.perf_counter() - start


def main(argv):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    import keras
    import tensorflow as tf

    from pipeline import generator

    load_before = os.getloadavg()
    results = {"benchmark": "step", "size": args.size, "cpus": os.cpu_count(), "rounds": args.rounds, "batches": {}}
    print(f"bench step: size {args.size}, Keras train steps under XLA on a batch in memory, median of {args.rounds}")
    print(f"  load average before: {' '.join(f'{value:.2f}' for value in load_before)}", flush=True)
    models = {}
    for candidate in args.candidates:
        keras.utils.set_random_seed(0)
        models[candidate] = build(candidate, args.size)
    weights = models[args.candidates[0]].get_weights()
    for model in models.values():
        model.set_weights(weights)  # the same function on both sides
    for batch_size in args.batch_sizes:
        data = generator.generate(seed=1, split="train", start=0, count=batch_size, size=args.size)
        path, labels = tf.constant(data["path"]), tf.constant(data["label"], tf.float32)
        calls = {}
        for name, model in models.items():
            timed_steps(model, path, labels, 2)  # compiles for this batch size
            one = timed_steps(model, path, labels, 1)
            calls[name] = max(1, round(args.round_seconds / one))
        rates = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                rates[name].append(calls[name] * batch_size / timed_steps(model, path, labels, calls[name]))
        figures = {f"{name}_seq_per_s": round(statistics.median(values), 1) for name, values in rates.items()}
        if "rendering" in models and "incremental" in models:
            figures["incremental_over_rendering"] = round(
                figures["incremental_seq_per_s"] / figures["rendering_seq_per_s"], 2
            )
        results["batches"][str(batch_size)] = figures
        print(f"  batch {batch_size}: " + ", ".join(f"{key} {value}" for key, value in figures.items()), flush=True)
    load_after = os.getloadavg()
    print(f"  load average after: {' '.join(f'{value:.2f}' for value in load_after)}")
    results["load_average_before"] = [round(value, 2) for value in load_before]
    results["load_average_after"] = [round(value, 2) for value in load_after]
    print(json.dumps(results))
    return 0
