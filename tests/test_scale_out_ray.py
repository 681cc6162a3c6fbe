"""Training on a real Ray cluster on localhost (trainer.ray_job): a head and a second node started with `ray start`,
one CPU each, so that each of two workers has a node of its own. Ctrl-C and a resume, a worker killed mid-run (a
restart, not the job), a node lost mid-run with --workers 2:1 (the job goes on on one worker), the refusals that need a
cluster; the weights are compared with two TF_CONFIG workers' (trainer.task). Refusals decided before Ray is reached
(a --workers range holding a number of workers that does not divide input_streams among them):
test_errors_every_command.py."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from conftest import (
    ended_within,
    free_port,
    last_error_line,
    run_command,
    run_in_process,
    snapshot,
    start,
    wait_for,
)
from test_scale_out_topology import TOLERANCE, largest_difference

from bench.ray import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_cluster")]

# Long enough to stop or kill mid-run after the checkpoint of epoch 1 (epochs are seconds; starts are most of it).
# Adam at 0.001, as test_scale_out_topology.py's: a resume on another number of workers then stays within its
# TOLERANCE of a run never interrupted (the difference grows with the learning rate).
LONGER = ["--config", "configs/smoke.yaml", "--set", "epochs=2", "--set", "steps_per_epoch=150",
          "--set", "learning_rate=0.001", "--set", "test_after_training=false"]  # fmt: skip
TOTAL_STEPS = 300


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of two nodes on this machine, 1 CPU each (bench.ray.LocalCluster), every process of it ended at
    teardown. Ray's health checks every second, three missed: a lost node is given up in seconds (Ray's defaults take
    about half a minute, which bench.ray measures)."""
    # Ray's socket paths must stay short (under about 100 characters): a folder of its own under /tmp.
    root = tempfile.mkdtemp(prefix="ray-test-", dir="/tmp")
    cluster = LocalCluster(root, env={"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"})
    try:
        cluster.start(free_port(), free_port())
        yield cluster
    finally:
        cluster.stop()
        left = cluster.left()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the Ray cluster still running: {left}"


def fingerprint(text: str) -> str:
    found = re.findall(r"final weights fingerprint (\w+)", text)
    assert found, text[-3000:]
    return found[-1]


@pytest.fixture(scope="module")
def tf_config_reference(small_data_dir, tmp_path_factory):
    """Two TF_CONFIG workers (trainer.task) on LONGER, uninterrupted: their fingerprint, and their model_dir."""
    root = tmp_path_factory.mktemp("tf_config_reference")
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        command = ["-m", "trainer.task", *LONGER, "--data_dir", small_data_dir, "--model_dir", str(root / "model")]
        workers.append(start(command, root / f"worker_{index}.log", env={"TF_CONFIG": json.dumps(tf_config)}))
    codes = [ended_within(worker, 300, f"TF_CONFIG worker {index}") for index, worker in enumerate(workers)]
    assert codes == [0, 0], (root / "worker_0.log").read_text()[-3000:]
    return {"fingerprint": fingerprint((root / "worker_0.log").read_text()), "model_dir": root / "model"}


def ray_job(ray_cluster, data_dir, model_dir, *extra) -> list[str]:
    return ["-m", "trainer.ray_job", *LONGER, "--data_dir", str(data_dir), "--model_dir", str(model_dir),
            "--address", ray_cluster.address, *extra]  # fmt: skip


def own_lines_only(text: str):
    """The command's own lines: no Ray or TensorFlow chatter, no colour codes, one error line at most (the last)."""
    lines = text.strip().splitlines()
    assert "\x1b[" not in text and "Traceback" not in text, text[-3000:]
    assert all(line.startswith("[trainer.ray_job] ") for line in lines[:-1]), text[-3000:]


