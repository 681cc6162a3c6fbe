"""trainer.checkpoints: a checkpoint written whole with its checksums, checked before use, the newest good one
restored with the run's position; the epoch's sums kept exactly. Runs killed and resumed: test_faults_training.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import cli
from trainer import checkpoints
from trainer import config as config_lib

CONFIG = dict(config_lib.DEFAULTS)
DATASET = {"name": "moving_line/size_8"}


def test_sums_add_in_float64_and_name_their_metrics():
    step = checkpoints.Sums.of(np.array([6.5, 30, 32], np.float32))
    total = checkpoints.Sums() + step + step
    assert (total.loss, total.correct, total.examples) == (13.0, 60.0, 64.0)
    assert total.metrics() == {"loss": 13.0 / 64.0, "accuracy": 60.0 / 64.0}
    assert all(isinstance(value, np.float64) for value in (total.loss, total.correct, total.examples))
    position = checkpoints.Position(40, 1, total)
    assert position.manifest() == {"step": 40, "epochs_done": 1, "epoch_sums": [13.0, 60.0, 64.0]}
    assert checkpoints.Position.from_manifest(json.loads(json.dumps(position.manifest()))) == position


def test_the_newest_good_checkpoint_is_restored_and_the_damaged_ones_are_named(tmp_path):
    weights = tf.Variable([1.0, 2.0])
    checkpoint = tf.train.Checkpoint(weights=weights)
    folder = str(tmp_path / "checkpoints")
    sums = checkpoints.Sums(1.5, 3, 4)
    for step in (5, 10, 15):
        weights.assign([float(step), 0.0])
        checkpoints.save(checkpoint, folder, checkpoints.Position(step, 0, sums), CONFIG, DATASET, keep=2)
    assert [step for step, _ in checkpoints.folders(folder)] == [15, 10]  # the newest 2 kept
    assert checkpoints.has_finished_checkpoint(folder)
    newest = checkpoints.folders(folder)[0][1]
    data = next(name for name in os.listdir(newest) if name.startswith("ckpt.data"))
    with open(os.path.join(newest, data), "r+b") as file:
        file.write(b"\xff")
    assert checkpoints.check(newest) == (None, f"{data} does not match its checksum (damaged)")
    logged = []
    position = checkpoints.restore_latest(checkpoint, folder, CONFIG, DATASET, logged.append)
    assert position == checkpoints.Position(10, 0, sums) and weights.numpy().tolist() == [10.0, 0.0]
    assert logged == [f"checkpoint {newest} is not usable: {data} does not match its checksum (damaged); "
                      "trying the one before it"]  # fmt: skip
    with pytest.raises(cli.UsageError, match="written by a run with another config"):
        checkpoints.restore_latest(checkpoint, folder, {**CONFIG, "learning_rate": 0.5}, DATASET, logged.append)
    assert checkpoints.restore_latest(checkpoint, str(tmp_path / "none"), CONFIG, DATASET, logged.append) is None
