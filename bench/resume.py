"""python -m bench resume [--data_dir DIR] [--size 50] [--num_train 20000] [--batch_size 32] [--repeats 3]
                         [--end_to_end_epochs 0,1.5,10.5]

What resuming a run costs, side by side in one process:
  - the input position: seconds from a start at step s to the first batch of the trainer's stream
    (trainer.input_pipeline.training_dataset), for s at the start, half an epoch, 1.5 and 10.5 epochs
    into a run (an epoch here is one pass over the training split), against replaying the stream from
    step 0 to s (what a resume would cost without each epoch's order being a function of its number);
  - a checkpoint of the size-S training model and Adam: bytes on disk, seconds to write it with its
    checksums, seconds to check and restore it;
  - trainer.task end to end: seconds from the command's start to its first train step, new and resumed
    at 1.5 and 10.5 epochs (a checkpoint written there beforehand, with the run's config).
Without --data_dir a dataset is generated in a temporary folder; everything is removed at the end.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from pipeline import cli

POSITIONS = {"start": 0.0, "half an epoch": 0.5, "1.5 epochs": 1.5, "10.5 epochs": 10.5}
RUN_EPOCHS = 12  # the length of the measured run, past every position


def parse_args(argv):
    parser = cli.ArgumentParser(prog="bench resume", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_<size> (default: generate one).")
    parser.add_argument("--size", type=cli.positive_int, default=50)
    parser.add_argument("--num_train", type=cli.positive_int, default=20_000, help="When generating.")
    parser.add_argument("--batch_size", type=cli.positive_int, default=32)
    parser.add_argument("--repeats", type=cli.positive_int, default=3, help="Timed runs of each (median kept).")
    parser.add_argument(
        "--end_to_end_epochs",
        type=epochs_list,
        default=[0.0, 1.5, 10.5],
        help="Where trainer.task is started end to end, in epochs into a run (comma-separated; 0: a new run).",
    )
    return parser.parse_args(argv)


def epochs_list(text: str) -> list[float]:
    try:
        epochs = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers of epochs separated by commas, got {text!r}") from None
    if any(not 0 <= value < RUN_EPOCHS for value in epochs):
        raise argparse.ArgumentTypeError(
            f"expected epochs from 0 to under {RUN_EPOCHS} (the run's length), got {text!r}"
        )
    return list(dict.fromkeys(epochs))


def main(argv):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_resume_"))
        data_dir = args.data_dir or os.path.join(work, "data")
        if args.data_dir is None:
            print(f"bench resume: generating {args.num_train:,} size-{args.size} sequences", flush=True)
            command = [sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={args.size}",
                       f"--num_train={args.num_train}", "--num_validation=256", "--num_test=64"]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True)
        return measure(args, data_dir, work)


def first_batch_seconds(make_dataset, skip: int = 0) -> float:
    start = time.perf_counter()
    iterator = iter(make_dataset().skip(skip))
    next(iterator)
    return time.perf_counter() - start


def measure(args, data_dir: str, work: str) -> int:
    import yaml

    from trainer import checkpoints, distribution, input_pipeline, outputs, preemption, train
    from trainer import config as config_lib

    builder = input_pipeline.load_builder(data_dir, args.size)
    num_train = builder.info.splits["train"].num_examples
    steps_per_epoch = num_train // args.batch_size
    config = {**config_lib.DEFAULTS, "size": args.size, "batch_size": args.batch_size, "epochs": RUN_EPOCHS,
              "deterministic": True, "validation_steps": 2, "verbose": 2, "test_after_training": False}  # fmt: skip
    results = {"benchmark": "resume", "size": args.size, "num_train": num_train, "batch_size": args.batch_size,
               "steps_per_epoch": steps_per_epoch, "cpus": os.cpu_count()}  # fmt: skip
    print(f"bench resume: size {args.size}, {num_train:,} training sequences, batch {args.batch_size} "
          f"({steps_per_epoch} steps an epoch), median of {args.repeats}")  # fmt: skip

    def stream(start_step):
        return lambda: input_pipeline.training_dataset(builder, config, steps_per_epoch=steps_per_epoch,
                                                       epochs=config["epochs"], start_step=start_step)  # fmt: skip

    position = {}
    for name, epochs in POSITIONS.items():
        step = int(epochs * steps_per_epoch)
        derived = statistics.median(first_batch_seconds(stream(step)) for _ in range(args.repeats))
        replayed = statistics.median(first_batch_seconds(stream(0), skip=step) for _ in range(args.repeats))
        position[name] = {"step": step, "derived_s": round(derived, 3), "replayed_s": round(replayed, 3)}
        print(f"  input position at {name} (step {step}): {derived:.3f} s derived from the step, "
              f"{replayed:.3f} s replaying from step 0", flush=True)  # fmt: skip
    results["input_position"] = position

    # A checkpoint of the real training model and optimizer, and model_dirs to resume from.
    strategy = distribution.make_strategy(config, None)
    plan = train.plan_run(builder, config)

    def loop_in(model_dir: str):
        return train.Loop(config, builder, strategy, plan, outputs.output_paths(model_dir), team=train.Team(),
                          stop=preemption.StopRequest("bench resume"), log=lambda message: None)  # fmt: skip

    loop = loop_in(os.path.join(work, "checkpoint"))
    writes, restores = [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        folder = checkpoints.save(loop.checkpoint, loop.paths.checkpoints, checkpoints.Position(repeat + 1), config,
                                  loop.dataset, keep=1)  # fmt: skip
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        checkpoints.restore_latest(loop.checkpoint, loop.paths.checkpoints, config, loop.dataset, log=print)
        restores.append(time.perf_counter() - start)
    size = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    results["checkpoint"] = {"bytes": size, "write_s": round(statistics.median(writes), 3),
                             "restore_s": round(statistics.median(restores), 3)}  # fmt: skip
    print(f"  checkpoint: {size:,} bytes, written with its checksums in {statistics.median(writes):.3f} s, "
          f"checked and restored in {statistics.median(restores):.3f} s", flush=True)  # fmt: skip

    config_path = os.path.join(work, "config.yaml")
    with open(config_path, "w") as file:
        yaml.safe_dump(config, file)
    end_to_end = {}
    for epochs in args.end_to_end_epochs:
        name = f"{epochs:g} epochs" if epochs else "start"
        model_dir = os.path.join(work, f"run_{name.replace(' ', '_')}")
        step = int(epochs * steps_per_epoch)
        if step:
            prepared = loop_in(model_dir)
            prepared.optimizer.iterations.assign(step)
            with open(config_path) as file:
                os.makedirs(model_dir)
                with open(os.path.join(model_dir, "config.yaml"), "w") as copy:
                    copy.write(file.read())
            checkpoints.save(prepared.checkpoint, prepared.paths.checkpoints,
                             checkpoints.Position(step, step // steps_per_epoch), config, prepared.dataset,
                             keep=1)  # fmt: skip
        end_to_end[name] = round(seconds_to_first_step(config_path, data_dir, model_dir), 2)
        print(f"  trainer.task from its start to its first step, {name}: {end_to_end[name]:.2f} s", flush=True)
    results["trainer_first_step_s"] = end_to_end
    print(json.dumps(results))
    return 0


def seconds_to_first_step(config_path: str, data_dir: str, model_dir: str) -> float:
    """trainer.task's seconds from its start to the end of its first train step (then it is stopped)."""
    command = [sys.executable, "-m", "trainer.task", "--config", config_path, "--data_dir", data_dir,
               "--model_dir", model_dir]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in process.stderr:
            if re.search(r"first step of this run after", line):
                return time.perf_counter() - start
    finally:
        process.kill()
        process.wait()
    raise RuntimeError(f"trainer.task never took a step: {' '.join(command)}")
