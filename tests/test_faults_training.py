"""Exact resume, preemption and checkpoints that cannot lie, on one device, a mirror and two workers.

Every run here trains the same deterministic config; a run stopped anywhere (SIGKILL mid-step,
mid-validation, mid-checkpoint-write; SIGTERM; a full disk) and started again with the same command
must end with the weights (and the history) of a run never stopped. Faults are injected at exact
points by tests/fault_injection (a sitecustomize module on PYTHONPATH), or sent from outside.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import (
    BOTH_CORES,
    QUICK_TRAIN,
    SMALL,
    finish_trainers,
    generate_args,
    kill_trainers,
    last_error_line,
    mount_tmpfs,
    run_command,
    snapshot,
    start_trainers,
    unmount,
)

from pipeline import contract

pytestmark = pytest.mark.slow

SHARD = f"moving_line/size_8/{contract.VERSION}/moving_line-{{split}}.tfrecord-00000-of-00001"
# 3 epochs of 20 steps, a checkpoint every 5 steps (and each epoch), 2 validation steps: checkpoints at
# steps 5, 10, 15, 20 (epoch 1), 25, ...
CONFIG = ["--config", "configs/smoke.yaml", "--set", "deterministic=true", "--set", "epochs=3", "--set",
          "steps_per_epoch=20", "--set", "checkpoint_every_steps=5", "--set", "test_after_training=false"]  # fmt: skip
SETTINGS = {
    "one_device": ["--set", "xla_layers=true"],  # the default: exact resume with XLA's layers too
    "mirror": ["--set", "logical_cpu_devices=2"],  # split the CPU in two and mirror over both (docs/training.md)
    "two_workers": [],
}
# Where one run is killed, in turn (tests/fault_injection/sitecustomize.py counts from each process's start), and
# the step it is run again from: mid-epoch 1 after the checkpoint of step 15; in the validation of epoch 2 (whose
# own checkpoint comes after it); while writing the checkpoint of step 45 (its second write: 40, 45), so the last
# rerun starts at an epoch's start.
STOPS = [("train_step:17", 15), ("validation_step:3", 35), ("checkpoint_write:2", 40)]
STOP_SECONDS = 30  # Kubernetes waits 30 s after SIGTERM before it kills; room for a loaded machine


def start(setting: str, model_dir, data_dir, *extra, fault: str | None = None, fault_worker: int = 0, env=None):
    """The trainer in the background: one process, or two workers; their logs are MODEL_DIR.worker.<index>.log."""
    args = [*CONFIG, *SETTINGS[setting], *extra, "--data_dir", data_dir, "--model_dir", model_dir]
    workers = 2 if setting == "two_workers" else 1
    return start_trainers(args, workers, f"{model_dir}.worker", fault=fault, fault_worker=fault_worker, env=env)


finish = finish_trainers


def train(setting, model_dir, data_dir, *extra, **kwargs) -> list[tuple[int, str]]:
    return finish(start(setting, model_dir, data_dir, *extra, **kwargs))


def fingerprint(log: str) -> str:
    found = re.findall(r"final weights fingerprint (\w+)", log)
    assert found, log[-3000:]
    return found[-1]


def chief_log(results) -> str:
    return results[0][1]


def in_group(setting: str, *values):
    """A parameter of a test on setting: the tests of one device run on one xdist worker (make test: --dist
    loadgroup), where its reference runs are made once; the mirror's and two workers' with the other tests that
    want both cores (conftest.BOTH_CORES)."""
    group = BOTH_CORES if setting != "one_device" else pytest.mark.xdist_group("faults_training_one_device")
    return pytest.param(setting, *values, marks=group)


def settings_of(*names):
    return [in_group(setting) for setting in names]


REPLICAS = {"one_device": "1 replica in all", "mirror": "2 replicas in all", "two_workers": "2 replicas in all"}


def uninterrupted(setting, model_dir, data_dir) -> dict:
    """A run of setting never stopped: its fingerprint, chief's log and history."""
    results = train(setting, model_dir, data_dir)
    assert [code for code, _ in results] == [0] * len(results), chief_log(results)[-3000:]
    assert REPLICAS[setting] in chief_log(results), chief_log(results)[-3000:]
    return {"fingerprint": fingerprint(chief_log(results)), "log": chief_log(results),
            "history": (model_dir / "history.csv").read_text()}  # fmt: skip


