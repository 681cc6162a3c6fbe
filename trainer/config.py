"""Training configs: flat YAML files over the defaults below, with --set key=value overrides.

Every key a config may hold is in DEFAULTS; a key that is not, or a value of the wrong
type, is an error that names it. Keys whose default is None say their type in OPTIONAL.
"""

from __future__ import annotations

import math
import os

import yaml

from pipeline import generator
from pipeline.cli import UsageError

DEFAULTS = {
    # The dataset: frame size S (videos are S frames of S x S), and what scripts/run_default.sh
    # asks pipeline.generate for. The trainer checks size and seed against the data it reads.
    "size": 50,
    "num_train": 5_000,
    "num_validation": 500,
    "num_test": 1_000,
    "data_seed": 0,
    # Optimisation: Adam with binary cross-entropy (the tutorial's), batch size over all replicas.
    "batch_size": 32,
    "learning_rate": 0.001,
    # Clip each step's gradient to this global norm (None: no clipping, as the tutorial). One large
    # step can kill the 2 ReLU filters of the conv, and the model then stays at chance (seen at 0.001).
    "clip_norm": None,
    # Let the learning rate fall along a cosine to zero over the run's steps (epochs x steps_per_epoch):
    # large steps early, small ones at the end, so the last epoch does not end on a wobble.
    "cosine_decay": False,
    "epochs": 1,
    # Steps per epoch over the repeated training stream; None: one pass over the training split.
    "steps_per_epoch": None,
    # Validation batches after each epoch; None: the whole validation split.
    "validation_steps": None,
    # Input: records shuffled together (a window of serialized records, about 500 bytes each at S = 50),
    # shards read at once, and parallel reads kept in order: each epoch's order is then a function of
    # (seed, epoch) alone, so a run and its resumed twin end with the same weights (false: reads in
    # whatever order they finish; a resumed run then goes on in another order).
    "shuffle_buffer": 10_000,
    "interleave_cycle_length": 16,
    "deterministic": True,
    # The training order is defined over this many input streams, whatever the topology: every global batch
    # takes batch_size / input_streams records from each, and the input pipelines (workers, tf.data service
    # workers) each read a whole number of them. So the global batch of a step is the same on one device, a
    # mirror, any number of workers dividing it, or the tf.data service, and a run can go on on another of them.
    "input_streams": 8,
    "seed": 0,
    # Distribution: devices to mirror over (None: every GPU, or the CPU when there is none), and
    # logical CPU devices to split the CPU into first (lets a CPU-only machine mirror over several).
    "devices": None,
    "logical_cpu_devices": 0,
    # Each replica's forward and backward pass compiled by XLA, with the conv and max-pool written for it
    # (trainer.model.XlaConv2D): much faster on CPUs and GPUs (BENCHMARKS.md). Exports hold Keras's layers.
    "xla_layers": True,
    # The CNN-LSTM computed from the path without drawing a frame (trainer.model.PathConv2D); false: draw them all.
    "incremental_model": True,
    # Multi-worker training (TF_CONFIG naming several tasks): an all-reduce waiting longer than this for a
    # peer fails the job rather than hanging it (a dead peer is also noticed by the strategy's health check);
    # a worker waits this long for the others to start before it gives up.
    "collective_timeout_seconds": 60,
    "peer_wait_seconds": 600,
    # Checkpoints (to resume exactly): at the end of each epoch and every this many steps (None: epochs only);
    # the newest keep_checkpoints are kept (an older one is used when the newest is damaged).
    "checkpoint_every_steps": None,
    "keep_checkpoints": 3,
    # Unreadable records (a truncated or corrupted shard): false stops with an error naming the file;
    # true skips them (TensorFlow drops the rest of that shard) and logs how many were skipped.
    "skip_corrupt_records": False,
    # Evaluate on the test split at the end of training (writes metrics.json); trainer.evaluate does it too.
    "test_after_training": True,
    # Progress: 1 a line redrawn in place on a terminal (a plain line every 30 s otherwise) and one line per
    # epoch, 2 the epoch lines only, 0 silent.
    "verbose": 1,
}

OPTIONAL = {
    "clip_norm": float,
    "steps_per_epoch": int,
    "validation_steps": int,
    "checkpoint_every_steps": int,
    "devices": list,
}