def test_a_cluster_with_too_few_cpus_for_the_workers_is_refused_in_one_line_and_nothing_is_written(
    ray_cluster, small_data_dir, tmp_path
):
    model_dir = tmp_path / "model"
    before = snapshot(tmp_path, small_data_dir)
    result = run_command(*ray_job(ray_cluster, small_data_dir, model_dir, "--workers", "4"), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    own_lines_only(result.stderr)
    assert "the Ray cluster has 2 CPUs in all, and 4 workers of 1 CPU each (--cpus_per_worker) need 4" in (
        last_error_line(result, "trainer.ray_job")
    )
    assert snapshot(tmp_path, small_data_dir) == before


def test_ctrl_c_stops_the_workers_past_max_failures_a_lost_worker_ends_the_job_else_it_costs_a_restart(
    ray_cluster, small_data_dir, tf_config_reference, tmp_path, capfd
):
    """One job stopped by Ctrl-C, run again with --max_failures 0 and a worker killed (it gives up), then run again
    with one of its workers killed mid-run: it ends with the weights
    of two TF_CONFIG workers never interrupted (so Ray's two workers train as trainer.task's, and both the stop
    and the restart resume exactly)."""
    model_dir = tmp_path / "model"
    command = ray_job(ray_cluster, small_data_dir, model_dir, "--workers", "2")

    # Ctrl-C mid-epoch: every worker stops at the same step, the chief saves it, one line, exit 130.
    driver = start(command, tmp_path / "stopped.log")
    try:
        wait_for(tmp_path / "stopped.log", r"\] first step of this run", [driver], timeout=300)
        driver.send_signal(signal.SIGINT)
        assert ended_within(driver, 60, "trainer.ray_job after Ctrl-C") == 130
    finally:
        driver.kill()
    stopped = (tmp_path / "stopped.log").read_text()
    own_lines_only(stopped)
    line = last_error_line(subprocess.CompletedProcess([], 130, "", stopped), "trainer.ray_job")
    step = int(re.search(r"stopped by SIGINT at step (\d+) \(training of epoch 1\); the last checkpoint is "
                         r"\S+ \(step \1\); run the same command again to resume$", line).group(1))  # fmt: skip
    assert (model_dir / "checkpoints" / "state" / f"step_{step:09d}" / "manifest.json").is_file()

    # Past --max_failures (0 here) a lost worker ends the job: one line naming it, exit 1, the checkpoint kept.
    driver = start([*command, "--max_failures", "0"], tmp_path / "gave_up.log")
    try:
        worker_1 = int(wait_for(tmp_path / "gave_up.log", r"worker 1 \(pid (\d+) on ", [driver], 300).group(1))
        wait_for(tmp_path / "gave_up.log", r"\] first step of this run", [driver], timeout=300)
        os.kill(worker_1, signal.SIGKILL)
        assert ended_within(driver, 120, "trainer.ray_job after its one worker was killed, --max_failures 0") == 1
    finally:
        driver.kill()
    gave_up = (tmp_path / "gave_up.log").read_text()
    own_lines_only(gave_up)
    assert f"resuming at step {step} of {TOTAL_STEPS}" in gave_up
    gave_up_line = last_error_line(subprocess.CompletedProcess([], 1, "", gave_up), "trainer.ray_job")
    # Each failed worker named: worker 1 lost; worker 0, when it noticed first, failing on its lost peer.
    assert gave_up_line.startswith("trainer.ray_job: error: Ray gave up after 0 restarts (--max_failures 0): ")
    assert re.search(r"[:;] worker 1 was lost \(its process or its node is gone: \w+\)[;)]", gave_up_line), gave_up_line
    assert gave_up_line.endswith("; run the same command again to resume from the last checkpoint"), gave_up_line

    # The same command resumes; a second job on the same model_dir is refused meanwhile; worker 1 killed mid-run.
    driver = start(command, tmp_path / "resumed.log")
    try:
        worker_1 = int(wait_for(tmp_path / "resumed.log", r"worker 1 \(pid (\d+) on ", [driver], 300).group(1))
        refused = run_in_process("trainer.ray_job", command[2:], capfd)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert f"is in use by trainer.ray_job (pid {driver.pid} " in last_error_line(refused, "trainer.ray_job")
        wait_for(tmp_path / "resumed.log", r"\] first step of this run", [driver], timeout=300)
        os.kill(worker_1, signal.SIGKILL)  # as the out-of-memory killer does
        killed = time.monotonic()
        restart = wait_for(tmp_path / "resumed.log", r"\] restart 1 of at most 3: .*", [driver], timeout=300).group(0)
        seconds = time.monotonic() - killed
        assert ended_within(driver, 300, "trainer.ray_job after a worker was killed") == 0
    finally:
        driver.kill()
    resumed = (tmp_path / "resumed.log").read_text()
    own_lines_only(resumed)
    assert f"resuming at step {step} of {TOTAL_STEPS}" in resumed
    assert re.search(
        rf"restart 1 of at most 3: worker 1 was lost \(its process or its node is gone: \w+\); Ray started 2 workers "
        rf"again, which resumed at step (\d+) of {TOTAL_STEPS}; first step [\d.]+ s after the failure$",
        restart,
    ), restart
    assert resumed.strip().splitlines()[-1].startswith("[trainer.ray_job] done in ")
    assert "2 workers, 1 restart: " in resumed.strip().splitlines()[-1]
    assert fingerprint(resumed) == tf_config_reference["fingerprint"]
    assert json.loads((model_dir / "history.json").read_text())["epoch"] == [1, 2]
    assert (model_dir / "export" / "saved_model.pb").is_file()
    print(f"restart: first step {seconds:.1f} s after worker 1 was killed ({restart.split('; ')[-1]})")


def test_a_node_lost_mid_run_with_workers_2_1_goes_on_with_one_worker(
    ray_cluster, small_data_dir, tf_config_reference, tmp_path
):
    """Elastic: --workers 2:1, node 2 lost after the checkpoint of epoch 1. Ray starts the group again on the one
    worker it can get, which resumes on the same global batches: the job ends with the weights of two TF_CONFIG workers
    never interrupted, within float reduction order (test_scale_out_topology.TOLERANCE), not bit for bit."""
    model_dir = tmp_path / "model"
    driver = start(ray_job(ray_cluster, small_data_dir, model_dir, "--workers", "2:1"), tmp_path / "elastic.log")
    try:
        wait_for(tmp_path / "elastic.log", r"\] 2 workers up", [driver], timeout=300)
        wait_for(tmp_path / "elastic.log", r"\] epoch 1/2: ", [driver], timeout=300)
        ray_cluster.kill_node("node2")
        lost = time.monotonic()
        restart = wait_for(tmp_path / "elastic.log", r"\] restart 1 of at most 3: .*", [driver], timeout=300).group(0)
        seconds = time.monotonic() - lost
        code = ended_within(driver, 300, "trainer.ray_job after node 2 was lost")
    finally:
        driver.kill()
    log = (tmp_path / "elastic.log").read_text()
    own_lines_only(log)
    assert code == 0, log[-3000:]
    assert re.search(r"restart 1 of at most 3: worker [01] was lost \(its process or its node is gone: \w+\); Ray "
                     rf"started 1 worker again, which resumed at step (\d+) of {TOTAL_STEPS}; first step [\d.]+ s "
                     r"after the failure$", restart), restart  # fmt: skip
    assert "resuming on another topology: the checkpoint was written on 2 workers (2 replicas in all), this run " in log
    assert "on 1 worker, 1 restart: " in log.strip().splitlines()[-1]
    assert json.loads((model_dir / "history.json").read_text())["epoch"] == [1, 2]
    import keras

    ours = keras.saving.load_model(model_dir / "model.keras").get_weights()
    theirs = keras.saving.load_model(tf_config_reference["model_dir"] / "model.keras").get_weights()
    difference = largest_difference(ours, theirs)
    assert difference < TOLERANCE, difference
    print(
        f"elastic: first step on 1 worker {seconds:.1f} s after node 2 was lost ({restart.split('; ')[-1]}); "
        f"largest relative weight difference from two TF_CONFIG workers {difference:.1e}"
    )
