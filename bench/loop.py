"""python -m bench loop [--data_dir DIR] [--size 50] [--batch_sizes 32,256] [--steps 40] [--repeats 3]
                       [--models incremental,rendering]

Training speed of trainer.train's loop against Keras's model.fit (what trainer.task ran before the loop),
on the same model compiled the same way (one device, MirroredStrategy, XLA): the model computed from
the path (incremental, the trainer's default) and the one that draws the frames first (rendering, what
model.fit trained before), each
fed by the trainer's input pipeline and on one batch held in memory ("resident"), side by side in one
process, alternating so that all see the same machine load. Sequences per second over the timed steps
after WARMUP_STEPS; best of --repeats. Without --data_dir a dataset is generated in a temporary folder
that is removed at the end. Ends with one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

from pipeline import cli

WARMUP_STEPS = 5


def parse_args(argv):
    parser = cli.ArgumentParser(prog="bench loop", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_<size> (default: generate one).")
    parser.add_argument("--size", type=cli.positive_int, default=50)
    parser.add_argument("--num_train", type=cli.positive_int, default=4096, help="When generating.")
    parser.add_argument("--batch_sizes", default="32,256", help="Comma-separated global batch sizes.")
    parser.add_argument("--steps", type=cli.positive_int, default=40, help="Timed train steps per run.")
    parser.add_argument("--repeats", type=cli.positive_int, default=3, help="Timed runs of each kind (best kept).")
    parser.add_argument("--models", default="incremental,rendering", help="Comma-separated: incremental, rendering.")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - {"incremental", "rendering"}
    if unknown:
        parser.error(f"unknown model {sorted(unknown)[0]!r}; choose from incremental, rendering")
    return args


def generate(data_dir: str, size: int, num_train: int):
    command = [sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={size}",
               f"--num_train={num_train}", "--num_validation=256", "--num_test=64"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)


def fit_rate(model, dataset, steps: int, batch_size: int) -> float:
    """Sequences per second of model.fit over `steps` steps after WARMUP_STEPS, from the ends of its steps."""
    import keras

    ends = []

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    model.fit(
        dataset, steps_per_epoch=WARMUP_STEPS + steps, epochs=1, verbose=0, shuffle=False, callbacks=[StepClock()]
    )
    return steps * batch_size / (ends[-1] - ends[WARMUP_STEPS - 1])


def loop_rate(loop, iterator, steps: int, batch_size: int) -> float:
    """Sequences per second of the trainer's loop (its per-step work: agreement, step, metrics to the host)."""
    for _ in range(WARMUP_STEPS):
        loop.take_step(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        loop.take_step(iterator)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_loop_"))
            print(f"bench loop: generating {args.num_train:,} size-{args.size} sequences in {data_dir}", flush=True)
            generate(data_dir, args.size, args.num_train)
        model_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_loop_model_"))
        return measure(args, data_dir, model_dir)


def measure(args, data_dir: str, model_dir: str) -> int:
    from trainer import input_pipeline

    builder = input_pipeline.load_builder(data_dir, args.size)
    results = {"benchmark": "loop", "size": args.size, "cpus": os.cpu_count(), "steps": args.steps, "batches": {}}
    print(f"bench loop: size {args.size}, {args.steps} timed steps per run, best of {args.repeats}, data {data_dir}")
    for model_name in args.models.split(","):
        for batch_size in [int(text) for text in args.batch_sizes.split(",")]:
            figures = measure_one(args, builder, model_dir, model_name, batch_size)
            results["batches"][f"{model_name}_{batch_size}"] = figures
            print(f"  {model_name} model, batch {batch_size}:")
            for name, value in figures.items():
                print(f"    {name}: {value}", flush=True)
    print(json.dumps(results))
    return 0


def measure_one(args, builder, model_dir: str, model_name: str, batch_size: int) -> dict:
    import tensorflow as tf

    from trainer import config as config_lib
    from trainer import distribution, input_pipeline, outputs, preemption, train
    from trainer import model as model_lib

    config = {**config_lib.DEFAULTS, "size": args.size, "batch_size": batch_size, "steps_per_epoch": 1_000_000,
              "validation_steps": 1, "incremental_model": model_name == "incremental"}  # fmt: skip
    strategy = distribution.make_strategy(config, None)
    plan = train.plan_run(builder, config)
    loop = train.Loop(config, builder, strategy, plan, outputs.output_paths(model_dir), team=train.Team(),
                      stop=preemption.StopRequest("bench loop"), log=lambda message: None)  # fmt: skip
    with strategy.scope():
        fit_model = model_lib.build_path_model(
            config["size"], incremental=config["incremental_model"], xla_layers=config["xla_layers"]
        )
        model_lib.compile_model(fit_model, config["learning_rate"], jit_compile=config["xla_layers"])

    def fed(context=None):
        return input_pipeline.training_dataset(builder, config, input_context=context)

    batch = next(iter(fed()))
    resident = tf.data.Dataset.from_tensors(batch).repeat()
    iterators = {
        "loop_fed": iter(strategy.distribute_datasets_from_function(fed)),
        "loop_resident": iter(strategy.distribute_datasets_from_function(lambda context: resident)),
    }
    rates = {}
    for _ in range(args.repeats):
        for name, iterator in iterators.items():
            rates.setdefault(name, []).append(loop_rate(loop, iterator, args.steps, batch_size))
        rates.setdefault("fit_fed", []).append(fit_rate(fit_model, fed(), args.steps, batch_size))
        rates.setdefault("fit_resident", []).append(fit_rate(fit_model, resident, args.steps, batch_size))
    best = {name: max(values) for name, values in rates.items()}
    figures = {f"{name}_seq_per_s": round(value, 1) for name, value in best.items()}
    figures["loop_fed_over_loop_resident"] = round(best["loop_fed"] / best["loop_resident"], 3)
    figures["fit_fed_over_fit_resident"] = round(best["fit_fed"] / best["fit_resident"], 3)
    figures["loop_fed_over_fit_fed"] = round(best["loop_fed"] / best["fit_fed"], 3)
    figures["runs"] = {name: [round(value, 1) for value in values] for name, values in rates.items()}
    return figures
