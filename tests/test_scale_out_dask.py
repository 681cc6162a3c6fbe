"""pipeline.generate on a real Dask cluster on localhost (`dask scheduler` and `dask worker` processes):
the same bytes as the default runner, every worker busy, a lost worker survived, Ctrl-C, no scheduler."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, generate_args, run_command, still_running_in_session

from pipeline import contract

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("scale_out_dask")]  # one worker: module fixtures

distributed = pytest.importorskip("dask.distributed", reason="the dask extra: pip install -e '.[dask]'")

DASK = os.path.join(os.path.dirname(sys.executable), "dask")
START_SECONDS = 60


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """A scheduler and its workers, each a process of its own session (Ctrl-C in a terminal reaches none)."""

    def __init__(self, folder):
        self.folder = folder
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.processes: list[subprocess.Popen] = []
        self.by_name: dict[str, subprocess.Popen] = {}
        self.killed: list[subprocess.Popen] = []  # by a test, on purpose

    def start_all(self, workers: int = 2, env=None, nanny: bool = False):
        port = self.address.rsplit(":", 1)[1]
        self.start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", port], env)
        for _ in range(workers):
            self.add_worker(env, nanny)

    def start(self, name, args, env=None):
        with open(self.folder / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                [DASK, *args, "--no-dashboard"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **(env or {})},
            )  # fmt: skip
        self.processes.append(process)
        self.by_name[name] = process
        return process

    def add_worker(self, env=None, nanny: bool = False) -> subprocess.Popen:
        # --no-nanny: the worker is this process, so that killing it loses the worker (a nanny would restart it).
        name = f"worker-{len(self.processes)}"
        args = ["worker", self.address, "--nthreads", "1", "--name", name, *([] if nanny else ["--no-nanny"])]
        return self.start(name, args, env)

    def kill(self, process: subprocess.Popen):
        self.killed.append(process)
        process.kill()

    def died(self) -> list[str]:
        """The cluster's processes that ended without a test killing them."""
        return [
            name for name, process in self.by_name.items() if process.poll() is not None and process not in self.killed
        ]

    def client(self):
        return distributed.Client(self.address, timeout=START_SECONDS, set_as_default=False)

    def wait_for_workers(self, count: int):
        with self.client() as client:
            client.wait_for_workers(count, timeout=START_SECONDS)

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-2000:]}" for path in sorted(self.folder.glob("*.log")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("dask_cluster"))
    try:
        cluster.start_all()
        cluster.wait_for_workers(2)
        yield cluster
        # Before the cluster is stopped here: the jobs sent to it, Ctrl-C included, left its scheduler and workers
        # running (only the one a test killed is gone).
        assert not cluster.died(), cluster.logs()
    finally:
        cluster.stop()


def on_cluster(cluster, *extra):
    return ["--runner=DaskRunner", f"--dask_client_address={cluster.address}", *extra]


def files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def dataset(data_dir, size):
    return data_dir / contract.NAME / contract.config_name(size) / contract.VERSION


