"""One writer per model_dir: the hold, its refusal naming the holder, and its release however the holder ends.

The holders here are real processes (a short Python script), killed for real; trainer.task's use of the
hold is tested with real training runs in test_faults_training.py and test_scale_out_training.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import REPO, ended_within

from pipeline import cli
from trainer import model_dir_lock, outputs

HOLDER = """
import sys, time
from trainer import model_dir_lock
hold = model_dir_lock.hold(sys.argv[1], "the holder")
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A process holding tmp_path/model until it is killed."""
    model_dir = tmp_path / "model"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(model_dir)], cwd=REPO, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    try:
        assert process.stdout.readline().strip() == "held"
        yield model_dir, process
    finally:
        process.kill()
        process.wait()


def test_a_held_model_dir_is_refused_in_one_line_naming_the_holders_host_and_pid(holder):
    model_dir, process = holder
    with pytest.raises(cli.UsageError) as refused:
        model_dir_lock.hold(str(model_dir), "trainer.task")
    message = str(refused.value)
    assert f"--model_dir {model_dir} is in use by the holder (pid {process.pid} on {socket.gethostname()}" in message
    assert "give another --model_dir" in message and "\n" not in message


@pytest.mark.parametrize("name", ["SIGKILL", "SIGTERM"])
def test_the_hold_of_a_killed_holder_is_taken_over_without_a_manual_step(holder, name):
    model_dir, process = holder
    process.send_signal(signal.Signals[name])
    ended_within(process, 30, f"the holder after {name}")
    hold = model_dir_lock.hold(str(model_dir), "trainer.task")
    try:
        assert f'"pid": {os.getpid()}' in (model_dir / outputs.LOCK_FILE).read_text()
    finally:
        hold.release()


def test_a_released_hold_can_be_taken_again_and_a_refused_command_leaves_no_folder_it_made(tmp_path):
    model_dir = tmp_path / "new" / "model"
    first = model_dir_lock.hold(str(model_dir), "trainer.task")
    first.release()
    model_dir_lock.hold(str(model_dir), "trainer.task").release_untouched()
    assert model_dir.exists()  # made by the first hold, not by the second: kept
    model_dir_lock.hold(str(tmp_path / "made"), "trainer.task").release_untouched()
    assert not (tmp_path / "made").exists()


def test_a_folder_holding_only_a_lock_file_is_a_new_run_and_gs_is_not_locked(tmp_path):
    (tmp_path / outputs.LOCK_FILE).write_text("")
    assert outputs.check_model_dir(outputs.output_paths(str(tmp_path)), {}) == "new"
    hold = model_dir_lock.hold("gs://bucket/model", "trainer.task")  # nothing to hold: no I/O at all
    assert hold.descriptor is None
    hold.release()


def test_a_held_model_dir_is_refused_before_anything_is_taken_or_written(holder):
    model_dir, process = holder
    before = (model_dir / outputs.LOCK_FILE).read_text()
    with pytest.raises(cli.UsageError, match=f"is in use by the holder \\(pid {process.pid} "):
        model_dir_lock.refuse_if_held(str(model_dir))
    assert (model_dir / outputs.LOCK_FILE).read_text() == before
    model_dir_lock.refuse_if_held(str(model_dir / "elsewhere"))  # no lock file: nothing to say
    assert not (model_dir / "elsewhere").exists()


def test_export_of_a_run_still_before_its_first_checkpoint_is_told_it_is_in_use(tmp_path, capfd):
    """What a run holds before it has written anything but its hold (no checkpoint yet): in use, not empty."""
    from conftest import run_in_process

    hold = model_dir_lock.hold(str(tmp_path / "model"), "trainer.task")
    try:
        refused = run_in_process("trainer.export", [f"--model_dir={tmp_path / 'model'}"], capfd)
    finally:
        hold.release()
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith(
        f"trainer.export: error: --model_dir {tmp_path / 'model'} is in use by trainer.task (pid {os.getpid()} "
    ), refused.stderr
