"""The same global batches on any topology, with real processes on localhost: a run stopped on two workers goes on
on one device, a one-device run on two workers, a mirror of two on one device, each ending where an uninterrupted
one-device run ends; a run fed by the tf.data service takes the very batches of one device and resumes exactly; a
checkpoint written before the order was defined over input streams still resumes.

Every run logs a digest of its first global batch (trainer.train.Loop.take_step): equal digests are equal sets of
examples. Weights are compared with TOLERANCE, the largest difference of any weight relative to the largest weight
of its array: runs on the same global batches differ only in the order in which float32 gradients are summed (per
replica, then over replicas), about 1e-7 of a weight per step; with Adam at 0.001 over these 48 steps that stays
below 1e-6 (measured: 2e-7 to 6e-7 between one device, a mirror and two workers, and one device with and without
XLA's layers), while runs on other batches differ by about 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BOTH_CORES, REPO, SMALL, finish_trainers, free_port, start_trainers

pytestmark = [pytest.mark.slow, BOTH_CORES]  # two workers, or a trainer and the service's processes

TOLERANCE = 1e-4
# 2 epochs of 24 steps of 16, a checkpoint every 4 steps; Adam at 0.001 (see TOLERANCE).
CONFIG = ["--config", "configs/smoke.yaml", "--set", "batch_size=16", "--set", "learning_rate=0.001",
          "--set", "epochs=2", "--set", "steps_per_epoch=24", "--set", "validation_steps=2",
          "--set", "checkpoint_every_steps=4", "--set", "test_after_training=false"]  # fmt: skip
SETTINGS = {
    "one_device": [],
    "mirror": ["--set", "logical_cpu_devices=2", "--set", "devices=[/cpu:0, /cpu:1]"],
    "two_workers": [],
}
# How the trainer's log names each setting.
DESCRIBED = {
    "one_device": "one device",
    "mirror": "a mirror of 2 devices",
    "two_workers": "2 workers (2 replicas in all)",
}


def start(setting, model_dir, data_dir, *extra, fault=None, fault_worker=0):
    """trainer.task in the background as setting; each process's output goes to MODEL_DIR.<setting>.<index>.log."""
    args = [*CONFIG, *SETTINGS[setting], *extra, "--data_dir", data_dir, "--model_dir", model_dir]
    workers = 2 if setting == "two_workers" else 1
    return start_trainers(args, workers, f"{model_dir}.{setting}", fault=fault, fault_worker=fault_worker)


finish = finish_trainers


def train(setting, model_dir, data_dir, *extra, **fault) -> list[tuple[int, str]]:
    return finish(start(setting, model_dir, data_dir, *extra, **fault))


def digest(log: str, step: int) -> str:
    found = re.findall(rf"step {step}'s global batch: 16 examples, digest (\w+)", log)
    assert found, f"no digest of step {step}'s global batch:\n{log[-3000:]}"
    return found[-1]


def fingerprint(log: str) -> str:
    return re.findall(r"final weights fingerprint (\w+)", log)[-1]


def final_weights(model_dir) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(Path(model_dir) / "model.keras").get_weights()


def largest_difference(weights, others) -> float:
    pairs = zip(weights, others, strict=True)
    return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12)) for a, b in pairs)


def all_ended(results, code: int):
    for returned, log in results:
        assert returned == code and "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def reference(small_data_dir, tmp_path_factory):
    """An uninterrupted one-device run: its log, fingerprint and final weights; a root for the other runs."""
    root = tmp_path_factory.mktemp("topology")
    ((code, log),) = train("one_device", root / "one_device", small_data_dir)
    assert code == 0, log[-3000:]
    return {"log": log, "weights": final_weights(root / "one_device"), "root": root, "data": small_data_dir}


def stopped(reference, setting: str, fault: str, fault_worker: int = 0) -> tuple[Path, list[tuple[int, str]]]:
    """A run of setting stopped by fault (SIGTERM: exit 143; SIGKILL): its model_dir and (exit code, log)s."""
    model_dir = reference["root"] / f"{setting}_{fault.replace(':', '_')}"
    ended = train(setting, model_dir, reference["data"], fault=fault, fault_worker=fault_worker)
    expected = 128 + signal.SIGTERM if fault.endswith("SIGTERM") else -signal.SIGKILL
    assert ended[fault_worker][0] == expected, ended[fault_worker][1][-3000:]
    for _, log in ended:
        assert digest(log, 0) == digest(reference["log"], 0)
    if fault.endswith("SIGTERM"):
        # One process got it (as one preempted pod does): every worker finishes the step, stops at the same one and
        # says so in one line; the chief saves that step.
        steps = set()
        for code, log in ended:
            assert code == 128 + signal.SIGTERM and "Traceback" not in log, log[-3000:]
            line = log.strip().splitlines()[-1]
            found = re.fullmatch(r"trainer\.task: error: stopped by SIGTERM at step (\d+) .*; run the same command "
                                 r"again to resume", line)  # fmt: skip
            assert found, line
            steps.add(int(found.group(1)))
        assert len(steps) == 1, steps
        assert (model_dir / "checkpoints" / "state" / f"step_{steps.pop():09d}" / "manifest.json").is_file()
    return model_dir, ended


@pytest.fixture(scope="module")
def one_device_killed(reference):
    """A one-device run killed (SIGKILL) at step 14, its last checkpoint step 12's: two tests resume copies."""
    return stopped(reference, "one_device", "train_step:14")


