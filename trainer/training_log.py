"""What a training run leaves besides the model: throughput lines, history as JSON, learning curves."""

from __future__ import annotations

import csv
import json
import time

import keras
import tensorflow as tf

from pipeline import cli


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose backup is never half-written.

    Keras writes latest.weights.h5 and training_metadata.json in place, so a SIGKILL during a
    save left a truncated file that the next run failed to load. Here each file is written
    under a temporary name and renamed over the old one: weights first, so a kill between the
    two renames repeats a few steps rather than skipping any.
    """

    def _save_model(self):
        tf.io.gfile.makedirs(self.backup_dir)
        partial_weights = tf.io.gfile.join(self.backup_dir, "partial.weights.h5")
        partial_metadata = self._training_metadata_path + ".partial"
        self.model.save_weights(partial_weights, overwrite=True)
        with tf.io.gfile.GFile(partial_metadata, "w") as file:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, file)
        tf.io.gfile.rename(partial_weights, self._weights_path, overwrite=True)
        tf.io.gfile.rename(partial_metadata, self._training_metadata_path, overwrite=True)


class ThroughputLog(keras.callbacks.Callback):
    """Logs each epoch's training speed in sequences per second (validation time excluded)."""

    def __init__(self, prog: str, batch_size: int):
        super().__init__()
        self.prog, self.batch_size = prog, batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.steps = time.monotonic(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.last = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if not self.steps:
            return
        seconds = self.last - self.start
        cli.log(
            self.prog,
            f"epoch {epoch + 1}: {self.steps} steps in {seconds:.1f} s, "
            f"{self.steps * self.batch_size / seconds:,.0f} sequences/s, then {time.monotonic() - self.last:.1f} s "
            "validating; " + ", ".join(f"{name} {value:.4f}" for name, value in (logs or {}).items()),
        )


def read_history(csv_path: str) -> dict[str, list[float]]:
    """CSVLogger's file (every epoch of the run, resumed parts included) as {column: [values]}."""

    with tf.io.gfile.GFile(csv_path) as file:
        rows = list(csv.DictReader(file))
    # A resumed run may log an epoch again: keep the last row of each.
    by_epoch = {int(row["epoch"]): row for row in rows}
    columns = list(rows[0]) if rows else []
    return {column: [float(by_epoch[epoch][column]) for epoch in sorted(by_epoch)] for column in columns}


def write_history(csv_path: str, json_path: str) -> dict[str, list[float]]:

    history = read_history(csv_path)
    history["epoch"] = [int(epoch) + 1 for epoch in history.get("epoch", [])]  # 1-based, as Keras prints
    with tf.io.gfile.GFile(json_path, "w") as file:
        file.write(json.dumps(history, indent=2) + "\n")
    return history


def plot_learning_curves(history: dict[str, list[float]], path: str):
    """Loss and accuracy per epoch, training and validation, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ["loss", "accuracy"], strict=True):
        for prefix, label in [("", "training"), ("val_", "validation")]:
            if prefix + metric in history:
                axis.plot(history["epoch"], history[prefix + metric], marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(True, alpha=0.3)
        axis.legend()
    axes[0].set_yscale("log")  # the loss falls over orders of magnitude
    figure.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as file:
        figure.savefig(file, format="png", dpi=100)
    plt.close(figure)