@pytest.fixture(scope="module")
def references(small_data_dir, tmp_path_factory):
    """reference(setting): an uninterrupted run of the setting (its fingerprint and history), made the first time
    a test asks for it (a parametrized fixture would be made again whenever tests of two settings alternate on one
    worker). A stopped run of the setting that ends with its weights also shows that runs of it are repeatable."""
    made = {}

    def reference(setting: str) -> dict:
        if setting not in made:
            root = tmp_path_factory.mktemp(setting)
            runs = [uninterrupted(setting, root / "first", small_data_dir)]
            made[setting] = {"setting": setting, "runs": runs, "root": root, "data": small_data_dir}
        return made[setting]

    return reference


def killed(setting, model_dir, data_dir, point: str, worker: int = 0):
    """A run of setting killed at point (on worker; the others are then stopped); the chief's log."""
    results = train(setting, model_dir, data_dir, fault=point, fault_worker=worker)
    assert results[worker][0] in (-signal.SIGKILL, 128 + signal.SIGKILL), (
        f"not killed at {point}:\n" + results[worker][1][-3000:]
    )
    assert not (model_dir / "export").exists()
    return chief_log(results)


def ends_as_if_never_stopped(setting, model_dir, reference, resumes_at: int):
    resumed = train(setting, model_dir, reference["data"])
    assert [code for code, _ in resumed] == [0] * len(resumed), chief_log(resumed)[-3000:]
    assert f"resuming at step {resumes_at} of 60" in chief_log(resumed), chief_log(resumed)[-3000:]
    assert (model_dir / "history.csv").read_text() == reference["runs"][0]["history"]
    for _, log in resumed:
        assert fingerprint(log) == reference["runs"][0]["fingerprint"]  # every worker


@pytest.fixture(scope="module")
def killed_at_step_17(references):
    """A one-device model_dir whose run was killed at train step 17 (checkpoints of steps 5, 10 and 15): tests
    copy it."""
    reference = references("one_device")
    model_dir = reference["root"] / "killed_at_step_17"
    killed("one_device", model_dir, reference["data"], STOPS[0][0])
    return model_dir


@pytest.mark.parametrize("setting", settings_of("one_device", "two_workers"))
def test_a_run_killed_mid_step_then_mid_validation_then_mid_checkpoint_write_ends_as_if_never_stopped(
    references, request, setting
):
    reference = references(setting)
    model_dir = reference["root"] / "killed_three_times"
    resumes_at = None
    for index, (point, step) in enumerate(STOPS):
        if index == 0 and setting == "one_device":  # that run is made once, for the other one-device tests too
            shutil.copytree(request.getfixturevalue("killed_at_step_17"), model_dir)
        else:
            # Two workers: the other worker dies mid-step, the chief mid-validation and mid-write.
            log = killed(
                setting, model_dir, reference["data"], point, worker=int(setting == "two_workers" and not index)
            )
            assert resumes_at is None or f"resuming at step {resumes_at} of 60" in log, (
                f"after the stop at {STOPS[index - 1][0]}:\n{log[-3000:]}"
            )
        resumes_at = step
    ends_as_if_never_stopped(setting, model_dir, reference, resumes_at)


@BOTH_CORES
def test_a_mirror_killed_mid_checkpoint_write_ends_as_if_never_stopped(references):
    """The mirror differs from one device only in its strategy (its stops, signals included, are one device's):
    one stop, mid-checkpoint-write, stands for the others there."""
    reference = references("mirror")
    model_dir = reference["root"] / "killed"
    killed("mirror", model_dir, reference["data"], "checkpoint_write:3")
    ends_as_if_never_stopped("mirror", model_dir, reference, resumes_at=10)