def stopped_then_resumed(reference, first: str, then: str, fault: str = "", fault_worker: int = 0, ended=None):
    """A run of setting `first` stopped by fault (or a copy of ended, such a run), then the same command on setting
    `then`; its model_dir."""
    if ended:
        model_dir = reference["root"] / f"{first}_then_{then}"
        shutil.copytree(ended[0], model_dir)
        ended = ended[1]
    else:
        model_dir, ended = stopped(reference, first, fault, fault_worker)
    step = re.findall(r"checkpoints/state/step_0*(\d+)", ended[0][1])
    resumed = train(then, model_dir, reference["data"])
    all_ended(resumed, 0)
    for _, log in resumed:
        assert (
            f"resuming on another topology: the checkpoint was written on {DESCRIBED[first]}, this run trains on "
            f"{DESCRIBED[then]}; the global batches stay those of a run never stopped" in log
        ), log[-3000:]
        resumed_at = int(re.search(r"resuming at step (\d+) of 48", log).group(1))
        assert not step or resumed_at == int(step[-1]), (step, resumed_at)
    assert len({digest(log, resumed_at) for _, log in resumed}) == 1  # every worker's part of one global batch
    assert largest_difference(final_weights(model_dir), reference["weights"]) < TOLERANCE
    return model_dir


def test_two_workers_stopped_by_sigterm_go_on_on_one_device_with_the_same_global_batches(reference):
    stopped_then_resumed(reference, "two_workers", "one_device", "train_step:10:SIGTERM", fault_worker=1)


def test_a_one_device_run_killed_goes_on_on_two_workers_with_the_same_global_batches(reference, one_device_killed):
    model_dir = stopped_then_resumed(reference, "one_device", "two_workers", ended=one_device_killed)
    assert (model_dir / "export" / "saved_model.pb").is_file()


def test_a_mirror_stopped_by_sigterm_goes_on_on_one_device_with_the_same_global_batches(reference):
    stopped_then_resumed(reference, "mirror", "one_device", "train_step:6:SIGTERM")


def test_a_checkpoint_written_before_input_streams_resumes_and_says_its_order_changes(reference, one_device_killed):
    model_dir = reference["root"] / "older"
    shutil.copytree(one_device_killed[0], model_dir)
    # What the trainer wrote before this version: no input_streams in the config, no topology.
    for manifest in model_dir.glob("checkpoints/state/*/manifest.json"):
        written = json.loads(manifest.read_text())
        del written["config"]["input_streams"], written["topology"]
        manifest.write_text(json.dumps(written))
    ((code, log),) = train("one_device", model_dir, reference["data"])
    assert code == 0, log[-3000:]
    assert re.search(r"the checkpoint \S+step_000000012 was written by an older trainer, whose training order "
                     r"depended on the number of workers: the run goes on at step 12 in the order of input_streams 8",
                     log), log[-3000:]  # fmt: skip


def start_server(args, log_path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "trainer.data_service", *args], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert process.poll() is None and time.monotonic() < deadline, f"no {text!r} in {path}:\n{path.read_text()}"
        time.sleep(0.2)


def bytes_read(process: subprocess.Popen) -> int:
    """What the process read from files so far (/proc/PID/io's rchar)."""
    return int(re.search(r"^rchar: (\d+)$", Path(f"/proc/{process.pid}/io").read_text(), re.M).group(1))


def test_a_run_fed_by_the_tf_data_service_waits_for_its_workers_takes_one_devices_batches_and_resumes_exactly(
    reference, tmp_path
):
    ports = [free_port() for _ in range(3)]
    workers = [f"localhost:{port}" for port in ports[1:]]
    servers = [start_server(["dispatcher", "--port", str(ports[0]), "--workers", ",".join(workers)],
                            tmp_path / "dispatcher.log")]  # fmt: skip
    model_dir, service = tmp_path / "model", ["--tf_data_service", f"grpc://localhost:{ports[0]}"]
    try:
        wait_for(tmp_path / "dispatcher.log", "dispatcher up", servers[0])
        # The trainer first, stopped by SIGTERM at step 20: it waits for the service's workers, which alone can
        # make its batches.
        trainer = start("one_device", model_dir, reference["data"], *service, fault="train_step:20:SIGTERM")
        log = Path(f"{model_dir}.one_device.0.log")
        wait_for(log, "waiting for the tf.data service", trainer[0][0])
        assert "first step of this run" not in log.read_text()
        for index, port in enumerate(ports[1:]):
            servers.append(start_server(["worker", "--dispatcher", f"localhost:{ports[0]}", "--port", str(port)],
                                        tmp_path / f"worker_{index}.log"))  # fmt: skip
        for index, server in enumerate(servers[1:]):
            wait_for(tmp_path / f"worker_{index}.log", "worker up", server)
        before = [bytes_read(server) for server in servers[1:]]
        ((code, stopped),) = finish(trainer)
        assert code == 128 + signal.SIGTERM, stopped[-3000:]
        assert "the tf.data service's 2 workers are up" in stopped
        assert digest(stopped, 0) == digest(reference["log"], 0)
        ((code, resumed),) = train("one_device", model_dir, reference["data"], *service)
        # The service's workers read the training records (the trainer reads only the validation split's).
        read = sum(bytes_read(server) - start for server, start in zip(servers[1:], before, strict=True))
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)
    assert code == 0, resumed[-3000:]
    assert "training batches come from the tf.data service at grpc://localhost" in resumed
    assert "resuming at step 20 of 48" in resumed and "resuming on another topology" not in resumed
    shards = list(Path(reference["data"]).rglob("*-train.tfrecord-*"))
    record_bytes = sum(shard.stat().st_size for shard in shards) / SMALL["num_train"]
    assert read > 48 * 16 / 4 * record_bytes, (read, record_bytes)  # at least a quarter of the records taken
    # Bit for bit the weights of one device reading the data itself.
    assert fingerprint(resumed) == fingerprint(reference["log"])
