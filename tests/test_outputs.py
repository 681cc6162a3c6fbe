"""trainer.outputs: where a run writes (the Vertex AI layout), and what a model_dir holds: a new run, one to
resume, a finished one, or something else (refused in one line)."""

from __future__ import annotations

import pytest
from conftest import QUICK_TRAIN

from pipeline import cli
from trainer import config as config_lib
from trainer import outputs


def test_a_model_dir_is_new_resumable_finished_or_refused(quick_model_dir, tmp_path):
    config = config_lib.load("configs/smoke.yaml", QUICK_TRAIN[3::2])
    assert outputs.check_model_dir(outputs.output_paths(str(tmp_path / "new")), config) == "new"
    assert outputs.check_model_dir(outputs.output_paths(quick_model_dir), config) == "finished"
    other = {**config, "learning_rate": config["learning_rate"] * 2}
    with pytest.raises(cli.UsageError, match="holds a run with another config"):
        outputs.check_model_dir(outputs.output_paths(quick_model_dir), other)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(cli.UsageError, match="is not empty and holds no trainer run"):
        outputs.check_model_dir(outputs.output_paths(str(tmp_path / "occupied")), config)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(cli.UsageError, match="is a file; give a folder"):
        outputs.check_model_dir(outputs.output_paths(str(tmp_path / "a_file")), config)
    with pytest.raises(cli.UsageError, match="cannot be created"):
        outputs.check_model_dir(outputs.output_paths(str(tmp_path / "a_file" / "below")), config)


def test_outputs_go_where_vertex_ai_asks_when_it_asks(monkeypatch):
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://b/checkpoints")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://b/logs")
    paths = outputs.output_paths("gs://b/model")
    assert (paths.model_dir, paths.checkpoints, paths.logs) == ("gs://b/model", "gs://b/checkpoints", "gs://b/logs")
    monkeypatch.delenv("AIP_CHECKPOINT_DIR")
    monkeypatch.delenv("AIP_TENSORBOARD_LOG_DIR")
    local = outputs.output_paths("/m")
    assert local.export == "/m/export" and local.config == "/m/config.yaml"
