"""The trainer commands for real, in subprocesses, on the small size-8 dataset.

The main run mirrors over two logical CPU devices (they must be made before TensorFlow
starts, hence a subprocess) and takes its folders from the Vertex AI variables.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import SMALL, run_command

from pipeline import generator

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e_training")]  # one worker: module fixtures

# 3 epochs of 20 steps of 32: 1,920 sequences, well past what size 8 needs; XLA's layers on, as by default.
TRAIN = ["--config", "configs/smoke.yaml", "--set", "epochs=3", "--set", "steps_per_epoch=20",
         "--set", "xla_layers=true"]  # fmt: skip
MIRROR = ["--set", "logical_cpu_devices=2", "--set", "devices=[/cpu:0, /cpu:1]"]


def error_line(result, prog: str) -> str:
    """The one error line a refused command prints last (TensorFlow's GPU build may print start-up lines first)."""
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith(f"{prog}: error: ")] == lines[-1:], result.stderr
    return lines[-1]


def train_command(data_dir, model_dir, *extra):
    return ["-m", "trainer.task", *TRAIN, *extra, "--data_dir", str(data_dir), "--model_dir", str(model_dir)]


@pytest.fixture(scope="module")
def mirrored_run(small_data_dir, tmp_path_factory):
    """One run under MirroredStrategy over /cpu:0 and /cpu:1, its folders given the Vertex AI way."""
    root = tmp_path_factory.mktemp("vertex")
    env = {
        "AIP_MODEL_DIR": str(root / "model"),
        "AIP_CHECKPOINT_DIR": str(root / "checkpoints"),
        "AIP_TENSORBOARD_LOG_DIR": str(root / "tensorboard"),
    }
    command = ["-m", "trainer.task", *TRAIN, *MIRROR, "--data_dir", small_data_dir]
    result = run_command(*command, env=env, check=True)
    return {"root": root, "model_dir": root / "model", "result": result, "command": command, "env": env}