# Keys that change how a run executes but not what it computes: a resumed run may change them.
RUNTIME_KEYS = {
    "devices",
    "xla_layers",
    "logical_cpu_devices",
    "verbose",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "test_after_training",
    "skip_corrupt_records",  # so that a run stopped by corrupt data can resume with it set
    "collective_timeout_seconds",
    "peer_wait_seconds",
}

# Runtime keys that change the arithmetic (XLA) or the records read: a run resumed with another value goes on, but
# no longer ends with the weights of a run never stopped (trainer.checkpoints says so). Other devices are another
# topology, with the same batches: trainer.checkpoints says that too, when the replicas or workers change.
INEXACT_RUNTIME_KEYS = {"xla_layers", "skip_corrupt_records"}

POSITIVE_KEYS = {
    "size",
    "num_train",
    "num_validation",
    "num_test",
    "batch_size",
    "epochs",
    "steps_per_epoch",
    "validation_steps",
    "shuffle_buffer",
    "interleave_cycle_length",
    "input_streams",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "collective_timeout_seconds",
    "peer_wait_seconds",
}


# Integer keys take at most INT_MAXIMUM (TensorFlow counts steps and batches in int32), unless below.
INT_MAXIMUM = 2**31 - 1
MAXIMA = {
    "size": generator.MAX_SIZE,
    "seed": 2**32 - 1,  # keras.utils.set_random_seed seeds numpy, which takes 32 bits
    "data_seed": 2**63 - 1,  # the generator's Philox key, as pipeline.generate --seed
    "logical_cpu_devices": 256,
    "input_streams": 4096,
}
# Float keys where 0 means nothing useful; null says what the user may have meant.
POSITIVE_FLOAT_KEYS = {"clip_norm"}
NULL_MEANS = {"clip_norm": "no clipping"}
# The model's 2x2 convolution and 2x2 max-pooling leave nothing of a frame under 3 x 3 pixels.
MINIMUM_MODEL_SIZE = 3
MINIMA = {"size": MINIMUM_MODEL_SIZE}
# A refusal of input_streams names those that fit a batch, up to this many.
MAX_LISTED_STREAMS = 64
# What a config file can be: a short YAML text (the shipped ones are under 2 kB).
MAX_FILE_BYTES = 1_000_000
TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", list: "a list"}


def expected_type(key: str) -> type:
    return OPTIONAL.get(key, type(DEFAULTS[key]))


def check_value(key: str, value, origin: str):
    """Raises UsageError naming the key when it is unknown or its value has the wrong type or range."""
    if key not in DEFAULTS:
        raise UsageError(f"{origin}: unknown key {key!r}; known keys: {', '.join(map(str, DEFAULTS))}")
    wanted = expected_type(key)
    if value is None:
        if key not in OPTIONAL:
            raise UsageError(f"{origin}: {key} must be {TYPE_NAMES[wanted]}, not null")
        return value
    if wanted is float and not isinstance(value, bool):
        value = to_float(key, value, origin)
    if wanted is list and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    # bool is an int in Python: reject True where a number is wanted.
    if not isinstance(value, wanted) or (wanted is not bool and isinstance(value, bool)):
        raise UsageError(f"{origin}: {key} must be {TYPE_NAMES[wanted]}, got {value!r}")
    if wanted is list and not all(isinstance(item, str) for item in value):
        raise UsageError(f"{origin}: {key} must be a list of device names such as /gpu:0, got {value!r}")
    if wanted is int:
        minimum = MINIMA.get(key, 1 if key in POSITIVE_KEYS else 0)
        maximum = MAXIMA.get(key, INT_MAXIMUM)
        if value < minimum:
            raise UsageError(f"{origin}: {key} must be at least {minimum}, got {value}{why(key)}")
        if value > maximum:
            raise UsageError(f"{origin}: {key} must be at most {maximum:,}, got {value:,}{why(key)}")
    if wanted is float and value < 0:
        raise UsageError(f"{origin}: {key} must not be negative, got {value}")
    if key in POSITIVE_FLOAT_KEYS and value == 0:
        raise UsageError(f"{origin}: {key} must be above 0, got {value} (null: {NULL_MEANS[key]})")
    return value


