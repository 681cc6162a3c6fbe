"""trainer.evaluate: loss, accuracy and the confusion matrix of a split, written whole; the table users read."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from pipeline import cli
from trainer import evaluate


def batches(labels, probabilities, size=2):
    for start in range(0, len(labels), size):
        yield np.zeros((len(labels[start : start + size]), 1)), np.array(labels[start : start + size])


def test_metrics_count_each_example_once_by_expected_and_predicted_class():
    labels = [0, 0, 1, 1, 1]
    right = {0: 0.2, 1: 0.9, 2: 0.8, 3: 0.3, 4: 0.6}  # one left taken for right, one right for left
    seen = iter(range(len(labels)))

    def predict(videos):
        return [right[next(seen)] for _ in range(len(videos))]

    metrics = evaluate.evaluate(predict, batches(labels, right), ["left", "right"])
    assert metrics["examples"] == 5 and metrics["errors"] == 2 and metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["confusion_matrix"]["rows_expected_columns_predicted"] == [[1, 1], [1, 2]]
    expected_loss = -np.mean([math.log(0.8), math.log(0.1), math.log(0.8), math.log(0.3), math.log(0.6)])
    assert metrics["loss"] == pytest.approx(expected_loss)


def test_an_empty_split_is_refused():
    with pytest.raises(cli.UsageError, match="the split is empty"):
        evaluate.evaluate(lambda videos: [], iter([]), ["left", "right"])


def test_the_table_names_the_split_and_the_classes_and_the_metrics_file_is_written_whole(tmp_path):
    matrix = {"class_names": ["left", "right"], "rows_expected_columns_predicted": [[1, 0], [0, 0]]}
    metrics = {"split": "test", "examples": 1, "loss": 0.25, "accuracy": 1.0, "errors": 0, "confusion_matrix": matrix}
    lines = evaluate.describe(metrics)
    assert lines[0] == "test: 1 example, loss 0.25000, accuracy 100.0000% (0 wrong)"
    assert lines[2:] == ["          left  right", "   left      1      0", "  right      0      0"]
    assert evaluate.metrics_path("m", "test") == os.path.join("m", "metrics.json")
    assert evaluate.metrics_path("m", "validation") == os.path.join("m", "metrics_validation.json")
    evaluate.write_metrics(metrics, str(tmp_path / "metrics.json"))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert os.listdir(tmp_path) == ["metrics.json"]
