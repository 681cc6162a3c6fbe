"""Training across machines on localhost: two workers of TF_CONFIG (identical weights, only the chief writes, a lost
or missing peer, SIGTERM while waiting, damaged shards, refusals). The same batches on any topology, and the
tf.data service: test_scale_out_topology.py."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    BOTH_CORES,
    QUICK_TRAIN,
    REPO,
    SMALL,
    ended_within,
    free_port,
    generate_args,
    last_error_line,
    run_command,
    snapshot,
    start,
    wait_for,
)

from pipeline import cli, contract
from trainer.preemption import GRACE_SECONDS

pytestmark = [pytest.mark.slow, BOTH_CORES]  # two workers, each wanting both cores

# Multi-worker training and the tf.data service: real processes on localhost, each bounded by a timeout.

SMOKE = ["--config", "configs/smoke.yaml"]


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def start_workers(data_dir, model_dir, logs_dir, *extra, addresses=None):
    """Two trainer.task workers with TF_CONFIG on 127.0.0.1, sharing model_dir (as they would share gs://)."""
    addresses = addresses or [f"127.0.0.1:{free_port()}" for _ in range(2)]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        command = ["-m", "trainer.task", *SMOKE, *extra, "--data_dir", data_dir, "--model_dir", str(model_dir)]
        workers.append(start(command, logs_dir / f"worker_{index}.log", env={"TF_CONFIG": json.dumps(tf_config)}))
    return workers


def finish(workers, timeout: float) -> list[int]:
    try:
        return [worker.wait(timeout=timeout) for worker in workers]
    finally:
        stop(workers)


def fingerprint(log_path) -> str:
    return re.search(r"final weights fingerprint (\w+)", log_path.read_text()).group(1)


def test_two_workers_end_with_identical_weights_and_only_the_chief_writes(small_data_dir, tmp_path):
    model_dir = tmp_path / "model"
    # XLA's layers, as by default (configs/smoke.yaml turns them off): two workers compile them alike.
    workers = start_workers(small_data_dir, model_dir, tmp_path, "--set", "xla_layers=true")
    assert finish(workers, timeout=240) == [0, 0], (tmp_path / "worker_0.log").read_text()[-3000:]
    chief_log, other_log = (tmp_path / "worker_0.log").read_text(), (tmp_path / "worker_1.log").read_text()
    assert "worker 0 (the chief) of 2 workers, 2 replicas in all" in chief_log
    assert "each replica's forward and backward pass compiled by XLA" in chief_log
    assert "worker 1 (not the chief) of 2 workers" in other_log
    # Two input pipelines: each reads its half of the input streams.
    assert "input pipeline 1 of 2 reads input streams 4-7 of 8 (50% of the training split each pass)" in other_log
    assert fingerprint(tmp_path / "worker_0.log") == fingerprint(tmp_path / "worker_1.log")
    for name in ["config.yaml", "export/saved_model.pb", "model.keras", "metrics.json", "history.json"]:
        assert (model_dir / name).is_file(), name
    assert json.loads((model_dir / "history.json").read_text())["epoch"] == [1, 2]
    # Event file names carry the writer's process id: one process (the chief's) wrote them all.
    events = list((model_dir / "logs").glob("*/events.out.tfevents.*"))
    assert {path.parent.name for path in events} == {"train", "validation"}
    assert len({re.search(r"\.(\d+)\.\d+\.v2$", path.name).group(1) for path in events}) == 1
    for log in (chief_log, other_log):
        assert "Traceback" not in log and "E0000" not in log.split("first step of this run")[-1], log[-3000:]


def training_process(supervisor: subprocess.Popen) -> int:
    """The pid of the training process a worker's trainer.task runs (its one child)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children") as children:
            found = children.read().split()
        if found:
            return int(found[0])
        time.sleep(0.1)
    raise AssertionError(f"trainer.task {supervisor.pid} started no training process")


def test_a_worker_whose_training_process_is_killed_says_so_the_other_names_it_and_a_rerun_resumes(
    small_data_dir, tmp_path
):
    from trainer import model_dir_lock

    model_dir = tmp_path / "model"
    longer = ["--set", "epochs=3", "--set", "steps_per_epoch=60"]  # seconds an epoch: killed mid-epoch 2
    (tmp_path / "first").mkdir()
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    workers = start_workers(small_data_dir, model_dir, tmp_path / "first", *longer, addresses=addresses)
    try:
        wait_for(tmp_path / "first" / "worker_0.log", r"\] epoch 1/3: ", workers, timeout=240)
        # The job holds its model_dir once, in the chief's training process.
        with pytest.raises(cli.UsageError, match=f"is in use by trainer.task \\(pid {training_process(workers[0])} "):
            model_dir_lock.refuse_if_held(str(model_dir))
        killed_pid = training_process(workers[1])
        os.kill(killed_pid, signal.SIGKILL)  # as the out-of-memory killer does
        killed = time.monotonic()
        assert ended_within(workers[0], 120, "worker 0 after its peer's training process was killed") == 1
        seconds = time.monotonic() - killed
        assert ended_within(workers[1], 30, "worker 1 after its training process was killed") == 128 + signal.SIGKILL
    finally:
        stop(workers)
    logs = [(tmp_path / "first" / f"worker_{index}.log").read_text() for index in range(2)]
    assert logs[1].strip().splitlines()[-1] == (
        f"trainer.task: error: the training process of worker 1 (pid {killed_pid}) was killed by SIGKILL (as the "
        "out-of-memory killer does); start every worker again with the same command to resume from the last checkpoint"
    )
    assert (
        logs[0]
        .strip()
        .splitlines()[-1]
        .startswith(f"trainer.task: error: lost contact with worker 1 ({addresses[1]}) (UnavailableError) at step ")
    )
    for log in logs:  # one line of its own each, no gRPC or absl lines
        assert "E0000" not in log and "Traceback" not in log, log[-3000:]
        assert all(line.startswith("[trainer.task] ") for line in log.strip().splitlines()[:-1]), log[-3000:]
    print(f"worker 0 stopped {seconds:.1f} s after worker 1's training process was killed")

    # The same commands again: both resume from the chief's checkpoint of epoch 1 (or later) and finish.
    (tmp_path / "again").mkdir()
    workers = start_workers(small_data_dir, model_dir, tmp_path / "again", *longer)
    assert finish(workers, timeout=240) == [0, 0], (tmp_path / "again" / "worker_0.log").read_text()[-3000:]
    for index in range(2):
        log = (tmp_path / "again" / f"worker_{index}.log").read_text()
        assert re.search(r"resuming at step ([6-9]\d|1[0-7]\d) of 180", log), log[-3000:]
    assert fingerprint(tmp_path / "again" / "worker_0.log") == fingerprint(tmp_path / "again" / "worker_1.log")
    assert (model_dir / "export" / "saved_model.pb").is_file()
    assert json.loads((model_dir / "history.json").read_text())["epoch"] == [1, 2, 3]


def test_workers_that_find_different_checkpoints_are_stopped_in_one_line_each(
    quick_model_dir, small_data_dir, tmp_path
):
    """Worker 0's --model_dir holds a checkpoint, worker 1's none (a --model_dir that is not one shared folder)."""
    resumed = tmp_path / "shared_by_none"
    shutil.copytree(quick_model_dir, resumed, ignore=shutil.ignore_patterns("export"))
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    workers = []
    for index, model_dir in enumerate((resumed, tmp_path / "another")):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        command = ["-m", "trainer.task", *QUICK_TRAIN, "--data_dir", small_data_dir, "--model_dir", str(model_dir)]
        workers.append(start(command, tmp_path / f"worker_{index}.log", env={"TF_CONFIG": json.dumps(tf_config)}))
    assert finish(workers, timeout=240) == [1, 1], (tmp_path / "worker_0.log").read_text()[-3000:]
    for index in range(2):
        lines = (tmp_path / f"worker_{index}.log").read_text().strip().splitlines()
        assert lines[-1].startswith(
            "trainer.task: error: the workers resumed from different checkpoints: --model_dir (and AIP_CHECKPOINT_DIR) "
            "must be one folder that every worker reaches"
        ), lines
        assert all(line.startswith("[trainer.task] ") for line in lines[:-1]), lines


def test_a_peer_that_hangs_without_dying_stops_the_others_after_collective_timeout_seconds(small_data_dir, tmp_path):
    """Worker 1 stops in its 5th train step, alive (TensorFlow's threads answer the health checks, which find nothing
    wrong): only the all-reduce's timeout ends the chief's wait."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    hang = {"PYTHONPATH": os.path.join(REPO, "tests", "fault_injection"), "FAULT_AT": "train_step:5:hang"}
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        command = ["-m", "trainer.task", *SMOKE, "--set", "collective_timeout_seconds=5", "--data_dir", small_data_dir,
                   "--model_dir", str(tmp_path / "model")]  # fmt: skip
        env = {"TF_CONFIG": json.dumps(tf_config), **(hang if index else {})}
        workers.append(start(command, tmp_path / f"worker_{index}.log", env=env))
    try:
        wait_for(tmp_path / "worker_0.log", r"first step of this run", workers, timeout=240)
        started = time.monotonic()  # within 4 steps of the hang
        code = ended_within(workers[0], 120, "worker 0 with a peer that hangs")
        seconds = time.monotonic() - started
    finally:
        stop(workers)
    assert code == 1, (tmp_path / "worker_0.log").read_text()[-3000:]
    line = (tmp_path / "worker_0.log").read_text().strip().splitlines()[-1]
    assert line.startswith("trainer.task: error: lost contact with another worker (every one still answers: one may "
                           "hang) ("), line  # fmt: skip
    # 5 s of all-reduce timeout, the chief's wait for its peers to leave (10 s) and room for a loaded machine.
    print(f"worker 0 stopped {seconds:.1f} s after its first step, its peer hanging from its fifth")
    assert seconds < 60, f"worker 0 stopped {seconds:.1f} s after its first step"


def test_a_worker_whose_peer_never_starts_gives_up_after_peer_wait_seconds_with_one_line(small_data_dir, tmp_path):
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 0}}
    command = ["-m", "trainer.task", *SMOKE, "--set", "peer_wait_seconds=5", "--data_dir", small_data_dir,
               "--model_dir", str(tmp_path / "model")]  # fmt: skip
    started = time.monotonic()
    result = run_command(*command, env={"TF_CONFIG": json.dumps(tf_config)}, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    # The wait starts as the command does: 5 s, plus the start of a process that imports no TensorFlow, and room for
    # a loaded machine; a wait ten times too long (50 s) fails.
    assert 5 <= seconds < 30, f"gave up after {seconds:.1f} s"
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("trainer.task: error: worker 0 waited 5 s for the other workers of TF_CONFIG")
    assert f"no answer from worker 1 ({addresses[1]})" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()


def test_sigterm_to_a_worker_waiting_for_its_peers_ends_it_within_seconds_with_one_line(small_data_dir, tmp_path):
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 1}}
    command = ["-m", "trainer.task", *SMOKE, "--data_dir", small_data_dir, "--model_dir", str(tmp_path / "model")]
    worker = start(command, tmp_path / "worker_1.log", env={"TF_CONFIG": json.dumps(tf_config)})
    try:
        wait_for(tmp_path / "worker_1.log", r"waiting for all of them", [worker], timeout=120)
        time.sleep(3)  # inside TensorFlow's wait for the peers, where the process itself cannot take signals
        worker.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert ended_within(worker, 30, "a worker waiting for its peers, after SIGTERM") == 128 + signal.SIGTERM
        assert time.monotonic() - sent < 30  # Kubernetes waits 30 s after SIGTERM before it kills
    finally:
        stop([worker])
    lines = (tmp_path / "worker_1.log").read_text().strip().splitlines()
    assert lines[-1].startswith("trainer.task: error: stopped by SIGTERM while waiting for the other workers")
    assert not (tmp_path / "model").exists()