def to_float(key: str, value, origin: str):
    """A float key takes an int and what Python's float() reads (YAML 1.1 reads 1e-3 as a string); finite only."""
    if isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            number = None
        if number is not None:
            if not math.isfinite(number):
                raise UsageError(f"{origin}: {key} must be a finite number, got {value!r}")
            return number
    raise UsageError(f"{origin}: {key} must be {TYPE_NAMES[float]}, got {value!r}")


def why(key: str) -> str:
    if key == "size":
        return (
            f" (the model's 2x2 convolution and 2x2 max-pooling need frames of at least {MINIMUM_MODEL_SIZE} x "
            f"{MINIMUM_MODEL_SIZE} pixels; the generator makes at most {generator.MAX_SIZE})"
        )
    return ""


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with the value read as YAML (so 64, 0.01, true, null and [a, b] work)."""
    key, separator, raw = text.partition("=")
    if not separator or not key.strip():
        raise UsageError(f"--set {text!r}: expected key=value, e.g. --set batch_size=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UsageError(f"--set {text!r}: the value is not valid YAML") from None
    return key.strip(), value


def load(path: str | None, overrides: list[str] = ()) -> dict:
    """DEFAULTS, then the file's keys, then each key=value of overrides; every value checked."""
    config = dict(DEFAULTS)
    if path is not None:
        config = load_text(read_file(path), path)
    for text in overrides:
        key, value = parse_override(text)
        config[key] = check_value(key, value, f"--set {key}")
    return config


def read_file(path: str) -> str:
    """The text of a config file, or a UsageError saying why it cannot be one."""
    if os.path.isdir(path):
        raise UsageError(f"--config {path} is a folder; give a YAML file such as configs/default.yaml")
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: no such file; the configs are in configs/")
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise UsageError(
                f"--config {path} is {os.path.getsize(path):,} bytes; a config is a short YAML file of key: value lines"
            )
        with open(path, encoding="utf-8") as file:
            return file.read()
    except UnicodeDecodeError:
        raise UsageError(f"--config {path} is not UTF-8 text; give a YAML file of key: value lines") from None
    except OSError as error:
        raise UsageError(f"--config {path} cannot be read ({error.strerror or error})") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice (safe_load would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique_keys(text: str):
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_text(text: str, origin: str) -> dict:
    """DEFAULTS updated with the keys of a YAML text (origin names it in errors)."""
    try:
        loaded = safe_load_unique_keys(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None)
        detail = f" ({problem})" if problem and "twice" in problem else ""
        raise UsageError(f"{origin}: not valid YAML{where}{detail}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{origin}: expected key: value lines, got a {type(loaded).__name__}")
    config = dict(DEFAULTS)
    for key, value in loaded.items():
        config[key] = check_value(key, value, origin)
    return config


def check_input_streams(streams: int, batch_size: int):
    """A UsageError when the global batch cannot take the same number of records from each input stream."""
    if batch_size % streams:
        fits = spoken_list([number for number in range(1, MAX_LISTED_STREAMS + 1) if batch_size % number == 0])
        raise UsageError(
            f"batch_size {batch_size} does not split evenly over input_streams {streams} (each step takes "
            f"batch_size / input_streams records from every stream): set input_streams to one of {fits}, or "
            f"batch_size to a multiple of {streams}"
        )


def check_input_pipelines(streams: int, pipelines: int, what: str):
    """A UsageError when `pipelines` input pipelines (workers, or tf.data service workers) cannot share the run's
    input streams evenly: the order is defined by the streams, so they fix which topologies a run can have."""
    if streams % pipelines:
        fits = spoken_list(divisors(streams))
        raise UsageError(
            f"{pipelines} {what} cannot share this run's {streams} input streams evenly (the order of its batches is "
            f"defined over them, and each {what.rstrip('s')} reads a whole number of them): use {fits} {what}; a "
            f"new run may set input_streams to a multiple of {pipelines}"
        )


def divisors(number: int) -> list[int]:
    return [candidate for candidate in range(1, number + 1) if number % candidate == 0]


def spoken_list(numbers) -> str:
    """'1, 2, 4 or 8'."""
    words = [str(number) for number in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def differences(old: dict, new: dict, ignore=RUNTIME_KEYS) -> list[str]:
    """'key: old -> new' for each key that differs (keys in ignore aside)."""
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