# SIGTERM to one of two workers (as to one preempted pod): test_scale_out_topology.py, where they go on on one device.
@pytest.mark.parametrize(("setting", "signal_name"), [in_group("one_device", "SIGINT")])
def test_ctrl_c_or_sigterm_stops_within_seconds_with_one_line_and_a_checkpoint_and_the_rerun_ends_as_if_never_stopped(
    references, setting, signal_name
):
    """Ctrl-C on one device (a terminal sends SIGINT to the trainer's one process): the step in progress finishes, a
    checkpoint of that step is written, one line. Kept general over settings and signals: one more parameter is one
    more case."""
    reference = references(setting)
    model_dir = reference["root"] / signal_name.lower()
    number = getattr(signal, signal_name)
    processes = start(setting, model_dir, reference["data"])
    target = processes[-1][0]  # with two workers, only the second is told to stop: both must
    deadline = time.monotonic() + 240
    log = Path(f"{model_dir}.worker.{len(processes) - 1}.log")
    while "first step of this run" not in log.read_text():
        if time.monotonic() > deadline or target.poll() is not None:
            kill_trainers(processes)
            pytest.fail(f"the run ended before its first step:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    target.send_signal(number)
    sent = time.monotonic()
    stopped = finish(processes, timeout=60)
    seconds = time.monotonic() - sent
    assert seconds < STOP_SECONDS, f"stopped {seconds:.1f} s after {signal_name}"
    for code, log in stopped:
        assert code == 128 + number, log[-3000:]
        lines = log.strip().splitlines()
        assert "Traceback" not in log and lines[-1].startswith(
            f"trainer.task: error: stopped by {signal_name} at step "
        )
        assert "run the same command again to resume" in lines[-1]
    steps = {re.search(rf"stopped by {signal_name} at step (\d+)", log).group(1) for _, log in stopped}
    assert len(steps) == 1, steps  # every worker stopped at the same step
    step = int(steps.pop())
    assert (model_dir / "checkpoints" / "state" / f"step_{step:09d}" / "manifest.json").is_file()

    ends_as_if_never_stopped(setting, model_dir, reference, resumes_at=step)


# One device only: what the checkpoints themselves promise (the format is the same in every setting).


@pytest.fixture(scope="module")
def one_device(references):
    """The one-device setting's reference (its runs, in their own folders under root), for the tests below."""
    reference = references("one_device")
    return {"root": reference["root"], "data": reference["data"], "fingerprint": reference["runs"][0]["fingerprint"]}


def checkpoint_data(model_dir, step: int):
    return model_dir / "checkpoints" / "state" / f"step_{step:09d}" / "ckpt.data-00000-of-00001"


@pytest.mark.xdist_group("faults_training_one_device")
def test_damaged_checkpoints_are_reported_in_one_line_each_and_the_last_good_one_is_used(one_device, killed_at_step_17):
    model_dir = one_device["root"] / "damaged"
    shutil.copytree(killed_at_step_17, model_dir)
    flipped, truncated = checkpoint_data(model_dir, 15), checkpoint_data(model_dir, 10)
    content = bytearray(flipped.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 4096] = bytes(byte ^ 0xFF for byte in content[middle : middle + 4096])
    flipped.write_bytes(bytes(content))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])

    resumed = train("one_device", model_dir, one_device["data"])
    code, log = resumed[0]
    assert code == 0 and "Traceback" not in log, log[-3000:]
    for step in (15, 10):
        assert re.search(rf"checkpoint \S+step_{step:09d} is not usable: ckpt\.data-00000-of-00001 does not match "
                         r"its checksum \(damaged\); trying the one before it", log), log[-3000:]  # fmt: skip
    assert "resuming at step 5 of 60" in log
    assert fingerprint(log) == one_device["fingerprint"]


@pytest.mark.xdist_group("faults_training_one_device")
def test_a_checkpoint_of_another_config_is_refused_in_one_line(one_device, killed_at_step_17):
    model_dir = one_device["root"] / "first_config"
    shutil.copytree(killed_at_step_17, model_dir)
    other = one_device["root"] / "other_config"
    env = {"AIP_CHECKPOINT_DIR": str(model_dir / "checkpoints")}
    code, log = train("one_device", other, one_device["data"], "--set", "learning_rate=0.02", env=env)[0]
    assert code == 2 and "Traceback" not in log, log[-3000:]
    line = log.strip().splitlines()[-1]
    assert line.startswith("trainer.task: error: the checkpoint ") and "another config" in line, line
    assert "learning_rate: 0.01 -> 0.02" in line
    assert not other.exists() or not list(other.iterdir())