def test_training_under_a_two_device_mirror_converges(mirrored_run):
    stderr = mirrored_run["result"].stderr
    assert "2 replicas in all" in stderr and "CPU:0" in stderr and "CPU:1" in stderr
    assert "conv (PathConv2D)" in stderr  # the model computed from the path, on any number of devices
    assert "each replica's forward and backward pass compiled by XLA" in stderr
    metrics = json.loads((mirrored_run["model_dir"] / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["examples"] == SMALL["num_test"]
    assert metrics["accuracy"] >= 0.95, metrics
    assert sum(map(sum, metrics["confusion_matrix"]["rows_expected_columns_predicted"])) == SMALL["num_test"]
    history = json.loads((mirrored_run["model_dir"] / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]
    assert history["val_accuracy"][-1] >= 0.95 and history["loss"][-1] < history["loss"][0]


def test_a_run_writes_its_outputs_where_vertex_ai_asks(mirrored_run):
    root, model_dir = mirrored_run["root"], mirrored_run["model_dir"]
    for name in ["config.yaml", "model.keras", "history.csv", "history.json", "metrics.json", "export/saved_model.pb"]:
        assert (model_dir / name).is_file(), name
    assert (model_dir / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in (root / "checkpoints").glob("epoch_*.keras")) == [
        "epoch_001.keras",
        "epoch_002.keras",
        "epoch_003.keras",
    ]
    assert list((root / "tensorboard").glob("train/events.out.tfevents.*"))
    assert list((root / "tensorboard").glob("validation/events.out.tfevents.*"))
    assert list((root / "checkpoints" / "state").glob("step_*/manifest.json"))
    # One plain line per epoch (verbose 2 in the smoke config), and no terminal codes in a log file.
    stderr = mirrored_run["result"].stderr
    assert re.search(r"\[trainer\.task\] epoch 3/3: 20 steps in [\d.]+ s, [\d,]+ sequences/s", stderr), stderr[-3000:]
    assert "\x1b" not in stderr and "\r" not in stderr


def test_tensorboard_holds_per_step_and_per_epoch_scalars_for_training_and_validation(mirrored_run):
    import tensorflow as tf

    tags = {}
    for events in (mirrored_run["root"] / "tensorboard").glob("*/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tags.setdefault(events.parent.name, set()).add(value.tag)
    assert {"batch_loss", "batch_accuracy", "batch_learning_rate", "batch_throughput"} <= tags["train"]
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "epoch_throughput"} <= tags["train"]
    assert {"epoch_loss", "epoch_accuracy"} <= tags["validation"]


def test_the_same_command_again_has_nothing_to_do_and_changes_nothing(mirrored_run):
    export = mirrored_run["model_dir"] / "export" / "saved_model.pb"
    before = export.stat().st_mtime_ns
    again = run_command(*mirrored_run["command"], env=mirrored_run["env"])
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert export.stat().st_mtime_ns == before


def test_another_config_in_the_same_model_dir_is_refused_in_one_line(mirrored_run):
    export = mirrored_run["model_dir"] / "export" / "saved_model.pb"
    before = export.stat().st_mtime_ns
    other = run_command(*mirrored_run["command"], "--set", "learning_rate=0.5", env=mirrored_run["env"])
    assert other.returncode == 2
    line = error_line(other, "trainer.task")
    assert "learning_rate: 0.01 -> 0.5" in line and "new --model_dir" in line
    assert export.stat().st_mtime_ns == before


def test_evaluate_gives_the_exported_model_the_accuracy_training_measured(mirrored_run, small_data_dir):
    model_dir = mirrored_run["model_dir"]
    from_training = json.loads((model_dir / "metrics.json").read_text())
    result = run_command(
        "-m", "trainer.evaluate", "--model_dir", str(model_dir), "--data_dir", small_data_dir, check=True
    )
    from_export = json.loads((model_dir / "metrics.json").read_text())
    assert from_export["model"].endswith("export")
    assert from_export["accuracy"] == from_training["accuracy"]
    assert from_export["confusion_matrix"] == from_training["confusion_matrix"]
    assert abs(from_export["loss"] - from_training["loss"]) < 1e-4
    assert f"accuracy {from_export['accuracy']:.4%}" in result.stdout and "confusion matrix" in result.stdout

    validation = run_command(
        "-m", "trainer.evaluate", "--model_dir", str(model_dir), "--data_dir", small_data_dir, "--split", "validation"
    )
    assert validation.returncode == 0
    assert json.loads((model_dir / "metrics_validation.json").read_text())["examples"] == SMALL["num_validation"]


def test_predict_prints_the_tutorials_lines_for_new_sequences(mirrored_run):
    result = run_command("-m", "trainer.predict", "--model", str(mirrored_run["model_dir"]), "--count", "4",
                         "--seed", "99", check=True)  # fmt: skip
    lines = result.stdout.strip().splitlines()
    expected = generator.generate(99, "test", 0, 4, SMALL["size"])["label"]
    assert len(lines) == 4
    for line, label in zip(lines, expected, strict=True):
        assert line.startswith(f"Expected: {('Left', 'Right')[label]}, Predicted: ")
    assert "seed 99" in result.stderr


def test_predict_reads_videos_from_a_file(mirrored_run, tmp_path):
    examples = generator.generate(5, "test", 0, 3, SMALL["size"])
    with_labels, videos_only = tmp_path / "videos.npz", tmp_path / "videos.npy"
    np.savez(with_labels, video=examples["video"], label=examples["label"])
    np.save(videos_only, examples["video"])
    model = str(mirrored_run["model_dir"] / "export")
    labelled = run_command("-m", "trainer.predict", "--model", model, "--input", str(with_labels), check=True)
    assert [line.split(",")[0] for line in labelled.stdout.splitlines()] == [
        f"Expected: {('Left', 'Right')[label]}" for label in examples["label"]
    ]
    unlabelled = run_command("-m", "trainer.predict", "--model", model, "--input", str(videos_only), check=True)
    assert all(line.startswith("Predicted: ") for line in unlabelled.stdout.splitlines())

    wrong_size = tmp_path / "big.npy"
    np.save(wrong_size, generator.generate(5, "test", 0, 1, 9)["video"])
    refused = run_command("-m", "trainer.predict", "--model", model, "--input", str(wrong_size))
    assert refused.returncode == 2 and "this model takes [N, 8, 8, 8, 1]" in error_line(refused, "trainer.predict")


COMPARE_SAVED_MODELS = """
import sys
import numpy as np
import tensorflow as tf

videos = tf.constant(np.load(sys.argv[3]))
outputs = [tf.saved_model.load(folder).signatures["serving_default"](video=videos) for folder in sys.argv[1:3]]
print(float(np.max(np.abs(outputs[0]["probability_right"].numpy() - outputs[1]["probability_right"].numpy()))))
"""


def test_export_writes_a_runs_last_checkpoint_as_the_saved_model_the_run_exported(mirrored_run, tmp_path):
    exported = tmp_path / "exported"
    model_dir = str(mirrored_run["model_dir"])  # its checkpoints are in AIP_CHECKPOINT_DIR, as the run's were
    result = run_command("-m", "trainer.export", "--model_dir", model_dir, "--export_dir", str(exported),
                         env=mirrored_run["env"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"[trainer.export] exporting the checkpoint of step 60 to {exported}",
        f"[trainer.export] exported the checkpoint of step 60 (3 epochs done) to {exported}",
    ]
    np.save(tmp_path / "videos.npy", generator.generate(21, "test", 0, 32, SMALL["size"])["video"])
    compared = run_command(
        "-c",
        COMPARE_SAVED_MODELS,
        str(mirrored_run["model_dir"] / "export"),
        str(exported),
        str(tmp_path / "videos.npy"),
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert float(compared.stdout.strip().splitlines()[-1]) < 1e-6


def test_history_csv_has_unix_line_endings_and_counts_read_in_the_singular_for_one(mirrored_run):
    from trainer import training_log

    assert b"\r" not in (mirrored_run["model_dir"] / "history.csv").read_bytes()
    assert [training_log.count(n, "epoch") for n in (0, 1, 2, 1024)] == ["0 epochs", "1 epoch", "2 epochs",
                                                                           "1,024 epochs"]  # fmt: skip


def test_export_says_what_to_do_without_tensorflows_start_up_lines(tmp_path):
    result = run_command("-m", "trainer.export", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: trainer.export") and not result.stderr
    result = run_command("-m", "trainer.export", "--model_dir", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"trainer.export: error: --model_dir {tmp_path} holds no checkpoint to export (no trainer.task run there got "
        "that far)"
    )