WAITING_FOR_THE_SERVICE = "still waiting for the first batch from the tf.data service at grpc://localhost:{port}"


def test_the_trainer_waits_for_a_service_worker_a_signal_ends_the_wait_and_a_worker_joining_ends_it(
    small_data_dir, tmp_path
):
    servers = [start(["-m", "trainer.data_service", "dispatcher", "--port", "0"], tmp_path / "dispatcher.log")]
    trainers = []
    try:
        port = wait_for(tmp_path / "dispatcher.log", r"grpc://localhost:(\d+)", servers, timeout=120).group(1)
        for name in ("waits", "stopped"):
            command = ["-m", "trainer.task", *QUICK_TRAIN, "--data_dir", small_data_dir, "--model_dir",
                       str(tmp_path / name), "--tf_data_service", f"grpc://localhost:{port}",
                       "--set", "deterministic=false"]  # fmt: skip
            trainers.append(start(command, tmp_path / f"{name}.log"))
        # No worker has joined: both wait for their first batch, and say so.
        for name, trainer in zip(("waits", "stopped"), trainers, strict=True):
            wait_for(tmp_path / f"{name}.log", re.escape(WAITING_FOR_THE_SERVICE.format(port=port)), [trainer], 240)
        # Ctrl-C ends a wait inside TensorFlow, where Python's handler never runs: one line, exit 130, nothing saved;
        # at once, without the grace period, since the run has taken no step.
        trainers[1].send_signal(signal.SIGINT)
        sent = time.monotonic()
        assert ended_within(trainers[1], 30, "a trainer waiting for a service worker, after Ctrl-C") == 130
        seconds = time.monotonic() - sent
        assert seconds < GRACE_SECONDS, f"ended {seconds:.1f} s after Ctrl-C"
        assert trainers[0].poll() is None  # the other goes on waiting
        servers.append(start(["-m", "trainer.data_service", "worker", "--dispatcher", f"localhost:{port}"],
                             tmp_path / "worker.log"))  # fmt: skip
        assert ended_within(trainers[0], 300, "a trainer once a service worker joined") == 0
    finally:
        stop(servers + trainers)
    lines = (tmp_path / "stopped.log").read_text().strip().splitlines()
    assert lines[-1] == (
        f"trainer.task: error: stopped by SIGINT while waiting for the first batch from the tf.data service at "
        f"grpc://localhost:{port}; nothing was saved yet; run the same command again to resume"
    )
    assert all(line.startswith("[trainer.task] ") for line in lines[:-1]), lines
    assert not list((tmp_path / "stopped").rglob("manifest.json"))
    assert (tmp_path / "waits" / "export" / "saved_model.pb").is_file()


