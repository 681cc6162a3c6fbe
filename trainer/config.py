"""Training configs: flat YAML files over the defaults below, with --set key=value overrides.

Every key a config may hold is in DEFAULTS; a key that is not, or a value of the wrong
type, is an error that names it. Keys whose default is None say their type in OPTIONAL.
"""

from __future__ import annotations

import os

import yaml

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
    # Input: examples held by the shuffle buffer (still compressed, about 400 bytes each at S = 50),
    # shards read at once, and a fixed order for reproducible runs (slower).
    "shuffle_buffer": 10_000,
    "interleave_cycle_length": 16,
    "deterministic": False,
    "seed": 0,
    # Distribution: devices to mirror over (None: every GPU, or the CPU when there is none), and
    # logical CPU devices to split the CPU into first (lets a CPU-only machine mirror over several).
    "devices": None,
    "logical_cpu_devices": 0,
    # Training on one device (a CPU or one GPU): the conv and max-pool written for XLA (trainer.model.XlaConv2D)
    # and the whole train step compiled by XLA: 2-3x faster on 2 CPU cores, 2.2-2.5x on an H100 at batch
    # 1,024 (BENCHMARKS.md). Mirrors over several devices keep Keras's layers. Exports have Keras's layers.
    "xla_layers": True,
    # The CNN-LSTM computed from the path without drawing a frame (trainer.model.PathConv2D); false: draw them all.
    "incremental_model": True,
    # Multi-worker training (TF_CONFIG naming several tasks): an all-reduce waiting longer than this for a
    # peer fails the job rather than hanging it (a dead peer is also noticed by the strategy's health check).
    "collective_timeout_seconds": 60,
    # Checkpoints: BackupAndRestore saves every this many steps (None: at the end of each epoch).
    "backup_every_steps": None,
    # Unreadable records (a truncated or corrupted shard): false stops with an error naming the file;
    # true skips them (TensorFlow drops the rest of that shard) and logs how many were skipped.
    "skip_corrupt_records": False,
    # Evaluate on the test split at the end of training (writes metrics.json); trainer.evaluate does it too.
    "test_after_training": True,
    # Keras progress output: 1 is the progress bar, 2 one line per epoch, 0 silent.
    "verbose": 1,
}

OPTIONAL = {
    "clip_norm": float,
    "steps_per_epoch": int,
    "validation_steps": int,
    "backup_every_steps": int,
    "devices": list,
}

# Keys that change how a run executes but not what it computes: a resumed run may change them.
RUNTIME_KEYS = {
    "devices",
    "xla_layers",
    "logical_cpu_devices",
    "verbose",
    "backup_every_steps",
    "test_after_training",
    "skip_corrupt_records",  # so that a run stopped by corrupt data can resume with it set
    "collective_timeout_seconds",
}

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
    "backup_every_steps",
    "collective_timeout_seconds",
}


def expected_type(key: str) -> type:
    return OPTIONAL.get(key, type(DEFAULTS[key]))


def check_value(key: str, value, origin: str):
    """Raises UsageError naming the key when it is unknown or its value has the wrong type."""
    if key not in DEFAULTS:
        raise UsageError(f"{origin}: unknown key {key!r}; known keys: {', '.join(DEFAULTS)}")
    wanted = expected_type(key)
    if value is None:
        if key not in OPTIONAL:
            raise UsageError(f"{origin}: {key} must be a {wanted.__name__}, not null")
        return value
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # YAML reads 1 as an int; a float key takes it
    if wanted is list and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    # bool is an int in Python: reject True where a number is wanted.
    if not isinstance(value, wanted) or (wanted is not bool and isinstance(value, bool)):
        raise UsageError(f"{origin}: {key} must be a {wanted.__name__}, got {value!r}")
    if key in POSITIVE_KEYS and value < 1:
        raise UsageError(f"{origin}: {key} must be at least 1, got {value}")
    if isinstance(value, (int, float)) and value < 0:
        raise UsageError(f"{origin}: {key} must not be negative, got {value}")
    return value


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
        if not os.path.isfile(path):
            raise UsageError(f"--config {path}: no such file; the configs are in configs/")
        with open(path, encoding="utf-8") as file:
            config = load_text(file.read(), path)
    for text in overrides:
        key, value = parse_override(text)
        config[key] = check_value(key, value, f"--set {key}")
    return config


def load_text(text: str, origin: str) -> dict:
    """DEFAULTS updated with the keys of a YAML text (origin names it in errors)."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{origin}: not valid YAML{where}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{origin}: expected key: value lines, got a {type(loaded).__name__}")
    config = dict(DEFAULTS)
    for key, value in loaded.items():
        config[key] = check_value(key, value, origin)
    return config


def differences(old: dict, new: dict, ignore=RUNTIME_KEYS) -> list[str]:
    """'key: old -> new' for each key that differs (keys in ignore aside)."""
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
