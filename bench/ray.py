"""python -m bench.ray [--data_dir DIR] [--timeouts 10,60] [--repeats 1]

What a lost worker and a lost node cost a job on Ray (python -m trainer.ray_job), on a Ray cluster of two nodes
started on this machine for the benchmark (`ray start --head` and a second `ray start`, 1 CPU each, Ray's default
health checks), the size-8 smoke config for 3 epochs of 150 steps:
  - a worker killed by SIGKILL after its group's first step (--workers 2): seconds from the kill to the first step
    after the resume, and to Ray's notice of the failure;
  - node 2 lost (SIGKILL to every process of it) after the checkpoint of epoch 1 (--workers 2:1: Ray goes on with
    one worker, which resumes on the same global batches): seconds from the loss to the first step on one worker,
    side by side for each --worker_start_timeout in --timeouts (10 s: trainer.ray_job's default; 60 s: Ray's own).
Without --data_dir a size-8 dataset is generated in a temporary folder; everything is removed at the end, the
cluster's processes included. Ends with one JSON line. Not in `python -m bench all`, nor run by the test suite at a
smallest setting: it starts a cluster and kills parts of it, minutes at any setting (tests/test_scale_out_ray.py
runs the same cluster, LocalCluster below, and the same kill of a worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipeline import cli

CONFIG = ["--config", "configs/smoke.yaml", "--set", "epochs=3", "--set", "steps_per_epoch=150",
          "--set", "test_after_training=false"]  # fmt: skip
REPO = Path(__file__).resolve().parent.parent


class LocalCluster:
    """A Ray cluster of nodes on this machine, each a `ray start --block` process started in a session of its own,
    so that every process of a node can be found (Ray gives its workers process groups of their own) and ended."""

    def __init__(self, root: str, env: dict | None = None):
        self.root, self.env = root, env or {}
        self.nodes: dict[str, subprocess.Popen] = {}
        self.address = ""

    def log(self, name: str) -> Path:
        return Path(self.root, f"{name}.log")

    def start_node(self, name: str, *flags) -> subprocess.Popen:
        ray = os.path.join(os.path.dirname(sys.executable), "ray")  # the ray command of this environment
        with open(self.log(name), "w") as log:
            self.nodes[name] = subprocess.Popen(
                [ray, "start", "--num-cpus", "1", "--disable-usage-stats", "--block", *flags],
                cwd=REPO,
                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.nodes[name]

    def wait_for(self, name: str, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.nodes[name].poll() is None:
            found = re.search(pattern, self.log(name).read_text())
            if found:
                return found
            time.sleep(0.2)
        raise RuntimeError(f"Ray node {name}: no {pattern!r} in {self.log(name)}:\n{self.log(name).read_text()}")

    def start(self, port: int, client_port: int):
        self.start_node("head", "--head", "--port", str(port), "--ray-client-server-port", str(client_port),
                        "--include-dashboard=false", "--temp-dir", os.path.join(self.root, "ray"))  # fmt: skip
        # The head listens on the machine's address, which `ray start` prints.
        self.address = self.wait_for("head", r"ray start --address='([^']+)'").group(1)
        self.start_second_node()

    def start_second_node(self):
        self.start_node("node2", "--address", self.address)
        self.wait_for("node2", r"Ray runtime started")

    def processes_of(self, session: int) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == session:  # the session id (after state, parent and process group)
                    found.append(int(entry))
        return found

    def kill_node(self, name: str):
        """The node gone at once, as a machine that dies: SIGKILL to every process of it."""
        for pid in self.processes_of(self.nodes[name].pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nodes[name].wait(timeout=30)

    def left(self) -> list[int]:
        return [pid for node in self.nodes.values() for pid in self.processes_of(node.pid)]

    def stop(self):
        """Each node told to stop (SIGTERM: `ray start --block` drains it), then, after a few seconds, anything left
        killed: a node that ran jobs drains for up to 30 s, with nothing to keep."""
        for node in reversed(list(self.nodes.values())):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=5)
        for name in self.nodes:
            self.kill_node(name)
        deadline = time.monotonic() + 30  # killed processes are gone once their parents (or init) reaped them
        while time.monotonic() < deadline and self.left():
            time.sleep(0.2)


class Job:
    """python -m trainer.ray_job in the background, each line of its stderr kept with the time it arrived."""

    def __init__(self, *flags):
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trainer.ray_job", *flags], cwd=REPO, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self):
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout: float = 600) -> tuple[float, re.Match]:
        """(when the first line matching pattern arrived, its match)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return when, found
            if self.process.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        text = "\n".join(line for _, line in self.lines[-30:])
        raise RuntimeError(f"trainer.ray_job: no {pattern!r} (exit code {self.process.poll()}):\n{text}")

    def end(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(timeout=10)


RESTART = r"restart 1 of at most \d+: .* first step ([\d.]+) s after the failure$"


def a_worker_killed(cluster: LocalCluster, data_dir: str, model_dir: str) -> dict:
    job = Job(*CONFIG, "--data_dir", data_dir, "--model_dir", model_dir, "--address", cluster.address)
    try:
        _, found = job.wait_for(r"worker 1 \(pid (\d+) on ")
        job.wait_for(r"\] first step of this run")
        os.kill(int(found.group(1)), signal.SIGKILL)
        killed = time.monotonic()
        first_step, restart = job.wait_for(RESTART)
    finally:
        job.end()
    seconds = first_step - killed
    return {"first_step": seconds, "noticed": seconds - float(restart.group(1))}


def a_node_lost(cluster: LocalCluster, data_dir: str, model_dir: str, timeout: float) -> dict:
    flags = ["--data_dir", data_dir, "--model_dir", model_dir, "--address", cluster.address, "--workers", "2:1"]
    for _ in range(5):
        job = Job(*CONFIG, *flags, "--worker_start_timeout", f"{timeout:g}")
        _, found = job.wait_for(r"\] (\d) workers? up")
        if found.group(1) == "2":
            break
        job.end()  # Ray had not yet counted node 2 in (it does within seconds of its start): again
        time.sleep(10)
    try:
        job.wait_for(r"\] epoch 1/3: ")
        cluster.kill_node("node2")
        lost = time.monotonic()
        first_step, restart = job.wait_for(RESTART)
    finally:
        job.end()
    cluster.start_second_node()
    seconds = first_step - lost
    return {"first_step": seconds, "noticed": seconds - float(restart.group(1))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def parse_args(argv):
    parser = cli.ArgumentParser(prog="bench.ray", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_8 (default: generate one).")
    parser.add_argument("--timeouts", default="10,60", help="--worker_start_timeout values, side by side.")
    parser.add_argument("--repeats", type=cli.positive_int, default=1, help="Runs of each (median kept).")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    timeouts = [float(value) for value in args.timeouts.split(",") if value]

    with tempfile.TemporaryDirectory(prefix="bench-ray-", dir="/tmp") as work:  # Ray's socket paths stay short
        data_dir = args.data_dir or os.path.join(work, "data")
        if args.data_dir is None:
            print("bench.ray: generating the size-8 dataset", flush=True)
            command = [sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", "--size=8",
                       "--num_train=1024", "--num_validation=256", "--num_test=256"]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        cluster = LocalCluster(work)
        try:
            cluster.start(free_port(), free_port())
            print(f"bench.ray: a two-node Ray cluster at {cluster.address}", flush=True)
            figures = {"worker_killed": [], **{f"node_lost_timeout_{value:g}": [] for value in timeouts}}
            for repeat in range(args.repeats):
                result = a_worker_killed(cluster, data_dir, os.path.join(work, f"killed_{repeat}"))
                figures["worker_killed"].append(result)
                print(f"bench.ray: a worker killed: first step after the resume {result['first_step']:.1f} s after "
                      f"the kill (Ray noticed after {result['noticed']:.1f} s)", flush=True)  # fmt: skip
                for value in timeouts:
                    model_dir = os.path.join(work, f"lost_{value:g}_{repeat}")
                    result = a_node_lost(cluster, data_dir, model_dir, value)
                    figures[f"node_lost_timeout_{value:g}"].append(result)
                    print(f"bench.ray: node 2 lost, --worker_start_timeout {value:g}: first step on one worker "
                          f"{result['first_step']:.1f} s after the loss (Ray noticed the failed worker after "
                          f"{result['noticed']:.1f} s)", flush=True)  # fmt: skip
        finally:
            cluster.stop()
    medians = {
        name: {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}
        for name, runs in figures.items()
    }
    print(json.dumps({"benchmark": "ray", "repeats": args.repeats, "seconds": medians}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
