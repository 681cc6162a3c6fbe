"""pipeline.generate's faults: killed (SIGKILL, Ctrl-C, SIGTERM) midway, a damaged build, a full disk. One line, a
documented exit code, nothing half-written; the same command afterwards builds the dataset."""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
from built_data import VERSION, assert_one_line_error, dataset_folder, expected_digests, read_without_project
from conftest import (
    REPO,
    TINY,
    generate_args,
    last_error_line,
    mount_tmpfs,
    run_command,
    run_in_process,
    snapshot,
    still_running_in_session,
    stop_session,
    unmount,
)

from pipeline import contract

pytestmark = pytest.mark.slow


def test_a_killed_run_leaves_no_dataset_and_the_same_command_then_completes_it(tmp_path):

    settings = {"size": 16, "num_train": 40_000, "num_validation": 300, "num_test": 300, "seed": 2}
    config_folder = tmp_path / "moving_line" / "size_16"
    process, signal = run_until_writing(generate_args(tmp_path, settings), config_folder)
    os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up
    process.wait()

    assert glob.glob(str(config_folder / "incomplete.*")) and not (config_folder / VERSION).exists()
    load = "import sys, tensorflow_datasets as tfds; tfds.load('moving_line/size_16', data_dir=sys.argv[1])"
    assert run_command("-c", load, str(tmp_path)).returncode != 0

    again = run_command(*generate_args(tmp_path, settings), check=True)
    assert "left by an interrupted run" in again.stderr
    assert not glob.glob(str(config_folder / "incomplete.*"))
    read = read_without_project(tmp_path, "moving_line/size_16", 16)
    assert read["load"] == expected_digests(settings)  # every example once, none missing, none changed


DAMAGES = {
    "metadata deleted": lambda folder: os.remove(os.path.join(folder, contract.INFO_FILE)),
    "metadata unreadable": lambda folder: pathlib.Path(folder, contract.INFO_FILE).write_text("{"),
    "shard deleted": lambda folder: os.remove(shard(folder, "validation")),
    "shard truncated": lambda folder: os.truncate(shard(folder, "train"), 100),
    # What a worker killed mid-shard leaves, if the run still finished (a copy of the folder taken meanwhile).
    "a shard file never finished": lambda folder: pathlib.Path(
        folder, contract.temporary_file_name(contract.shard_file_name("train", "tfrecord", 0, 1), "killed")
    ).write_bytes(b"half"),
}


def shard(folder, split):
    return os.path.join(folder, contract.shard_file_name(split, "tfrecord", 0, 1))


def trainer_reads(data_dir, tmp_path, capfd):
    """What the trainer does first with a data_dir (trainer.task, trainer.evaluate), as a command would."""
    from pipeline import cli
    from trainer import input_pipeline

    capfd.readouterr()
    try:
        code = cli.run_main("trainer", lambda argv: input_pipeline.load_builder(str(data_dir), 8) and 0, [])
    except SystemExit as leaving:
        code = leaving.code
    return subprocess.CompletedProcess(["trainer"], code, *capfd.readouterr())


# The readers of a build, in this process; pipeline.show also as a process, once (a shard deleted).
READERS = {
    "pipeline.show": lambda data_dir, tmp, capfd: run_in_process(
        "pipeline.show", [f"--data_dir={data_dir}", f"--out={tmp}/x.png"], capfd
    ),
    "trainer": trainer_reads,
}


