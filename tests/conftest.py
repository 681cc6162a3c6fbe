"""Shared fixtures and helpers: a small dataset built once per session by the real Beam pipeline, commands
run as a user runs them (a subprocess, bounded) or in this process (for what only parsing decides)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small enough to build in seconds, big enough for a model to learn (see tests/test_e2e_training.py).
SMALL = {"size": 8, "num_train": 1024, "num_validation": 256, "num_test": 256, "seed": 0}
# One short training run: enough for a SavedModel and a finished model_dir to use and misuse.
QUICK_TRAIN = ["--config", "configs/smoke.yaml", "--set", "epochs=1", "--set", "steps_per_epoch=2",
               "--set", "validation_steps=1", "--set", "test_after_training=false"]  # fmt: skip
# The tests whose every run wants both cores (two TF_CONFIG workers, a two-device mirror): one xdist group, so
# that they run one after another rather than against each other, which slows both more than it saves.
BOTH_CORES = pytest.mark.xdist_group("both_cores")
# TensorFlow's C++ start-up lines stay out of what the tests read, in this process and in the commands.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def describe(args) -> str:
    return " ".join(str(arg) for arg in args)


def run_command(*args, env=None, check=False, timeout=600):
    """Runs `python ARGS` from the repo root; returns the CompletedProcess. Past timeout seconds the command is
    killed and the test fails naming it, with what it had printed."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    try:
        result = subprocess.run(
            [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:
        printed = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
        raise AssertionError(
            f"`python {describe(args)}` still running after {timeout} s; killed. Its stderr:\n{(printed or '')[-3000:]}"
        ) from None
    if check and result.returncode != 0:
        raise AssertionError(
            f"`python {describe(args)}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def start(args, log_path, env=None):
    """`python -m ...` from the repo root in the background, stdout and stderr into log_path."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


FAULTS = os.path.join(REPO, "tests", "fault_injection")  # a sitecustomize module: FAULT_AT=point dies there


def start_trainers(args, workers: int, log_prefix: str, fault=None, fault_worker: int = 0, env=None):
    """`python -m trainer.task *args` in the background: one process, or workers of one job (TF_CONFIG on localhost);
    fault: FAULT_AT for worker fault_worker (tests/fault_injection). Each one's output goes to LOG_PREFIX.<index>.log;
    finish_trainers() waits for them."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
    processes = []
    for index in range(workers):
        process_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        if workers > 1:
            cluster = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
            process_env["TF_CONFIG"] = json.dumps(cluster)
        if fault and index == fault_worker:
            process_env.update(PYTHONPATH=FAULTS, FAULT_AT=fault)
        log = open(f"{log_prefix}.{index}.log", "w")  # noqa: SIM115 - closed by finish_trainers()
        command = [sys.executable, "-m", "trainer.task", *map(str, args)]
        processes.append((subprocess.Popen(command, cwd=REPO, env=process_env, stdout=log, stderr=log), log))
    return processes


def finish_trainers(processes, timeout: float = 300) -> list[tuple[int, str]]:
    """(exit code, log) of each process of start_trainers(), once all have ended; once one was killed the others are
    (the job is lost). Past timeout they are killed and the test fails."""
    deadline = time.monotonic() + timeout
    try:
        while any(process.poll() is None for process, _ in processes) and time.monotonic() < deadline:
            if any(process.poll() in (-signal.SIGKILL, 128 + signal.SIGKILL) for process, _ in processes):
                for process, _ in processes:
                    if process.poll() is None:
                        process.kill()
            time.sleep(0.1)
    finally:
        late = [log.name for process, log in processes if process.poll() is None]
        kill_trainers(processes)
        assert not late, f"trainer.task still running after {timeout} s:\n{pathlib.Path(late[0]).read_text()[-3000:]}"
    return [(process.returncode, pathlib.Path(log.name).read_text()) for process, log in processes]


def kill_trainers(processes):
    """Kills what is left of start_trainers()' processes, reaps them and closes their logs."""
    for process, log in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()


def wait_for(log_path, pattern: str, processes, timeout: float) -> re.Match:
    """The first match of pattern in the log, polled until timeout (or until every process has ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log_path.read_text())
        if match:
            return match
        if all(process.poll() is not None for process in processes):
            break
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} in {log_path} after {timeout} s:\n{log_path.read_text()[-3000:]}")


def ended_within(process: subprocess.Popen, timeout: float, doing: str) -> int:
    """process's exit code once it ends; past timeout seconds it is killed and the test fails saying what it was
    doing."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{doing}: still running after {timeout:.0f} s; killed") from None


def run_in_process(prog: str, argv, capfd) -> subprocess.CompletedProcess:
    """Runs command prog (e.g. "trainer.predict") in this process as its `python -m` would, with its one-line errors
    and exit codes (cli.run_main); returns what it printed. For refusals decided before any work starts."""
    from pipeline import cli

    module = importlib.import_module(prog)
    # TensorFlow logs its start and the search for a GPU once per process: here, not among the command's lines
    # (a command run as a process loads TensorFlow with those lines filtered out: cli.quiet_tensorflow).
    import tensorflow as tf

    tf.config.list_physical_devices()
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    capfd.readouterr()
    try:
        code = cli.run_main(prog, module.main, list(argv))
    except SystemExit as leaving:
        code = leaving.code
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    stdout, stderr = capfd.readouterr()
    return subprocess.CompletedProcess([prog, *argv], code or 0, stdout, stderr)


def last_error_line(result, prog: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"{prog}: error: "), result.stderr[-3000:]
    return lines[-1]


def snapshot(*roots) -> dict:
    """Every file (with size and modification time) and folder under roots: anything written changes it."""
    seen = {}
    for root in roots:
        for folder, folders, files in os.walk(root):
            seen.update({os.path.join(folder, name): "folder" for name in folders})
            for name in files:
                status = os.lstat(os.path.join(folder, name))
                seen[os.path.join(folder, name)] = (status.st_size, status.st_mtime_ns)
    return seen


def still_running_in_session(session: int, but: int | None = None) -> list[str]:
    """The processes of a session (a command started with start_new_session=True, and whatever it started) that still
    run, but the one whose pid is `but`: zombies have ended (where PID 1 reaps no orphans, a container's, they stay
    listed)."""
    listing = subprocess.run(["ps", "-eo", "sid=,pid=,stat=,args="], capture_output=True, text=True).stdout
    return [
        line
        for line in listing.splitlines()
        if line.split()[0] == str(session) and line.split()[2][0] != "Z" and line.split()[1] != str(but)
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def mount_tmpfs(folder, size: str) -> str | None:
    """A tmpfs of size at folder (made if missing): None when mounted, else why not (mounting needs root)."""
    os.makedirs(folder, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "a full disk is a small tmpfs, which only root can mount"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        return f"mount -t tmpfs failed: {mounted.stderr.decode().strip()}"
    return None


def unmount(folder):
    if subprocess.run(["umount", str(folder)], timeout=60).returncode != 0:
        # Busy: a test that failed left a process in it. Detach it so the failure is reported once.
        subprocess.run(["umount", "--lazy", str(folder)], check=True, timeout=60)


def stop_session(process):
    """Kills what is left of the session process leads (started with start_new_session=True) and reaps it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


def fill(folder):
    """Fills the file system of folder to its last byte."""
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass


def generate_args(data_dir, settings=SMALL, extra=()):
    flags = [f"--{name}={value}" for name, value in settings.items()]
    return ["-m", "pipeline.generate", f"--data_dir={data_dir}", *flags, *extra]


# A folder in which made_once keeps what it makes for every session that names it (scripts/mutants.sh: the same
# datasets and runs for each of its many short sessions, made by the unbroken code).
SHARED_FIXTURES = "MOVING_LINE_SHARED_FIXTURES"


def made_once(tmp_path_factory, worker_id: str, name: str, make) -> str:
    """make(folder) run once per test session, however many xdist workers ask (xdist's own recipe: the workers
    share their session's parent folder, and a file lock); the folder's path. Tests must not change it."""
    kept = os.environ.get(SHARED_FIXTURES)
    if worker_id == "master" and not kept:  # no xdist
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return str(folder)
    from filelock import FileLock

    shared = pathlib.Path(kept) if kept else tmp_path_factory.getbasetemp().parent
    folder, made = shared / name, shared / f"{name}.made"
    with FileLock(str(shared / f"{name}.lock")):
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed making it left
            folder.mkdir()
            make(folder)
            made.write_text("")
    return str(folder)


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, worker_id):
    """A TFDS data_dir holding moving_line/size_8 (SMALL), built on the FnApiRunner with 2 processes."""
    return made_once(tmp_path_factory, worker_id, "small_data",
                     lambda folder: run_command(*generate_args(folder), check=True))  # fmt: skip


# A build of a few examples: splits smaller than a command may ask for, damage that is quick to rebuild.
TINY = {"size": 8, "num_train": 40, "num_validation": 8, "num_test": 8, "seed": 1}


@pytest.fixture(scope="session")
def tiny_built_data_dir(tmp_path_factory, worker_id):
    """A TFDS data_dir holding moving_line/size_8 built with TINY: copy it to change it."""
    return made_once(tmp_path_factory, worker_id, "tiny_data",
                     lambda folder: run_command(*generate_args(folder, TINY), check=True))  # fmt: skip


@pytest.fixture(scope="session")
def quick_model_dir(small_data_dir, tmp_path_factory, worker_id):
    """A model_dir QUICK_TRAIN trained on small_data_dir to its end (SavedModel in export/): copy it to change it."""

    def train(folder):
        run_command("-m", "trainer.task", *QUICK_TRAIN, "--data_dir", small_data_dir, "--model_dir",
                    str(folder / "model"), check=True)  # fmt: skip

    return os.path.join(made_once(tmp_path_factory, worker_id, "quick_model", train), "model")


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs (a disk that fills up), unmounted afterwards; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    why_not = mount_tmpfs(mount, "40m")
    if why_not:
        pytest.skip(why_not)
    yield mount
    unmount(mount)
