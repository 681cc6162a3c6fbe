"""What a training run shows and leaves besides the model: progress, TensorBoard scalars, history, curves.

Progress goes to stderr: on a terminal one line redrawn in place (a carriage return, no escape codes);
otherwise a plain line every PLAIN_PROGRESS_SECONDS, so that log files stay readable. Every epoch
ends with one line: steps, seconds, sequences per second and the metrics.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time

import tensorflow as tf

from trainer import files, preemption

PLAIN_PROGRESS_SECONDS = 30.0
TERMINAL_REDRAW_SECONDS = 0.2


def count(number: int, noun: str) -> str:
    """'1 epoch', '2 epochs', '1,024 training examples'."""
    return f"{number:,} {noun}{'s' * (number != 1)}"


def describe_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{name} {value:.4g}" if name == "learning_rate" else f"{name} {value:.4f}" for name, value in metrics.items()
    )


class ProgressLine:
    """The console's progress line within an epoch, and the line that ends it (verbose: 0 silent, 1 progress,
    2 epoch lines only)."""

    def __init__(self, prog: str, verbose: int, stream=None):
        self.prog, self.verbose = prog, verbose
        self.stream = stream or sys.stderr
        # A multi-worker supervisor relays its training process's stderr (trainer.preemption) and says whether
        # its own is a terminal.
        relayed_terminal = stream is None and os.environ.get(preemption.TERMINAL_VARIABLE) == "1"
        self.terminal = self.verbose == 1 and (self.stream.isatty() or relayed_terminal)
        self.shown = 0.0
        self.drawn = False

    def update(self, epoch: int, epochs: int, step: int, steps: int, metrics: dict[str, float]):
        now = time.monotonic()
        interval = TERMINAL_REDRAW_SECONDS if self.terminal else PLAIN_PROGRESS_SECONDS
        if self.verbose != 1 or now - self.shown < interval:
            return
        self.shown = now
        line = f"[{self.prog}] epoch {epoch}/{epochs}: step {step}/{steps}; {describe_metrics(metrics)}"
        if self.terminal:
            self.stream.write("\r" + line[:200].ljust(100))
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, text: str):
        """A line of its own (the end of an epoch, or any log line while progress is drawn)."""
        if self.verbose == 0:
            return
        self.clear()
        self.stream.write(f"[{self.prog}] {text}\n")
        self.stream.flush()
        self.shown = time.monotonic()

    def clear(self):
        if self.drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self.drawn = False


class Scalars:
    """TensorBoard scalars: train/ per step and per epoch, validation/ per epoch (Keras's names)."""

    def __init__(self, logs: str):
        self.logs, self.writers = logs, {}

    def writer(self, name: str):
        # Created on first use: a run that never gets that far leaves no log folder behind.
        if name not in self.writers:
            self.writers[name] = tf.summary.create_file_writer(f"{self.logs}/{name}")
        return self.writers[name]

    def step(self, step: int, metrics: dict[str, float]):
        with self.writer("train").as_default(step=step):
            for name, value in metrics.items():
                tf.summary.scalar(f"batch_{name}", value)

    def epoch(self, epoch: int, train: dict[str, float], validation: dict[str, float]):
        for name, metrics in (("train", train), ("validation", validation)):
            with self.writer(name).as_default(step=epoch):
                for metric, value in metrics.items():
                    tf.summary.scalar(f"epoch_{metric}", value)
            self.writer(name).flush()

    def close(self):
        for writer in self.writers.values():
            writer.close()


def read_history(csv_path: str) -> dict[str, list[float]]:
    """history.csv (one row per epoch, 0-based as Keras's CSVLogger writes it) as {column: [values]}."""
    if not tf.io.gfile.exists(csv_path):
        return {}
    rows = list(csv.DictReader(io.StringIO(files.read_text(csv_path))))
    # A resumed run may log an epoch again: keep the last row of each.
    by_epoch = {int(row["epoch"]): row for row in rows}
    columns = list(rows[0]) if rows else []
    return {column: [float(by_epoch[epoch][column]) for epoch in sorted(by_epoch)] for column in columns}


def append_history(csv_path: str, row: dict[str, float]):
    """Adds (or replaces) one epoch's row; the file is rewritten whole, so it is never half-written."""
    history = read_history(csv_path)
    epochs = [int(epoch) for epoch in history.get("epoch", [])]
    rows = [{column: values[index] for column, values in history.items()} for index in range(len(epochs))]
    rows = [old for old in rows if int(old["epoch"]) != row["epoch"]] + [row]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row), lineterminator="\n")  # csv's default is CRLF
    writer.writeheader()
    for old in sorted(rows, key=lambda old: old["epoch"]):
        writer.writerow({column: int(value) if column == "epoch" else value for column, value in old.items()})
    files.write_atomically(csv_path, text.getvalue())


def write_history(csv_path: str, json_path: str) -> dict[str, list[float]]:
    history = read_history(csv_path)
    history["epoch"] = [int(epoch) + 1 for epoch in history.get("epoch", [])]  # 1-based, as the progress lines
    files.write_atomically(json_path, json.dumps(history, indent=2) + "\n")
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
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    files.write_atomically(path, image.getvalue())