@pytest.fixture
def tiny_data_dir(tiny_built_data_dir, tmp_path):
    """A copy, for this test to damage, of a tiny build made once."""
    shutil.copytree(tiny_built_data_dir, tmp_path / "data")
    return tmp_path / "data", TINY


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_build_is_refused_by_readers_and_rebuilt_by_generate(tiny_data_dir, tmp_path, damage, capfd):
    data_dir, settings = tiny_data_dir
    folder = dataset_folder(data_dir, 8)
    DAMAGES[damage](folder)
    for name, reader in READERS.items():
        if name == "trainer" and damage == "shard truncated":
            continue  # the trainer finds it when reading, names the bad record and can skip (test_faults_training.py)
        result = reader(data_dir, tmp_path, capfd)
        if name == "pipeline.show" and damage == "shard deleted":
            result = run_command("-m", "pipeline.show", f"--data_dir={data_dir}", f"--out={tmp_path}/x.png")
        assert result.returncode == 1, (name, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert f"the dataset in {folder} is damaged" in last_error_line(result, name), name
    # Other settings: the damage is reported, nothing is touched.
    other = run_in_process("pipeline.generate", generate_args(data_dir, {**settings, "num_train": 41})[2:], capfd)
    assert_one_line_error(other, "pipeline.generate", 1, "is damaged", "rebuild it")
    # A folder of the user's beside the build, named like the ones a killed build leaves, is no build's.
    mine = pathlib.Path(folder).parent / "incomplete.mine"
    mine.mkdir()
    again = run_command(*generate_args(data_dir, settings), check=True)
    if damage != "metadata unreadable":
        assert "rebuilding it with the same settings" in again.stderr
    read = read_without_project(data_dir, "moving_line/size_8", 8)
    assert read["load"] == expected_digests(settings)
    assert mine.is_dir()


def test_a_runner_whose_job_server_cannot_be_fetched_is_one_line_exit_2_and_leaves_no_dataset(tmp_path):
    jar = "https://repo.maven.apache.org/maven2/org/apache/beam/no-such-job-server.jar"  # offline or not: not fetched
    result = run_command(*generate_args(tmp_path, TINY, ["--runner=FlinkRunner", f"--flink_job_server_jar={jar}"]))
    assert_one_line_error(result, "pipeline.generate", 2, "FlinkRunner could not start (Unable to fetch remote job "
                          f"server jar at {jar}", "drop --runner to build on Beam's FnApiRunner")  # fmt: skip
    assert os.listdir(tmp_path / "moving_line" / "size_8") == [".generate.lock"]  # as an interrupted run leaves it


def test_a_finished_build_on_a_read_only_mount_is_a_no_op_and_a_damaged_one_is_refused(tiny_data_dir, tmp_path, capfd):
    data_dir, settings = tiny_data_dir
    mount = tmp_path / "read_only"
    why_not = mount_tmpfs(mount, "8m")
    if why_not:
        pytest.skip(why_not)
    try:
        shutil.copytree(data_dir, mount / "built")
        shutil.copytree(data_dir, mount / "damaged")
        os.truncate(shard(dataset_folder(mount / "damaged", 8), "train"), 100)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        before = snapshot(mount)
        built = run_in_process("pipeline.generate", generate_args(mount / "built", settings)[2:], capfd)
        assert built.returncode == 0, built.stderr
        assert built.stderr.strip().splitlines() == [
            f"[pipeline.generate] {dataset_folder(mount / 'built', 8)} already holds this dataset (size 8, seed 1, "
            "40 train / 8 validation / 8 test); nothing to do"
        ]
        damaged = run_in_process("pipeline.generate", generate_args(mount / "damaged", settings)[2:], capfd)
        assert_one_line_error(damaged, "pipeline.generate", 2, f"--data_dir {mount / 'damaged'} is not writable")
        assert snapshot(mount) == before
    finally:
        unmount(mount)


def test_a_damaged_build_holding_a_file_no_build_writes_is_refused_and_nothing_is_deleted(tiny_data_dir, capfd):
    data_dir, settings = tiny_data_dir
    folder = dataset_folder(data_dir, 8)
    os.truncate(shard(folder, "train"), 100)
    pathlib.Path(folder, "notes.txt").write_text("mine")
    before = snapshot(data_dir)
    result = run_in_process("pipeline.generate", generate_args(data_dir, settings)[2:], capfd)
    assert_one_line_error(result, "pipeline.generate", 2, f"the dataset in {folder} is damaged (shard ",
                          "and it holds notes.txt, which no build writes; move that away")  # fmt: skip
    assert snapshot(data_dir) == before


def test_settings_of_a_damaged_build_that_cannot_be_read_are_not_guessed(tiny_data_dir, capfd):
    data_dir, settings = tiny_data_dir
    folder = dataset_folder(data_dir, 8)
    os.remove(os.path.join(folder, contract.INFO_FILE))
    os.remove(os.path.join(folder, contract.METADATA_FILE))
    result = run_in_process("pipeline.generate", generate_args(data_dir, settings)[2:], capfd)
    assert_one_line_error(result, "pipeline.generate", 1, "dataset_info.json is missing", f"or delete {folder}")


def test_same_settings_with_flags_that_cannot_change_a_built_dataset_are_refused(tiny_data_dir, capfd):
    data_dir, settings = tiny_data_dir
    before = snapshot(dataset_folder(data_dir, 8))
    reshard = run_in_process("pipeline.generate", generate_args(data_dir, settings, ["--num_shards=2"])[2:], capfd)
    assert_one_line_error(reshard, "pipeline.generate", 2, "--num_shards 2 cannot change a finished build")
    other_format = run_in_process(
        "pipeline.generate", generate_args(data_dir, settings, ["--file_format=array_record"])[2:], capfd
    )
    assert_one_line_error(other_format, "pipeline.generate", 2, "without array_record", "tfds convert_format")
    assert snapshot(dataset_folder(data_dir, 8)) == before


def run_until_writing(command, config_folder):
    import subprocess

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [sys.executable, *command], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    # Until a worker is writing a shard.
    while not glob.glob(str(config_folder / "incomplete.*" / ".*.incomplete-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be stopped; make it bigger"
    return process, signal


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_midway_leave_one_line_no_dataset_and_the_same_command_then_builds_it(tmp_path, signal_name):

    settings = {"size": 16, "num_train": 40_000, "num_validation": 300, "num_test": 300, "seed": 3}
    config_folder = tmp_path / "moving_line" / "size_16"
    process, signal = run_until_writing(generate_args(tmp_path, settings), config_folder)
    signal_number = getattr(signal, signal_name)
    if signal_number == signal.SIGINT:
        os.killpg(process.pid, signal_number)  # Ctrl-C reaches the whole foreground process group
    else:
        process.send_signal(signal_number)  # a scheduler signals the command alone
    # The moment the command says it stopped, its Beam workers are gone already: it ended them (they run in its
    # session), rather than leaving them to notice that it is gone.
    said, left = [], None
    deadline = time.monotonic() + 120
    while left is None and time.monotonic() < deadline and select.select([process.stderr], [], [], 1)[0]:
        said.append(process.stderr.readline())
        if not said[-1]:
            break
        if said[-1].startswith("pipeline.generate: error: "):
            left = still_running_in_session(process.pid, but=process.pid)
    _, rest = process.communicate(timeout=120)
    stderr = "".join(said) + rest
    assert process.returncode == 128 + signal_number, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == (
        f"pipeline.generate: error: interrupted by {signal_name}; run the same command again"
    )
    assert left == [], left
    assert not still_running_in_session(process.pid)
    assert sorted(os.listdir(config_folder)) == [".generate.lock"]  # no incomplete folder, no dataset
    again = run_command(*generate_args(tmp_path, settings), check=True)  # the lock was released
    assert "done: 40,600 examples" in again.stderr
    assert not list(config_folder.glob("incomplete.*"))


def test_a_dataset_too_big_for_the_disk_is_refused_before_writing(small_disk):
    settings = {"size": 16, "num_train": 300_000, "num_validation": 300, "num_test": 300, "seed": 0}
    result = run_command(*generate_args(small_disk / "data", settings))
    assert_one_line_error(result, "pipeline.generate", 2, "the dataset needs about 51.", "MiB free")
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(small_disk) == []


def test_a_disk_that_fills_up_midway_ends_in_one_line_with_nothing_kept_and_then_builds(small_disk):
    settings = {"size": 16, "num_train": 150_000, "num_validation": 300, "num_test": 300, "seed": 0}
    config_folder = small_disk / "data" / "moving_line" / "size_16"
    filler = small_disk / "filler"
    # Another program takes the space the estimate counted on. Its file is made first: on a slow machine
    # the build's own writes can leave no room to make one midway. Unbuffered: a buffered file keeps the tail
    # of a write the disk could not take, and its close then fails with ENOSPC.
    with open(filler, "wb", buffering=0) as file:
        process, _ = run_until_writing(generate_args(small_disk / "data", settings), config_folder)
        try:
            with contextlib.suppress(OSError):
                while file.write(b"\0" * (1 << 20)):  # until the disk is full
                    pass
            _, stderr = process.communicate(timeout=120)
        finally:
            stop_session(process)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"pipeline.generate: error: no space left on the device writing {config_folder / VERSION}; nothing was kept: "
        "free some space and run the same command again"
    )
    assert sorted(os.listdir(config_folder)) == [".generate.lock"]
    filler.unlink()
    again = run_command(*generate_args(small_disk / "data", settings), check=True)
    assert "done: 150,600 examples" in again.stderr
