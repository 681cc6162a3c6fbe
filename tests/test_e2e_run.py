"""The main job end to end as a user runs it (scripts/run_default.sh, make run, make clean): only the commands'
own lines, only its own folder written."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

# Lines of today's trainer.task that are Keras's own (model.summary's table, model.fit's epoch lines). The training
# loop of issue 10 prints its progress as [trainer.task] lines: delete this allowance when it lands.
COMMANDS = ("run_default.sh", "pipeline.generate", "trainer.task", "trainer.evaluate", "trainer.predict")


# What the libraries themselves write into HOME, once per machine (README.md says so): Keras its configuration file
# (when there is none), matplotlib its font cache and its configuration folder. Nothing else may appear there.
LIBRARY_FILES_IN_HOME = [".cache", ".cache/matplotlib", ".cache/matplotlib/fontlist-v*.json", ".config",
                         ".config/matplotlib", ".keras", ".keras/keras.json"]  # fmt: skip


def repository_files() -> dict:
    """Every file of the repository (size and modification time), less what Python, git and the tools keep there."""
    kept = (".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache")
    seen = {}
    for folder, folders, names in os.walk(REPO):
        folders[:] = [name for name in folders if name not in kept and not name.endswith(".egg-info")]
        for name in names:
            if not name.startswith(".coverage"):
                status = os.lstat(os.path.join(folder, name))
                seen[os.path.join(folder, name)] = (status.st_size, status.st_mtime_ns)
    return seen


PREDICTION = re.compile(r"^(Expected: (Left|Right), )?Predicted: (Left|Right)  \(probability of right [\d.]+\)$")


def test_a_whole_run_prints_only_the_commands_own_lines_and_writes_only_into_its_folder(tmp_path):
    """scripts/run_default.sh (make run) on the smoke config: generate, train, evaluate, predict.

    Counts what is not the commands' own: lines of `[command] ` or `command: `, evaluate's metrics table and
    predict's lines. No TF_CPP_MIN_LOG_LEVEL in the environment: the commands quiet TensorFlow themselves.
    """
    from trainer import evaluate

    work = tmp_path / "a run"  # a space: the script must keep it one folder
    home, temporary = tmp_path / "home", tmp_path / "tmp"  # where else a program writes: watched too
    home.mkdir()
    temporary.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHON=sys.executable, CONFIG="configs/smoke.yaml", HOME=str(home), TMPDIR=str(temporary))
    repository = repository_files()
    result = subprocess.run(["bash", "scripts/run_default.sh", str(work)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    assert sorted(os.listdir(tmp_path)) == ["a run", "home", "tmp"]
    assert sorted(os.listdir(work)) == [".moving-line-work", "data", "model"]
    in_home = sorted(str(path.relative_to(home)) for path in home.rglob("*"))
    assert len(in_home) == len(LIBRARY_FILES_IN_HOME), in_home
    assert all(map(fnmatch.fnmatch, in_home, LIBRARY_FILES_IN_HOME)), in_home
    assert os.listdir(temporary) == []
    assert repository_files() == repository

    metrics = json.loads((work / "model" / "metrics.json").read_text())
    results = set(evaluate.describe(metrics))
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    others = [
        line
        for line in lines
        if not line.startswith(tuple(f"[{command}] " for command in COMMANDS) + tuple(f"{c}: " for c in COMMANDS))
        and line not in results
        and not PREDICTION.match(line)
    ]
    print(f"{len(others)} of {len(lines)} lines are not the commands' own")
    assert others == [], "\n".join(others)
    # The TensorBoard hint is a command that works when pasted, spaces and all.
    (hint,) = [line for line in lines if "(tensorboard --logdir " in line]
    assert shlex.split(hint.split("(", 1)[1].rstrip(")")) == ["tensorboard", "--logdir", str(work / "model" / "logs")]
    assert sum(bool(PREDICTION.match(line)) for line in result.stdout.splitlines()) == 5


def make(scratch, *arguments, env=None):
    """`make -f Makefile -C scratch ...`: the repository's Makefile, run in a scratch folder."""
    return subprocess.run(["make", "-s", "-f", os.path.join(REPO, "Makefile"), "-C", str(scratch), *arguments],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)  # fmt: skip


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_deletes_the_folder_make_run_made_and_nothing_else_even_named_with_spaces(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "run").write_text("mine")
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "notes.txt").write_text("mine")
    made = tmp_path / "my run"
    (made / "data").mkdir(parents=True)
    (made / ".moving-line-work").write_text("made by make run")

    cleaned = make(scratch, "clean", f"WORK={made}")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not made.exists()
    assert (tmp_path / "my" / "notes.txt").read_text() == "mine" and (scratch / "run").read_text() == "mine"

    refused = make(scratch, "clean", f"WORK={tmp_path / 'my'}")
    assert refused.returncode == 2
    assert f"make clean: error: {tmp_path / 'my'} was not made by make run" in refused.stderr
    assert (tmp_path / "my" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_hands_work_to_the_script_as_one_argument(tmp_path):
    scratch = tmp_path / "scratch"
    (scratch / "scripts").mkdir(parents=True)
    # The script make run calls, replaced by one that records its arguments; an installed environment's stamp.
    (scratch / "scripts" / "run_default.sh").write_text('printf "%s\\n" "$#" "$@" > arguments.txt\n')
    (scratch / "setup.py").write_text("")
    (scratch / "installed").write_text("")
    os.utime(scratch / "setup.py", (0, 0))
    work = str(tmp_path / "my run's -x folder")
    ran = make(scratch, "run", f"WORK={work}", "STAMP=installed")
    assert ran.returncode == 0, ran.stderr
    assert (scratch / "arguments.txt").read_text().splitlines() == ["1", work]


def test_run_default_refuses_a_work_folder_holding_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run(["bash", "scripts/run_default.sh", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"run_default.sh: error: WORK {tmp_path} holds other files ({tmp_path}/notes.txt); "
        "give a new or empty folder (make run WORK=...)"
    ]
    assert os.listdir(tmp_path) == ["notes.txt"]