def test_a_scheduler_that_does_not_answer_is_one_line_exit_2_and_nothing_written(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    data_dir = tmp_path / "data"
    args = generate_args(data_dir, extra=["--runner=DaskRunner", f"--dask_client_address={address}"])
    result = run_command(*args, "--dask_connection_timeout=2", timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f"pipeline.generate: error: --dask_client_address {address}: no Dask scheduler")
    assert not data_dir.exists()


SETTINGS = {"size": 8, "num_train": 8000, "num_validation": 1000, "num_test": 1000, "seed": 4}


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    """SETTINGS built by the default runner (Beam's FnApiRunner, one worker process per core)."""
    data_dir = tmp_path_factory.mktemp("default_runner")
    run_command(*generate_args(data_dir, SETTINGS, extra=["--num_shards=4"]), check=True)
    return files(dataset(data_dir, 8))


def test_a_build_on_the_cluster_is_byte_identical_to_the_default_runners_with_every_worker_busy(
    cluster, default_build, tmp_path
):
    with cluster.client() as client, distributed.get_task_stream(client) as tasks:
        result = run_command(*generate_args(tmp_path, SETTINGS, extra=on_cluster(cluster, "--num_shards=4")))
    assert result.returncode == 0, result.stderr + cluster.logs()
    assert "Traceback" not in result.stderr
    assert files(dataset(tmp_path, 8)) == default_build
    # Each shard a task of its own (Beam's ParDo over one element), spread over both workers.
    shards = collections.Counter(
        task["worker"] for task in tasks.data if str(task["key"]).startswith("('apply_dofn_to_bundle")
    )
    assert sum(shards.values()) == 3 * 4 and len(shards) == 2, shards


def test_without_an_address_a_cluster_is_started_here_for_the_run_and_closed(default_build, tmp_path):
    args = generate_args(tmp_path, SETTINGS, extra=["--runner=DaskRunner", "--num_shards=4"])
    process = start_generate(args)  # a session of its own: what it starts stays in it, orphaned or not
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "with DaskRunner at a local cluster" in stderr
    assert stderr.strip().splitlines()[-1].startswith("[pipeline.generate] done: 10,000 examples")
    assert "Warning" not in stderr and "Traceback" not in stderr
    assert files(dataset(tmp_path, 8)) == default_build
    # The local cluster's processes (workers, resource tracker) end with it; zombies have ended too (where PID 1
    # reaps no orphans, a container's, they stay listed). A loaded machine may take a few seconds.
    deadline = time.monotonic() + 30
    while (left := still_running_in_session(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left


def wait_until_writing(process, config_folder, timeout=120):
    deadline = time.monotonic() + timeout
    while not list(config_folder.glob("incomplete.*/.*.incomplete-*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be stopped; make it bigger"


def start_generate(args):
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def test_ctrl_c_during_a_cluster_run_is_one_line_exit_130_and_nothing_is_left(cluster, tmp_path):
    settings = {"size": 16, "num_train": 400_000, "num_validation": 1000, "num_test": 1000, "seed": 2}
    process = start_generate(generate_args(tmp_path, settings, extra=on_cluster(cluster)))
    config_folder = tmp_path / contract.NAME / contract.config_name(16)
    wait_until_writing(process, config_folder)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal's foreground group, the command's alone
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert (
        stderr.strip().splitlines()[-1] == "pipeline.generate: error: interrupted by SIGINT; run the same command again"
    )
    assert "Traceback" not in stderr
    assert sorted(os.listdir(config_folder)) == [".generate.lock"]
    # The shards that were running on the workers when the job was cancelled run to their end (a thread cannot be
    # stopped) but write nothing: once no worker runs any, the folder still holds only the lock.
    # How many tasks each worker is running (defined here: the workers cannot import this test module).
    executing = lambda dask_worker: dask_worker.state.executing_count  # noqa: E731
    with cluster.client() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            any(client.processing().values()) or any(client.run(executing).values())
        ):
            time.sleep(0.2)
        assert not any(client.processing().values())  # the cluster is free for the next job
        assert not any(client.run(executing).values()), client.run(executing)
    assert sorted(os.listdir(config_folder)) == [".generate.lock"]


def test_a_worker_killed_mid_job_costs_its_shards_again_elsewhere_and_the_dataset_is_the_same(cluster, tmp_path):
    settings = {"size": 16, "num_train": 120_000, "num_validation": 6000, "num_test": 6000, "seed": 1}
    shards = ["--num_shards=12"]
    reference = tmp_path / "reference"
    run_command(*generate_args(reference, settings, extra=shards), check=True)
    third = cluster.add_worker()
    cluster.wait_for_workers(3)
    data_dir = tmp_path / "cluster"
    with cluster.client() as client:
        process = start_generate(generate_args(data_dir, settings, extra=on_cluster(cluster, *shards)))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until a worker other than the third is writing a shard
            busy = [address for address, tasks in client.processing().items() if tasks]
            # Two calls to the scheduler: a worker in the first answer may be missing from the second.
            names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
            workers = [cluster.by_name.get(names.get(address)) for address in busy]
            victims = [worker for worker in workers if worker is not None and worker is not third]
            if victims and list(data_dir.glob("*/*/incomplete.*/.*.incomplete-*")):
                break
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.02)
        victim = victims[0]
        assert process.poll() is None, "the job ended before a worker could be killed; make it bigger"
        cluster.kill(victim)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr + cluster.logs()
    assert "Traceback" not in stderr
    assert victim.wait(timeout=10) == -signal.SIGKILL
    # The same dataset, and nothing temporary in it.
    assert files(dataset(data_dir, 16)) == files(dataset(reference, 16))
    assert not [name for name in os.listdir(dataset(data_dir, 16)) if name.startswith(".")]
    assert sorted(os.listdir(data_dir / contract.NAME / contract.config_name(16))) == [
        ".generate.lock",
        contract.VERSION,
    ]


FAULTS = os.path.join(REPO, "tests", "fault_injection")


def test_workers_that_keep_dying_on_a_shard_end_the_job_in_one_line_exit_1_with_nothing_kept(tmp_path):
    """Dask gives up on a task whose workers died allowed-failures + 1 times (here 1 + 1, to be quick; 3 + 1 by
    default); each death is a worker killed as the out-of-memory killer does, on its first shard."""
    cluster = Cluster(tmp_path / "cluster")
    (tmp_path / "cluster").mkdir()
    env = {"PYTHONPATH": FAULTS, "FAULT_AT": "write_shard:1", "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    try:
        cluster.start_all(workers=1, env=env, nanny=True)  # the nanny starts its worker again after each death
        cluster.wait_for_workers(1)
        data_dir = tmp_path / "data"
        result = run_command(*generate_args(data_dir, SETTINGS, extra=on_cluster(cluster, "--num_shards=2")),
                             timeout=300)  # fmt: skip
    finally:
        cluster.stop()
    assert result.returncode == 1, result.stderr + cluster.logs()
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"pipeline.generate: error: the Dask cluster at {cluster.address} could not finish the job "
                           "(KilledWorker: "), line  # fmt: skip
    assert "nothing was kept: check its workers and run the same command again" in line
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(data_dir / contract.NAME / contract.config_name(8))) == [".generate.lock"]


def test_a_scheduler_lost_mid_build_ends_the_job_in_one_line_exit_1_with_nothing_kept(tmp_path):
    cluster = Cluster(tmp_path / "cluster")
    (tmp_path / "cluster").mkdir()
    settings = {"size": 16, "num_train": 400_000, "num_validation": 1000, "num_test": 1000, "seed": 2}
    try:
        cluster.start_all(workers=1)
        cluster.wait_for_workers(1)
        process = start_generate(generate_args(tmp_path, settings, extra=on_cluster(cluster)))
        config_folder = tmp_path / contract.NAME / contract.config_name(16)
        wait_until_writing(process, config_folder)
        cluster.kill(cluster.by_name["scheduler"])
        _, stderr = process.communicate(timeout=120)
    finally:
        cluster.stop()
    assert process.returncode == 1, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"pipeline.generate: error: the Dask cluster at {cluster.address} could not finish the "
                           "job ("), stderr[-3000:]  # fmt: skip
    assert "Traceback" not in stderr
    assert sorted(os.listdir(config_folder)) == [".generate.lock"]