@pytest.mark.xdist_group("faults_training_one_device")
def test_a_run_stopped_before_its_first_checkpoint_does_not_hold_its_model_dir(one_device):
    model_dir = one_device["root"] / "no_checkpoint"
    killed = train("one_device", model_dir, one_device["data"], fault="train_step:2")
    assert killed[0][0] == -signal.SIGKILL
    assert not list(model_dir.rglob("manifest.json"))  # no checkpoint: its config.yaml binds nothing
    code, log = train("one_device", model_dir, one_device["data"], "--set", "learning_rate=0.02")[0]
    assert code == 0, log[-3000:]
    assert "new run in" in log


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    folder = tmp_path / "small_disk"
    why_not = mount_tmpfs(folder, "2m")
    if why_not:
        pytest.skip(why_not)
    yield folder
    unmount(folder)


@pytest.mark.xdist_group("faults_training_one_device")
def test_a_full_disk_is_one_line_and_the_same_command_resumes_once_space_is_freed(one_device, tiny_disk):
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(b"\0" * (1_600 * 1024))  # about 400 kB left: a few checkpoints, not the whole run
    model_dir = tiny_disk / "model"
    code, log = train("one_device", model_dir, one_device["data"])[0]
    assert code == 1 and "Traceback" not in log, log[-3000:]
    line = log.strip().splitlines()[-1]
    assert line.startswith("trainer.task: error: no space left on the device writing ") and "free some space" in line
    # A checkpoint whose write failed is removed whole: no empty step folder, no TensorFlow ckpt_temp left.
    steps = list((model_dir / "checkpoints" / "state").glob("step_*"))
    assert all((step / "manifest.json").is_file() for step in steps), [sorted(os.listdir(s)) for s in steps]
    assert not list(model_dir.rglob("ckpt_temp"))
    ballast.unlink()
    code, log = train("one_device", model_dir, one_device["data"])[0]
    assert code == 0, log[-3000:]
    assert fingerprint(log) == one_device["fingerprint"]
    assert not [path for path in model_dir.rglob("*") if ".partial" in path.name]


