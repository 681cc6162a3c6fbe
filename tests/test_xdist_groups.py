"""The suite's own promise to its time: the tests of one xdist_group run on one worker (make test: -n auto --dist
loadgroup), so that their module fixtures (a training setting's reference runs, a Dask cluster) are made once.

A pytest or pytest-xdist release that stops grouping fails nothing else: the suite just takes minutes longer.
"""

import subprocess
import sys

GROUPED = """
import os, pathlib, pytest

pytestmark = pytest.mark.xdist_group("one")


@pytest.mark.parametrize("index", range(6))
def test_grouped(index):
    pathlib.Path(f"ran_{index}").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""

OTHERS = """
import time, pytest


@pytest.mark.parametrize("index", range(6))
def test_other(index):
    time.sleep(0.1)
"""


def test_the_tests_of_one_xdist_group_run_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_others.py").write_text(OTHERS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this suite's settings
    command = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    workers = {path.read_text() for path in tmp_path.glob("ran_*")}
    assert len(list(tmp_path.glob("ran_*"))) == 6
    assert len(workers) == 1, f"the group ran on {sorted(workers)}: pytest and pytest-xdist no longer group it"
