"""Training checkpoints that cannot lie: written whole or not at all, checked before they are used.

A checkpoint is a folder CHECKPOINTS/state/step_<N>/ with TensorFlow's checkpoint files (the weights,
the optimizer's state and its step counter) and manifest.json: the step, the epochs finished, the
running sums of the epoch in progress, the config that wrote it and the SHA-256 of every file. The
manifest is written last, under a temporary name then renamed: a folder without one is a write that
was cut short and is never used. Before a checkpoint is restored every file's checksum is checked; a
damaged one is reported in one line and the one before it is used. The newest `keep` are kept.

The input position is not stored: each epoch's order is a pure function of (seed, epoch), so the step
says where the input stream stands (trainer.input_pipeline.training_dataset).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import tensorflow as tf

from pipeline import cli
from trainer import config as config_lib
from trainer import files, outputs

STATE_FOLDER = outputs.STATE_FOLDER
MANIFEST = outputs.MANIFEST
PREFIX = "ckpt"
FORMAT = 1
FOLDER_PATTERN = re.compile(r"step_(\d+)$")
# The config key that fixes a run's training order; checkpoints written before it existed lack it.
ORDER_KEY = "input_streams"


@dataclasses.dataclass(frozen=True)
class Sums:
    """Sums over train or validation steps: the loss summed over examples, the correct predictions, the examples.

    float64 (numpy's), added in the order the steps ran: a resumed run's sums are those of a run never stopped.
    """

    loss: float = 0.0
    correct: float = 0.0
    examples: float = 0.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, np.float64(getattr(self, field.name)))

    @classmethod
    def of(cls, values) -> Sums:
        """From a step's [loss sum, correct, examples] (a tensor's numpy value, or a manifest's list)."""
        loss, correct, examples = np.asarray(values, np.float64)
        return cls(loss, correct, examples)

    def __add__(self, other: Sums) -> Sums:
        return Sums(self.loss + other.loss, self.correct + other.correct, self.examples + other.examples)

    def as_list(self) -> list[float]:
        """What a manifest stores: [loss, correct, examples]."""
        return [float(self.loss), float(self.correct), float(self.examples)]

    def metrics(self) -> dict[str, float]:
        """The mean loss and the accuracy over the examples summed."""
        return {"loss": self.loss / self.examples, "accuracy": self.correct / self.examples}


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: steps taken, epochs whose end-of-epoch work is done, the current epoch's sums."""

    step: int = 0
    epochs_done: int = 0
    # The training sums of the epoch in progress (its history stays exact on resume).
    epoch_sums: Sums = Sums()

    def manifest(self) -> dict:
        """The manifest's keys for this position (epoch_sums as a list of 3, as checkpoints always stored it)."""
        return {"step": self.step, "epochs_done": self.epochs_done, "epoch_sums": self.epoch_sums.as_list()}

    @classmethod
    def from_manifest(cls, manifest: dict) -> Position:
        return cls(manifest["step"], manifest["epochs_done"], Sums.of(manifest["epoch_sums"]))


def state_folder(checkpoints: str) -> str:
    return os.path.join(checkpoints, STATE_FOLDER)


def folders(checkpoints: str) -> list[tuple[int, str]]:
    """(step, folder) of every checkpoint folder, finished or not, newest first."""
    root = state_folder(checkpoints)
    if not tf.io.gfile.isdir(root):
        return []
    found = [(FOLDER_PATTERN.match(name.rstrip("/")), name.rstrip("/")) for name in tf.io.gfile.listdir(root)]
    return sorted(((int(match.group(1)), os.path.join(root, name)) for match, name in found if match), reverse=True)


def has_finished_checkpoint(checkpoints: str) -> bool:
    """Whether any checkpoint was written whole (a run that never got that far holds nothing worth resuming)."""
    return any(tf.io.gfile.exists(os.path.join(folder, MANIFEST)) for _, folder in folders(checkpoints))


def save(
    checkpoint: tf.train.Checkpoint,
    checkpoints: str,
    position: Position,
    config: dict,
    dataset: dict,
    keep: int,
    topology: dict | None = None,
) -> str:
    """Writes checkpoint at position.step, then its manifest; removes all but the newest `keep` finished ones.

    dataset: what the run trains on (trainer.input_pipeline.describe_dataset), checked on resume. topology: the
    workers and replicas it trains on (trainer.train.Loop.topology), a resume elsewhere says so.
    """
    folder = os.path.join(state_folder(checkpoints), f"step_{position.step:09d}")
    files.remove(folder)  # a write of this step cut short, or an older save of it
    try:
        tf.io.gfile.makedirs(folder)
        checkpoint.write(os.path.join(folder, PREFIX))
        names = sorted(name for name in tf.io.gfile.listdir(folder) if name.startswith(PREFIX))
        manifest = {
            "format": FORMAT,
            **position.manifest(),
            "config": config,
            "dataset": dataset,
            "topology": topology,
            "sha256": {name: files.sha256(os.path.join(folder, name)) for name in names},
        }
        files.write_atomically(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    except Exception:
        # A failed write (a full disk) would leave TensorFlow's temporary ckpt_temp folder: nothing usable.
        files.remove(folder)
        raise
    found = folders(checkpoints)
    finished = [step for step, old in found if tf.io.gfile.exists(os.path.join(old, MANIFEST))]
    oldest_kept = finished[keep - 1] if len(finished) >= keep else 0
    for step, old in found:
        # Older than the newest `keep`, or a write cut short before this one.
        if step < oldest_kept or (step not in finished and step < position.step):
            files.remove(old)
    return folder


def check(folder: str) -> tuple[dict | None, str | None]:
    """(manifest, None) for a checkpoint written whole and undamaged; (None, what is wrong) otherwise."""
    manifest_path = os.path.join(folder, MANIFEST)
    if not tf.io.gfile.exists(manifest_path):
        return None, "its write was cut short (no manifest)"
    try:
        manifest = json.loads(files.read_text(manifest_path))
        expected = manifest["sha256"]
    except (ValueError, KeyError, TypeError, tf.errors.OpError):
        return None, "its manifest is unreadable"
    if manifest.get("format") != FORMAT:
        return None, f"it has format {manifest.get('format')!r}, not {FORMAT}"
    for name, digest in sorted(expected.items()):
        path = os.path.join(folder, name)
        if not tf.io.gfile.exists(path):
            return None, f"{name} is missing"
        if files.sha256(path) != digest:
            return None, f"{name} does not match its checksum (damaged)"
    return manifest, None


def restore_latest(
    checkpoint: tf.train.Checkpoint, checkpoints: str, config: dict, dataset: dict, log, topology: dict | None = None
) -> Position | None:
    """Restores the newest good checkpoint into checkpoint; its Position, or None when there is none.

    Damaged or unfinished checkpoints newer than it are reported through log, one line each. A checkpoint
    written with another config (runtime keys aside) or on another dataset is refused with a UsageError;
    runtime keys that changed are logged, those that change the arithmetic or the data said to, and so is a
    topology (workers, replicas) other than the checkpoint's.
    """
    from trainer import input_pipeline

    for _, folder in folders(checkpoints):
        manifest, problem = check(folder)
        if manifest is not None:
            # Written before the order was defined over input streams: any value goes on from its step.
            older = ORDER_KEY not in manifest["config"]
            saved_config = {**manifest["config"], ORDER_KEY: config[ORDER_KEY]} if older else manifest["config"]
            changed = config_lib.differences(saved_config, config)
            if changed:
                raise cli.UsageError(
                    f"the checkpoint {folder} was written by a run with another config ({'; '.join(changed)}); "
                    "use a new --model_dir (and checkpoint folder), or the config of that run"
                )
            # Checkpoints written before the dataset was recorded hold none: nothing to compare with.
            changed = input_pipeline.dataset_differences(manifest["dataset"], dataset) if "dataset" in manifest else []
            if changed:
                raise cli.UsageError(
                    f"the checkpoint {folder} was written by a run on another dataset ({'; '.join(changed)}); "
                    "give the --data_dir of that run to resume it, or a new --model_dir to train on this one"
                )
            log_runtime_changes(saved_config, config, log)
            if older:
                log(
                    f"the checkpoint {folder} was written by an older trainer, whose training order depended on "
                    f"the number of workers: the run goes on at step {manifest['step']} in the order of "
                    f"input_streams {config[ORDER_KEY]} (the same on any topology), not the one it started in"
                )
            elif manifest.get("topology") and topology and manifest["topology"] != topology:
                written_on = describe_topology(manifest["topology"])
                log(
                    f"resuming on another topology: the checkpoint was written on {written_on}, this run trains on "
                    f"{describe_topology(topology)}; the global batches stay those of a run never stopped, so the "
                    "weights will equal its weights within float reduction order, not bit for bit"
                )
            try:
                checkpoint.read(os.path.join(folder, PREFIX)).assert_consumed()
            except (tf.errors.OpError, AssertionError, ValueError) as error:
                problem = f"TensorFlow could not read it ({type(error).__name__})"
            else:
                return Position.from_manifest(manifest)
        log(f"checkpoint {folder} is not usable: {problem}; trying the one before it")
    return None


def describe_topology(topology: dict) -> str:
    """'one device', 'a mirror of 2 devices' or '2 workers (4 replicas in all)'."""
    workers, replicas = topology["workers"], topology["replicas"]
    if workers > 1:
        return f"{workers} workers ({replicas} replica{'s' * (replicas != 1)} in all)"
    return "one device" if replicas == 1 else f"a mirror of {replicas} devices"


def log_runtime_changes(saved: dict, config: dict, log):
    """One line naming the runtime keys that differ from the checkpoint's: a resume never changes silently."""
    runtime = config_lib.differences(saved, config, ignore=set(config_lib.DEFAULTS) - config_lib.RUNTIME_KEYS)
    if not runtime:
        return
    inexact = sorted(key for key in config_lib.INEXACT_RUNTIME_KEYS if saved.get(key) != config.get(key))
    consequence = (
        f"; {' and '.join(inexact)} change{'s' * (len(inexact) == 1)} the arithmetic or the records read, so the "
        "run goes on but no longer ends with the weights of a run never stopped"
        if inexact
        else ""
    )
    log(f"resuming with runtime settings changed since the checkpoint: {'; '.join(runtime)}{consequence}")
