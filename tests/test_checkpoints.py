"""trainer.checkpoints: a checkpoint written whole with its checksums, checked before use, the newest good one
restored with the run's position; the epoch's sums kept exactly. Runs killed and resumed: test_faults_training.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def saved_on(tmp_path, topology) -> tuple[tf.train.Checkpoint, str]:
    checkpoint = tf.train.Checkpoint(weights=tf.Variable([1.0]))
    folder = str(tmp_path / "checkpoints")
    checkpoints.save(checkpoint, folder, checkpoints.Position(8), CONFIG, DATASET, 3, topology)
    return checkpoint, folder


ONE_DEVICE, TWO_WORKERS = {"workers": 1, "replicas": 1}, {"workers": 2, "replicas": 4}


def test_a_resume_on_another_topology_says_from_what_to_what_and_that_the_batches_stay(tmp_path):
    checkpoint, folder = saved_on(tmp_path, TWO_WORKERS)
    logged = []
    checkpoints.restore_latest(checkpoint, folder, CONFIG, DATASET, logged.append, ONE_DEVICE)
    assert logged == [
        "resuming on another topology: the checkpoint was written on 2 workers (4 replicas in all), this run "
        "trains on one device; the global batches stay those of a run never stopped, so the weights will equal its "
        "weights within float reduction order, not bit for bit"
    ]
    logged.clear()
    checkpoints.restore_latest(checkpoint, folder, CONFIG, DATASET, logged.append, TWO_WORKERS)
    assert logged == []  # the same topology: nothing to say, the run ends bit for bit
    assert checkpoints.describe_topology({"workers": 1, "replicas": 2}) == "a mirror of 2 devices"


def test_another_number_of_input_streams_is_another_run(tmp_path):
    checkpoint, folder = saved_on(tmp_path, ONE_DEVICE)
    with pytest.raises(cli.UsageError, match=r"another config \(input_streams: 8 -> 16\)"):
        checkpoints.restore_latest(checkpoint, folder, {**CONFIG, "input_streams": 16}, DATASET, print, ONE_DEVICE)


def test_a_checkpoint_from_before_input_streams_resumes_saying_the_order_changes(tmp_path):
    checkpoint, folder = saved_on(tmp_path, None)
    (_, written), logged = checkpoints.folders(folder)[0], []
    path = Path(written) / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["config"]["input_streams"], manifest["topology"]  # what the trainer wrote before them
    path.write_text(json.dumps(manifest))
    position = checkpoints.restore_latest(checkpoint, folder, CONFIG, DATASET, logged.append, TWO_WORKERS)
    assert position.step == 8
    assert logged == [
        f"the checkpoint {written} was written by an older trainer, whose training order depended on the number of "
        "workers: the run goes on at step 8 in the order of input_streams 8 (the same on any topology), not the one "
        "it started in"
    ]
