"""python -m bench feed [--data_dir DIR] [--size 50] [--batch_sizes 32] [--steps 30] [--candidates path,...]

Training speed through model.fit, built and compiled as trainer.task does (its MirroredStrategy;
on one device the whole step under XLA), fed by an input pipeline versus fed one batch already on
the device, side by side in one process, alternating so that both see the same machine load.
Also each input pipeline on its own (no training). Candidates (--candidates):

  path                the trainer's: each example's 100-byte path, parsed a batch at a time, into the
                      model the trainer builds (trainer.model.build_training_model: by default the
                      CNN-LSTM computed from the path; --rendering: RenderVideo draws the frames first)
  path_host           the path, parsed the same way, drawn into frames by the input pipeline
                      on the host (RenderVideo in a tf.data map); the model takes the video
  video_host          the stored zlib video, read by TFDS and inflated example by example on the
                      host (the trainer's design before the path feature)
  video_host_batched  the stored zlib video, parsed and inflated a batch at a time on the host

--logical_devices N splits the first GPU (the CPU when there is none) into N logical devices and
times the path candidate mirrored over all N against one of them. --time_distributed also times
the tutorial's TimeDistributed form on the resident video batch. Without --data_dir a small dataset is generated first
(pipeline.generate, in a temporary folder). Ends with one JSON line.
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

CANDIDATES = ("path", "path_host", "video_host", "video_host_batched")
# Steps of each timed fit left out of its rate: the iterator's start and the first batches' fill.
WARMUP_STEPS = 5


def parse_args(argv):
    parser = cli.ArgumentParser(prog="bench feed", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_<size> (default: generate one).")
    parser.add_argument("--size", type=cli.positive_int, default=50)
    parser.add_argument("--batch_sizes", default="32", help="Comma-separated global batch sizes.")
    parser.add_argument("--steps", type=cli.positive_int, default=30, help="Timed train steps per run.")
    parser.add_argument("--repeats", type=cli.positive_int, default=2, help="Timed runs of each kind (best kept).")
    parser.add_argument("--candidates", default="path,video_host", help=f"Comma-separated, from {CANDIDATES}.")
    parser.add_argument(
        "--model", choices=("trainer", "keras", "xla"), default="trainer",
        help="trainer: as trainer.task builds it; keras: Keras's layers (cuDNN on a GPU), no XLA; "
        "xla: XlaConv2D, XlaMaxPooling2D and XLA's LSTM, the whole step compiled by XLA.",
    )  # fmt: skip
    parser.add_argument("--logical_devices", type=cli.positive_int, default=1)
    parser.add_argument("--logical_gpu_memory_mb", type=cli.positive_int, default=30_000)
    parser.add_argument("--time_distributed", action="store_true", help="Also time the TimeDistributed form.")
    parser.add_argument(
        "--rendering", action="store_true", help="The path candidate draws every frame (incremental_model=false)."
    )
    args = parser.parse_args(argv)
    unknown = set(args.candidates.split(",")) - set(CANDIDATES)
    if unknown:
        parser.error(f"unknown candidate {sorted(unknown)[0]!r}; choose from {', '.join(CANDIDATES)}")
    return args


def generate_data(data_dir: str, size: int):
    command = [sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={size}",
               "--num_train=2000", "--num_validation=64", "--num_test=64"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)


def candidate_dataset(name: str, builder, config: dict):
    """The candidate's endless stream of training batches."""
    import tensorflow as tf

    from trainer import input_pipeline

    if name == "path":
        return input_pipeline.training_dataset(builder, config)
    if name == "path_host":
        from trainer import model as model_lib

        render = model_lib.RenderVideo(config["size"])
        paths = input_pipeline.training_dataset(builder, config)
        return paths.map(lambda path, label: (render(path), label), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )
    if name == "video_host":
        records = input_pipeline.read_records(
            builder, "train", shuffle_files=True, seed=config["seed"], cycle_length=config["interleave_cycle_length"],
            deterministic=False,
        ).repeat().shuffle(config["shuffle_buffer"])  # fmt: skip
        return input_pipeline.batch_and_decode(records, builder, config["batch_size"], False, drop_remainder=True)
    size = config["size"]
    spec = {"video": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse_and_inflate(serialized):
        examples = tf.io.parse_example(serialized, spec)
        videos = tf.io.decode_raw(tf.io.decode_compressed(examples["video"], "ZLIB"), tf.uint8)
        return tf.reshape(videos, [-1, size, size, size, 1]), tf.cast(examples["label"], tf.float32)

    records = input_pipeline.read_serialized(
        builder, "train", shuffle_files=True, seed=config["seed"], cycle_length=config["interleave_cycle_length"],
        deterministic=False,
    ).repeat().shuffle(config["shuffle_buffer"])  # fmt: skip
    batches = records.batch(config["batch_size"], drop_remainder=True)
    return batches.map(parse_and_inflate, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).prefetch(
        tf.data.AUTOTUNE
    )


class StepClock:
    """A Keras callback noting when each step ends."""

    def __new__(cls):
        import keras

        class Clock(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.ends = []

            def on_train_batch_end(self, batch, logs=None):
                self.ends.append((batch, time.perf_counter()))

        return Clock()


def train_rate(model, dataset, steps: int, batch_size: int) -> float:
    """Sequences per second over the steps of one model.fit after its first WARMUP_STEPS (already traced)."""
    clock = StepClock()
    model.fit(dataset, steps_per_epoch=WARMUP_STEPS + steps, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    (first_step, first_time), (last_step, last_time) = (
        next(end for end in clock.ends if end[0] >= WARMUP_STEPS - 1),
        clock.ends[-1],
    )
    return (last_step - first_step) * batch_size / (last_time - first_time)


def read_rate(dataset, steps: int) -> float:
    iterator = iter(dataset)
    for _ in range(WARMUP_STEPS):
        next(iterator)
    start = time.perf_counter()
    batch = 0
    for _ in range(steps):
        batch = len(next(iterator)[1])
    return steps * batch / (time.perf_counter() - start)


def split_first_device(count: int, gpu_memory_mb: int) -> list[str]:
    """Splits the first GPU, or the CPU, into count logical devices (before TensorFlow starts); their names."""
    import tensorflow as tf

    if count < 2:
        return []
    # Without it the second logical GPU could not create its cuBLAS handle (seen on an H100).
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    gpus = tf.config.list_physical_devices("GPU")
    device = gpus[0] if gpus else tf.config.list_physical_devices("CPU")[0]
    config = tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_mb if gpus else None)
    tf.config.set_logical_device_configuration(device, [config] * count)
    kind = "GPU" if gpus else "CPU"
    return [f"/{kind.lower()}:{index}" for index in range(count)]


def build(candidate: str, config: dict, strategy, args, xla_layers: bool, jit: bool):
    from trainer import model as model_lib

    with strategy.scope():
        if candidate == "path":
            model = model_lib.build_path_model(config["size"], incremental=not args.rendering, xla_layers=xla_layers)
        elif candidate == "time_distributed":
            model = model_lib.build_time_distributed_model(config["size"])
        else:
            model = model_lib.build_model(config["size"], xla_layers=xla_layers)
        return model_lib.compile_model(
            model, 0.001, jit_compile=jit and candidate != "time_distributed"
        )  # fmt: skip


def main(argv):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_feed_"))
            generate_data(data_dir, args.size)
        return measure(args, data_dir)


def measure(args, data_dir: str) -> int:
    import tensorflow as tf

    from trainer import config as config_lib
    from trainer import distribution, input_pipeline

    split = split_first_device(args.logical_devices, args.logical_gpu_memory_mb)

    def make_strategy(devices):
        return distribution.make_strategy({**config_lib.DEFAULTS, "devices": devices}, None)

    builder = input_pipeline.load_builder(data_dir, args.size)
    gpus = gpu_names()
    results = {"benchmark": "feed", "size": args.size, "cpus": os.cpu_count(), "gpus": gpus, "steps": args.steps}
    results.update(model=args.model, batches={})
    print(f"bench feed: size {args.size}, {args.steps} timed steps per run, best of {args.repeats}, data {data_dir}")
    print(f"  devices: {', '.join(gpus) or 'CPU only'}; {os.cpu_count()} CPU cores; model: {args.model}")
    strategy = make_strategy(split or None)
    if split:
        strategies = {"1_replica": make_strategy(split[:1]), f"{len(split)}_replicas": strategy}
    else:
        strategies = {"": strategy}
    xla_layers = {"trainer": True, "keras": False, "xla": True}[args.model]
    jit = xla_layers
    for batch_size in [int(text) for text in args.batch_sizes.split(",")]:
        config = {**config_lib.DEFAULTS, "size": args.size, "batch_size": batch_size}
        names = args.candidates.split(",")
        datasets = {name: candidate_dataset(name, builder, config) for name in names}
        video_batch = next(iter(datasets.get("video_host") or candidate_dataset("video_host", builder, config)))
        residents = {name: tf.data.Dataset.from_tensors(next(iter(datasets[name]))).repeat() for name in names}
        runs = {}  # name -> (model, fed dataset or None, resident dataset)
        for label, chosen in strategies.items():
            for name in names:
                if label and name != "path":
                    continue
                key = f"{name}_{label}" if label else name
                runs[key] = (build(name, config, chosen, args, xla_layers, jit), datasets[name], residents[name])
        if args.time_distributed:
            resident_video = tf.data.Dataset.from_tensors(video_batch).repeat()
            runs["time_distributed"] = (build("time_distributed", config, strategy, args, False, False), None,
                                        resident_video)  # fmt: skip
        for model, _, resident in runs.values():
            model.fit(resident, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace once
        rates = {}
        for _ in range(args.repeats):
            for key, (model, fed, resident) in runs.items():
                rates.setdefault(f"{key}_resident", []).append(train_rate(model, resident, args.steps, batch_size))
                if fed is not None:
                    rates.setdefault(f"{key}_fed", []).append(train_rate(model, fed, args.steps, batch_size))
            for name in names:
                rates.setdefault(f"{name}_pipeline_only", []).append(read_rate(datasets[name], args.steps * 2))
        best = {name: max(values) for name, values in rates.items()}
        figures = {f"{name}_seq_per_s": round(value, 1) for name, value in best.items()}
        for key, (_, fed, _) in runs.items():
            if fed is not None:
                figures[f"{key}_fed_over_resident"] = round(best[f"{key}_fed"] / best[f"{key}_resident"], 3)
        if "path_fed" in best and "video_host_resident" in best:
            # The trainer's fed rate against the tutorial's model with its video batch already on the device.
            figures["path_fed_over_video_resident"] = round(best["path_fed"] / best["video_host_resident"], 3)
        if split:
            two, one = f"path_{len(split)}_replicas", "path_1_replica"
            figures["replicas_fed_over_one_replica_fed"] = round(best[f"{two}_fed"] / best[f"{one}_fed"], 3)
            figures["replicas_resident_over_one_replica_resident"] = round(
                best[f"{two}_resident"] / best[f"{one}_resident"], 3
            )
        if "time_distributed_resident" in best and "video_host_resident" in best:
            figures["folded_over_time_distributed"] = round(
                best["video_host_resident"] / best["time_distributed_resident"], 3
            )
        figures["xla_layers"] = xla_layers
        figures["path_model"] = "rendering" if args.rendering else "incremental"
        results["batches"][str(batch_size)] = figures
        print(f"  batch {batch_size}:")
        for name, value in figures.items():
            print(f"    {name}: {value}", flush=True)
    first = results["batches"][args.batch_sizes.split(",")[0].strip()]
    results["fed_over_resident"] = first.get("path_fed_over_resident") or first.get("path_1_replica_fed_over_resident")
    print(json.dumps(results))
    return 0


def gpu_names() -> list[str]:
    """Each GPU TensorFlow sees, by its name (e.g. "NVIDIA H100 80GB HBM3")."""
    import tensorflow as tf

    return [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    ]
