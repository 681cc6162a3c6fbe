"""trainer.task's checks before TensorFlow starts (config, TF_CONFIG, dataset, model_dir, tf.data service), run in
this process as `python -m trainer.task` would: one line, exit 2, nothing written. Training itself:
test_e2e_training.py; killed and resumed: test_faults_training.py; across machines: test_scale_out_training.py."""

from __future__ import annotations

import json
import os

from conftest import free_port, last_error_line, run_in_process

SMOKE = ["--config", "configs/smoke.yaml"]


def task(data_dir, model_dir, *extra):
    return [*SMOKE, *extra, "--data_dir", str(data_dir), "--model_dir", str(model_dir)]


def test_a_missing_dataset_is_refused_before_anything_is_written(tmp_path, capfd):
    model_dir = tmp_path / "model"
    result = run_in_process("trainer.task", task(tmp_path / "no_data", model_dir), capfd)
    assert result.returncode == 2
    assert last_error_line(result, "trainer.task").startswith("trainer.task: error: no moving_line/size_8 dataset")
    assert not model_dir.exists()


def test_a_model_dir_holding_other_files_is_refused(small_data_dir, tmp_path, capfd):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_in_process("trainer.task", task(small_data_dir, tmp_path), capfd)
    assert result.returncode == 2 and "holds no trainer run" in last_error_line(result, "trainer.task")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_a_tf_config_that_is_not_json_is_refused(small_data_dir, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "worker 0")
    result = run_in_process("trainer.task", task(small_data_dir, tmp_path / "model"), capfd)
    assert last_error_line(result, "trainer.task").endswith("TF_CONFIG is not a JSON object; fix it or unset it")
    assert not (tmp_path / "model").exists()


def test_a_tf_data_service_address_where_nothing_listens_is_refused(small_data_dir, tmp_path, capfd):
    extra = ["--tf_data_service", f"grpc://localhost:{free_port()}"]
    result = run_in_process("trainer.task", task(small_data_dir, tmp_path / "model", *extra), capfd)
    assert result.returncode == 2 and "no dispatcher answers there" in last_error_line(result, "trainer.task")
    assert not (tmp_path / "model").exists()


def test_without_model_dir_or_aip_model_dir_the_command_says_what_to_set(small_data_dir, capfd, monkeypatch):
    monkeypatch.delenv("AIP_MODEL_DIR", raising=False)
    result = run_in_process("trainer.task", [*SMOKE, "--data_dir", small_data_dir], capfd)
    assert result.returncode == 2
    assert (
        last_error_line(result, "trainer.task") == "trainer.task: error: --model_dir is required (or set AIP_MODEL_DIR)"
    )


def test_workers_that_cannot_share_the_input_streams_are_refused_naming_those_that_can(
    small_data_dir, tmp_path, capfd, monkeypatch
):
    addresses = [f"localhost:{free_port()}" for _ in range(3)]
    cluster = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    # Peers that never come given up soon: without the check the worker would wait for them, not be refused.
    arguments = task(small_data_dir, tmp_path / "model", "--set", "peer_wait_seconds=5")
    result = run_in_process("trainer.task", arguments, capfd)
    assert result.returncode == 2
    assert last_error_line(result, "trainer.task") == (
        "trainer.task: error: 3 workers cannot share this run's 8 input streams evenly (the order of its batches is "
        "defined over them, and each worker reads a whole number of them): use 1, 2, 4 or 8 workers; a new run may "
        "set input_streams to a multiple of 3"
    )
    assert not (tmp_path / "model").exists()


def test_a_batch_that_the_input_streams_cannot_share_is_refused(small_data_dir, tmp_path, capfd):
    result = run_in_process("trainer.task", task(small_data_dir, tmp_path / "model", "--set", "batch_size=20"), capfd)
    assert result.returncode == 2
    assert "batch_size 20 does not split evenly over input_streams 8" in last_error_line(result, "trainer.task")
    assert "set input_streams to one of 1, 2, 4, 5, 10 or 20" in last_error_line(result, "trainer.task")
    assert not (tmp_path / "model").exists()
