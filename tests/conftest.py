"""Shared fixtures: a small dataset built once per session by the real Beam pipeline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small enough to build in seconds, big enough for a model to learn (see tests/test_trainer*.py).
SMALL = {"size": 8, "num_train": 1024, "num_validation": 256, "num_test": 256, "seed": 0}


def run_command(*args, env=None, check=False, timeout=600):
    """Runs `python -m ...` from the repo root; returns the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def generate_args(data_dir, settings=SMALL, extra=()):
    flags = [f"--{name}={value}" for name, value in settings.items()]
    return ["-m", "pipeline.generate", f"--data_dir={data_dir}", *flags, *extra]


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    """A TFDS data_dir holding moving_line/size_8 (SMALL), built on the FnApiRunner with 2 processes."""
    data_dir = tmp_path_factory.mktemp("small_data")
    run_command(*generate_args(data_dir), check=True)
    return str(data_dir)