def wait_for_line(log_path: Path, text: str, process, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            pytest.fail(f"no {text!r} in {log_path}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.mark.xdist_group("faults_training_one_device")
def test_a_second_run_on_a_model_dir_a_live_run_holds_is_refused_and_a_killed_holders_hold_is_taken_over(
    one_device,
):
    model_dir = one_device["root"] / "held"
    ((first, log),) = start("one_device", model_dir, one_device["data"])
    try:
        wait_for_line(Path(log.name), "first step of this run", first)
        code, second_log = train("one_device", model_dir, one_device["data"], "--set", "learning_rate=0.003")[0]
        assert code == 2 and "Traceback" not in second_log, second_log[-3000:]
        line = second_log.strip().splitlines()[-1]
        assert line.startswith(f"trainer.task: error: --model_dir {model_dir} is in use by trainer.task (pid "
                               f"{first.pid} on {socket.gethostname()}, since "), line  # fmt: skip
        while not list(model_dir.rglob("manifest.json")):
            assert first.poll() is None, Path(log.name).read_text()[-3000:]
            time.sleep(0.05)
        first.kill()  # as the out-of-memory killer does: no clean-up at all
    finally:
        kill_trainers([(first, log)])
    assert "learning_rate: 0.01" in (model_dir / "config.yaml").read_text()  # the second run wrote nothing

    code, log = train("one_device", model_dir, one_device["data"])[0]
    assert code == 0, log[-3000:]
    assert re.search(r"resuming at step \d+ of 60", log)
    assert fingerprint(log) == one_device["fingerprint"]


@pytest.mark.xdist_group("faults_training_one_device")
def test_a_resume_on_another_dataset_is_refused_saying_what_differs_and_changed_runtime_keys_are_said(
    one_device, killed_at_step_17, tmp_path
):
    model_dir = one_device["root"] / "bound"
    shutil.copytree(killed_at_step_17, model_dir)
    # The same size and seed, more training examples: what was seen silently resume before.
    bigger = tmp_path / "bigger"
    run_command(*generate_args(bigger, {**SMALL, "num_train": 1536}), check=True)
    code, log = train("one_device", model_dir, bigger)[0]
    assert code == 2 and "Traceback" not in log, log[-3000:]
    line = log.strip().splitlines()[-1]
    assert line.startswith("trainer.task: error: the checkpoint ") and "was written by a run on another dataset " \
        "(train examples 1,024 -> 1,536); give the --data_dir of that run" in line, line  # fmt: skip

    # A runtime key that changes the arithmetic is allowed on resume, and said (the rerun is killed at once).
    code, log = train("one_device", model_dir, one_device["data"], "--set", "xla_layers=false",
                      fault="train_step:1")[0]  # fmt: skip
    assert code == -signal.SIGKILL
    assert "resuming with runtime settings changed since the checkpoint: xla_layers: True -> False; xla_layers " \
        "changes the arithmetic or the records read" in log, log[-3000:]  # fmt: skip
    code, log = train("one_device", model_dir, one_device["data"])[0]
    assert code == 0 and "resuming at step 15 of 60" in log, log[-3000:]
    assert fingerprint(log) == one_device["fingerprint"]


def damaged_copy(small_data_dir, tmp_path, split: str, how: str) -> tuple[str, str]:
    """A copy of the small dataset whose one shard of split is cut in half or has one byte flipped."""
    data_dir = tmp_path / "data"
    shutil.copytree(small_data_dir, data_dir)
    shard = data_dir / SHARD.format(split=split)
    content = bytearray(shard.read_bytes())
    if how == "truncated":
        # Early enough that a few training steps' shuffle buffer (256 records) reaches the cut.
        content = content[: len(content) // 8 + 40]  # mid-record (a cut between records is caught too)
    else:
        content[len(content) // 8] ^= 0xFF
    shard.write_bytes(bytes(content))
    return str(data_dir), str(shard)


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_a_damaged_shard_is_named_in_one_line_and_skipped_only_when_asked(
    small_data_dir, quick_model_dir, tmp_path, how
):
    data_dir, shard = damaged_copy(small_data_dir, tmp_path, "test", how)
    model_dir = tmp_path / "model"
    shutil.copytree(quick_model_dir, model_dir)
    before = snapshot(model_dir)

    refused = run_command("-m", "trainer.evaluate", "--model_dir", str(model_dir), "--data_dir", data_dir)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]  # a fault
    line = last_error_line(refused, "trainer.evaluate")
    assert f"corrupt data in {shard} ({how} record at " in line, line
    assert "--skip_corrupt_records" in line and "regenerate the dataset" in line
    assert snapshot(model_dir) == before  # no metrics written from a partial pass

    skipped = run_command("-m", "trainer.evaluate", "--model_dir", str(model_dir), "--data_dir", data_dir,
                          "--skip_corrupt_records", check=True)  # fmt: skip
    metrics = json.loads((model_dir / "metrics.json").read_text())
    # TensorFlow drops a damaged shard from its first bad record on: those are the records skipped.
    assert 0 < metrics["examples"] < SMALL["num_test"]
    assert metrics["skipped_records"] == SMALL["num_test"] - metrics["examples"]
    assert sum(map(sum, metrics["confusion_matrix"]["rows_expected_columns_predicted"])) == metrics["examples"]
    assert f"skipped {metrics['skipped_records']} of {SMALL['num_test']} test records ({shard}" in skipped.stderr


def test_training_on_a_damaged_shard_stops_naming_it_and_skips_it_when_asked(small_data_dir, tmp_path):
    data_dir, shard = damaged_copy(small_data_dir, tmp_path, "train", "truncated")
    model_dir = tmp_path / "model"
    command = ["-m", "trainer.task", *QUICK_TRAIN, "--data_dir", data_dir, "--model_dir", str(model_dir)]
    refused = run_command(*command)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = last_error_line(refused, "trainer.task")
    assert f"corrupt data in {shard} (truncated record at " in line and "--set skip_corrupt_records=true" in line

    # The same run, resumed with skipping on: it says how many of the 1,024 training records it skips.
    resumed = run_command(*command, "--set", "skip_corrupt_records=true", check=True)
    found = re.search(r"skipped ([\d,]+) of 1,024 train records \(" + re.escape(shard), resumed.stderr)
    assert found and 0 < int(found.group(1).replace(",", "")) < 1024, resumed.stderr[-3000:]
    assert (model_dir / "export" / "saved_model.pb").exists()