def test_a_service_worker_says_when_it_loses_and_regains_its_dispatcher(tmp_path):
    port = free_port()
    dispatcher = ["-m", "trainer.data_service", "dispatcher", "--port", str(port)]
    servers = [start(dispatcher, tmp_path / "dispatcher.log")]
    try:
        wait_for(tmp_path / "dispatcher.log", "dispatcher up", servers, timeout=120)
        servers.append(start(["-m", "trainer.data_service", "worker", "--dispatcher", f"localhost:{port}"],
                             tmp_path / "worker.log"))  # fmt: skip
        wait_for(tmp_path / "worker.log", "worker up", servers[1:], timeout=120)
        servers[0].send_signal(signal.SIGTERM)
        assert ended_within(servers[0], 30, "the dispatcher after SIGTERM") == 0
        lost = f"lost contact with the dispatcher at localhost:{port} (Connection refused); waiting for it"
        wait_for(tmp_path / "worker.log", re.escape(lost), servers[1:], timeout=30)
        servers.append(start(dispatcher, tmp_path / "dispatcher_again.log"))
        wait_for(tmp_path / "worker.log", f"the dispatcher at localhost:{port} answers again", servers[1:], 120)
    finally:
        stop(servers)
    lines = (tmp_path / "worker.log").read_text().strip().splitlines()
    assert all(line.startswith("[trainer.data_service] ") for line in lines), lines  # no gRPC or TensorFlow lines
    # stdout and stderr are one file here: the line that says it is up comes once.
    assert sum("worker up on a free port" in line for line in lines) == 1, lines


