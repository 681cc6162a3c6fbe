"""Configs: flat YAML over the defaults, --set overrides, and errors that name the key."""

from __future__ import annotations

import glob
import os
import re

import pytest
from conftest import REPO, run_command

from pipeline.cli import UsageError
from trainer import config


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_every_shipped_config_loads_and_names_its_command_in_the_header(path):
    loaded = config.load(path)
    assert set(loaded) == set(config.DEFAULTS)
    with open(path) as file:
        header = file.read().split("\n\n")[0]
    assert "python -m trainer.task" in header or "run_default.sh" in header


def test_the_seed_config_is_the_tutorials_recipe():
    seed = config.load(os.path.join(REPO, "configs", "seed.yaml"))
    assert (seed["num_train"], seed["epochs"], seed["batch_size"], seed["learning_rate"]) == (5000, 1, 32, 0.001)
    assert seed["steps_per_epoch"] * seed["batch_size"] >= seed["num_train"]
    assert seed["num_test"] >= 1000


def test_default_config_asks_for_at_least_2000_test_sequences_at_size_50():
    default = config.load(os.path.join(REPO, "configs", "default.yaml"))
    assert default["size"] == 50 and default["num_test"] >= 2000


def test_file_values_then_overrides(tmp_path):
    path = write(tmp_path, "batch_size: 64\nlearning_rate: 1\n")
    loaded = config.load(path, ["epochs=3", "steps_per_epoch=null", "devices=[/cpu:0, /cpu:1]", "deterministic=true"])
    assert loaded["batch_size"] == 64
    assert loaded["learning_rate"] == 1.0 and isinstance(loaded["learning_rate"], float)
    assert loaded["epochs"] == 3 and loaded["steps_per_epoch"] is None
    assert loaded["devices"] == ["/cpu:0", "/cpu:1"] and loaded["deterministic"] is True
    assert config.load(None, ["devices=/cpu:0,/cpu:1"])["devices"] == ["/cpu:0", "/cpu:1"]
    assert loaded["size"] == config.DEFAULTS["size"]


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("batch_sise: 64\n", [], "unknown key 'batch_sise'"),
        ("", ["lerning_rate=0.1"], "unknown key 'lerning_rate'"),
        ("batch_size: 6.5\n", [], "batch_size must be a whole number, got 6.5"),
        ("", ["epochs=two"], "epochs must be a whole number, got 'two'"),
        ("", ["deterministic=1"], "deterministic must be true or false, got 1"),
        ("", ["epochs=true"], "epochs must be a whole number, got True"),
        ("", ["size=null"], "size must be a whole number, not null"),
        ("", ["batch_size=0"], "batch_size must be at least 1"),
        ("", ["learning_rate=-0.1"], "learning_rate must not be negative"),
        ("", ["learning_rate=-1e-3"], "learning_rate must not be negative"),
        ("", ["learning_rate=1e999"], "learning_rate must be a finite number, got '1e999'"),
        ("", ["learning_rate=.inf"], "learning_rate must be a finite number, got inf"),
        ("", ["learning_rate=[0.1]"], "learning_rate must be a number, got [0.1]"),
        ("", ["clip_norm=0"], "clip_norm must be above 0"),
        ("", [f"seed={2**32}"], "seed must be at most 4,294,967,295, got 4,294,967,296"),
        ("", [f"data_seed={2**63}"], "data_seed must be at most 9,223,372,036,854,775,807"),
        ("", [f"epochs={2**31}"], "epochs must be at most 2,147,483,647"),
        ("", ["size=2"], "size must be at least 3, got 2 (the model's 2x2 convolution and 2x2 max-pooling"),
        ("", ["size=256"], "size must be at most 255"),
        ("", ["devices=[0, 1]"], "devices must be a list of device names"),
        ("size: 8\nsize: 9\n", [], "not valid YAML at line 2 (key 'size' is given twice)"),
        ("", ["epochs"], "expected key=value"),
        ("- a\n- b\n", [], "expected key: value lines"),
        ("batch_size: [1\n", [], "not valid YAML"),
    ],
)
def test_bad_keys_and_values_are_errors_that_name_them(tmp_path, text, overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        config.load(write(tmp_path, text), overrides)


def test_a_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        config.load(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\xff\xfe binary", "is not UTF-8 text"),
        (b"size: 8\n\x00\n", "not valid YAML"),
        (b"# a comment\n" * 100_000, "a config is a short YAML file"),
    ],
)
def test_a_config_file_that_is_not_yaml_text_is_an_error(tmp_path, content, message):
    (tmp_path / "config.yaml").write_bytes(content)
    with pytest.raises(UsageError, match=message):
        config.load(str(tmp_path / "config.yaml"))
    with pytest.raises(UsageError, match="is a folder"):
        config.load(str(tmp_path))


@pytest.mark.parametrize(
    "override, value",
    [
        ("learning_rate=1e-3", 0.001),  # YAML 1.1 reads 1e-3 as a string; float() reads it
        ("learning_rate=2E-4", 0.0002),
        ("learning_rate=1", 1.0),
        ("learning_rate= 0.5 ", 0.5),
        ("clip_norm=1_000", 1000.0),
        (f"seed={2**32 - 1}", 2**32 - 1),
        (f"data_seed={2**63 - 1}", 2**63 - 1),
        ("size=3", 3),
        ("size=255", 255),
    ],
)
def test_numbers_are_read_as_python_reads_them_within_what_the_trainer_takes(override, value):
    key = override.split("=")[0]
    loaded = config.load(None, [override])[key]
    assert loaded == value and type(loaded) is type(value)


def test_differences_ignore_keys_that_only_change_how_a_run_executes():
    old = dict(config.DEFAULTS)
    assert config.differences(old, {**old, "verbose": 2, "devices": ["/cpu:0"]}) == []
    assert config.differences(old, {**old, "learning_rate": 0.5}) == ["learning_rate: 0.001 -> 0.5"]


def test_the_dumped_config_loads_back_the_same():
    loaded = config.load(None, ["devices=[/cpu:0]", "steps_per_epoch=7"])
    assert config.load_text(config.dump(loaded), "dumped") == loaded


def test_the_command_refuses_an_unknown_key_in_one_line_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "model"
    result = run_command(
        "-m", "trainer.task", "--config", "configs/smoke.yaml", "--set", "bogus=1",
        "--data_dir", str(tmp_path), "--model_dir", str(model_dir),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trainer.task: error: --set bogus: unknown key 'bogus'; known keys: {', '.join(config.DEFAULTS)}"
    ]
    assert not model_dir.exists()
