"""trainer.training_log: counts in words, metrics on one line, history.csv rewritten whole with one row an epoch."""

from __future__ import annotations

import json

from trainer import training_log


def test_counts_are_singular_for_one_and_grouped_by_thousands():
    assert training_log.count(1, "epoch") == "1 epoch"
    assert training_log.count(2, "epoch") == "2 epochs"
    assert training_log.count(1024, "training example") == "1,024 training examples"


def test_metrics_read_on_one_line_with_the_learning_rate_in_significant_digits():
    line = training_log.describe_metrics({"loss": 0.123456, "accuracy": 0.5, "learning_rate": 0.000123456})
    assert line == "loss 0.1235, accuracy 0.5000, learning_rate 0.0001235"


def test_a_resumed_epoch_replaces_its_row_and_the_history_counts_epochs_from_one(tmp_path):
    csv_path, json_path = str(tmp_path / "history.csv"), str(tmp_path / "history.json")
    assert training_log.read_history(csv_path) == {}
    training_log.append_history(csv_path, {"epoch": 0, "loss": 0.9, "accuracy": 0.5})
    training_log.append_history(csv_path, {"epoch": 1, "loss": 0.5, "accuracy": 0.7})
    training_log.append_history(csv_path, {"epoch": 1, "loss": 0.4, "accuracy": 0.8})  # the same epoch, resumed
    assert (tmp_path / "history.csv").read_bytes() == b"epoch,loss,accuracy\n0,0.9,0.5\n1,0.4,0.8\n"
    history = training_log.write_history(csv_path, json_path)
    assert history == {"epoch": [1, 2], "loss": [0.9, 0.4], "accuracy": [0.5, 0.8]}
    assert json.loads((tmp_path / "history.json").read_text()) == history
    assert sorted(path.name for path in tmp_path.iterdir()) == ["history.csv", "history.json"]