def run_two_workers(arguments: list[str], timeout: float = 180) -> list[subprocess.CompletedProcess]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)}
        processes.append(subprocess.Popen([sys.executable, "-m", "trainer.task", *arguments], cwd=REPO, env=env,
                                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            process.kill()
    return results


def test_two_workers_name_a_damaged_shard_alike_and_skip_it_when_asked(tmp_path):
    # Two training shards: each worker reads its own, so only one of them meets the damage itself.
    data_dir = tmp_path / "data"
    run_command(*generate_args(data_dir, {**SMALL, "num_train": 512}, extra=["--num_shards=2"]), check=True)
    folder = data_dir / f"moving_line/size_8/{contract.VERSION}"
    shard = next(folder.glob("moving_line-train.tfrecord-00001-of-00002"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    model_dir = tmp_path / "model"
    arguments = [*QUICK_TRAIN, "--set", "steps_per_epoch=12", "--data_dir", str(data_dir), "--model_dir",
                 str(model_dir)]  # fmt: skip
    for result in run_two_workers(arguments):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        line = last_error_line(result, "trainer.task")
        assert f"corrupt data in {shard} (" in line and "--set skip_corrupt_records=true" in line, line
    for result in run_two_workers([*arguments, "--set", "skip_corrupt_records=true"]):
        assert result.returncode == 0, result.stderr[-3000:]
        assert re.search(rf"skipped [\d,]+ of 512 train records \({re.escape(str(shard))}", result.stderr)
    assert (model_dir / "export" / "saved_model.pb").exists()


# The trainer's refusals with TF_CONFIG naming two workers on localhost: each worker refuses alike, before it
# waits for the other (a config key, and what only the dataset tells). Every refusal: test_errors_every_command.py.
TWO_WORKER_CASES = [
    (["--set", "epochs=0"], "epochs must be at least 1"),
    (["--set", "batch_size=2048"], "batch_size 2048 is larger than the 1024 training examples"),
    (["--set", "devices=[/gpu:3]"], "choose devices on one machine"),
]


@pytest.mark.parametrize(("flags", "message"), TWO_WORKER_CASES)
def test_two_workers_refuse_the_trainers_bad_input_alike_in_one_line_and_write_nothing(
    small_data_dir, tmp_path, flags, message
):
    arguments = [*SMOKE, f"--data_dir={small_data_dir}", f"--model_dir={tmp_path / 'model'}", *flags]
    before = snapshot(tmp_path, small_data_dir)
    for result in run_two_workers(arguments):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert message in last_error_line(result, "trainer.task")
        assert all(line.startswith("[trainer.task] ") for line in result.stderr.strip().splitlines()[:-1])
    assert snapshot(tmp_path, small_data_dir) == before
