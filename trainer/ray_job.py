"""Train on a Ray cluster: Ray Train starts the workers, and a lost worker costs a restart, not the job.

    python -m trainer.ray_job --config configs/default.yaml --data_dir DIR --model_dir DIR \\
        [--address HOST:PORT | auto] [--workers N | MAX:MIN] [--max_failures 3] [--set key=value ...]
    ray job submit -- python -m trainer.ray_job --address auto --config ... (the same flags)

The same config, data_dir and model_dir as trainer.task, and the same code: Ray Train's TensorflowTrainer starts
the workers on the cluster and sets TF_CONFIG in each; every worker then runs trainer.task's own steps
(build_and_restore, train_and_finish: the one training loop of trainer.train) under MultiWorkerMirroredStrategy.
Without --address (or RAY_ADDRESS) a Ray instance is started on this machine for the job.

- A lost worker (killed, out of memory, its node gone): Ray ends the other workers and starts the group again
  (at most --max_failures times); the new group resumes from the last checkpoint in model_dir, exactly, so the job
  ends with the weights of a run never interrupted. The command says so in one line per restart.
- --workers MAX:MIN (elastic): Ray restarts on the workers it can get, at least MIN, and the run goes on on them:
  the global batch of a step is the same on any number of workers (trainer.input_pipeline), so the job ends with
  the weights of a run never interrupted within float reduction order, not bit for bit (the chief says so in one
  line when it resumes on another number of workers). Every number in the range must divide the config's
  input_streams; a range holding one that does not is refused before Ray starts.
- Ctrl-C or SIGTERM: the workers stop together after the step in progress, the chief saves a checkpoint, and the
  command exits 130 or 143; the same command resumes. One job per model_dir: the command holds it (its lock).

Why each Ray worker trains in its own process rather than in a supervised child as trainer.task does with TF_CONFIG:
that supervisor exists because a process waiting inside TensorFlow for its peers takes no signal and has no
timeout. Under Ray no signal reaches a worker: Ray ends workers itself (it kills their processes), its worker-group
start timeout bounds the wait for peers, and a stop request comes from the driver through the Journal actor, read
before every step. A child would put a process between Ray and the training that Ray does not know of.

Ray is imported here only: nothing else in the package needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from pipeline import cli
from trainer import config as config_lib
from trainer import distribution, model_dir_lock, outputs, preemption, task

PROG = "trainer.ray_job"
# How long the driver lets the workers take to stop after SIGTERM or Ctrl-C: the step in progress (or a first
# step still compiling), the chief's checkpoint, and Ray's end of the worker group. Kubernetes kills 30 s after.
STOP_GRACE_SECONDS = 25.0
# How long Ray Train waits for the resources of a worker group (its placement group) before it decides again on
# the workers it can get. Ready resources are reserved within a second; after a node's loss Ray goes on counting
# that node until its health checks give it up, and each failed try costs this long again (Ray's default is 60 s):
# BENCHMARKS.md has what a node's loss costs. A fixed group retries without limit, so a short wait loses nothing.
DEFAULT_WORKER_START_TIMEOUT = 10.0
DEFAULT_MAX_FAILURES = 3
# What the chief's trainer.task lines say, read by the driver to time and describe a restart.
RESUMING = re.compile(r"^resuming at step (\d+) of (\d+)")
FIRST_STEP = "first step of this run after"
TASK_PREFIX = f"[{task.PROG}] "


def parse_workers(text: str) -> tuple[int, int]:
    """'2' -> (2, 2); '4:2' -> (4, 2): at most 4 workers, at least 2."""
    most, _, least = text.partition(":")
    try:
        workers = (int(most), int(least or most))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MAX:MIN (whole numbers), got {text!r}") from None
    if workers[1] < 1 or workers[0] < workers[1]:
        raise argparse.ArgumentTypeError(f"expected MAX >= MIN >= 1, got {text!r}")
    return workers


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return seconds


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    task.add_run_flags(parser, data_dir_help="TFDS data_dir holding moving_line/size_S (every node).")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="The Ray cluster: HOST:PORT, or auto (the one started on this machine). Default: RAY_ADDRESS, or a "
        "Ray instance started on this machine for the job.",
    )
    parser.add_argument(
        "--workers", type=parse_workers, default=(2, 2), metavar="N|MAX:MIN", help="Ray workers (default 2)."
    )
    parser.add_argument("--cpus_per_worker", type=cli.positive_int, default=1, help="CPUs each worker takes.")
    parser.add_argument("--gpus_per_worker", type=cli.non_negative_int, default=0, help="GPUs each worker takes.")
    parser.add_argument(
        "--max_failures",
        type=cli.non_negative_int,
        default=DEFAULT_MAX_FAILURES,
        help=f"Restarts after a lost or failed worker before the job gives up (default {DEFAULT_MAX_FAILURES}).",
    )
    parser.add_argument(
        "--worker_start_timeout",
        type=positive_seconds,
        default=DEFAULT_WORKER_START_TIMEOUT,
        metavar="SECONDS",
        help="How long Ray waits for a worker group to start before it tries again with the workers it can get "
        f"(default {DEFAULT_WORKER_START_TIMEOUT:g}).",
    )
    parser.add_argument(
        "--dashboard", action="store_true", help="Start Ray's dashboard with the Ray instance this command starts."
    )
    args = parser.parse_args(argv)
    task.check_run_flags(args)
    if args.dashboard and args.address:
        raise cli.UsageError("--dashboard applies to the Ray instance this command starts; without --address only")
    return args


def log(message: str):
    cli.log(PROG, message)


def count(number: int, noun: str) -> str:
    """trainer.training_log.count, imported once TensorFlow may load (training_log imports it)."""
    from trainer import training_log

    return training_log.count(number, noun)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    started = time.monotonic()
    if importlib.util.find_spec("ray") is None:
        raise cli.UsageError("Ray is not installed here: pip install -e '.[ray]' (make installs it)")

    # Config and model_dir: checked before TensorFlow or Ray starts.
    config = config_lib.load(args.config, args.set)
    if config["devices"] is not None or config["logical_cpu_devices"]:
        raise cli.UsageError(
            "devices and logical_cpu_devices choose devices on one machine; on Ray every worker trains on its "
            "GPUs (--gpus_per_worker) or its CPU: unset them"
        )
    # The order of the batches is defined over input_streams: the batch, and every number of workers Ray may start
    # (any in --workers MAX:MIN, after a loss), must share them evenly.
    config_lib.check_input_streams(config["input_streams"], config["batch_size"])
    most, least = args.workers
    check_worker_counts(config["input_streams"], most, least)
    for workers in range(least, most + 1):
        replicas = workers * max(args.gpus_per_worker, 1)
        if config["batch_size"] % replicas:
            raise cli.UsageError(
                f"batch_size {config['batch_size']} does not split evenly over {replicas} replicas "
                f"({workers} workers); choose a batch_size that every number of workers in --workers divides"
            )
    paths = absolute(outputs.output_paths(args.model_dir))
    model_dir_lock.refuse_if_held(paths.model_dir)
    state = outputs.check_model_dir(paths, config)
    if state == "finished":
        log(f"{paths.model_dir} already holds this run, trained and exported; nothing to do")
        return 0

    # Data: read before anything is written, so a wrong data_dir leaves model_dir untouched.
    cli.quiet_tensorflow()
    from trainer import input_pipeline, train

    data_dir = os.path.abspath(args.data_dir) if "://" not in args.data_dir else args.data_dir
    builder = input_pipeline.load_builder(data_dir, config["size"])
    input_pipeline.check_data_seed(builder, config["data_seed"])
    plan = train.plan_run(builder, config)

    # The cluster: reached, and big enough for the fewest workers asked for.
    with connected(check_address(args.address), args.dashboard) as ray:
        check_resources(ray, args)
        hold = model_dir_lock.hold(paths.model_dir, PROG)
        try:
            # Again, under the hold: a run that held the model_dir meanwhile may have moved it on.
            if outputs.check_model_dir(paths, config) == "finished":
                log(f"{paths.model_dir} already holds this run, trained and exported; nothing to do")
                return 0
            settings = {"config": config, "data_dir": data_dir, "paths": paths}
            return Driver(ray, args, settings, plan, started).run()
        except BaseException:
            hold.release_untouched()  # refused before anything was written: a model_dir made for the hold goes
            raise
        finally:
            hold.release()


def check_worker_counts(streams: int, most: int, least: int):
    """A UsageError unless each number of workers from least to most can share the run's input streams: after a
    loss, Ray Train's elastic policy starts the group again on any number in --workers MAX:MIN that the cluster
    has room for, and the run resumes on it."""
    if most == least:
        config_lib.check_input_pipelines(streams, most, "workers")
        return
    for workers in range(least, most + 1):
        if streams % workers:
            widest = widest_range(streams)
            fits = f"--workers {widest[1]}:{widest[0]} here" if widest else "here one number, not a range"
            raise cli.UsageError(
                f"--workers {most}:{least} lets Ray go on with any number of workers from {least} to {most}, and "
                f"{workers} workers cannot share this run's {streams} input streams evenly (the order of its batches "
                f"is defined over them, and each worker reads a whole number of them): every number in the range "
                f"must be {config_lib.spoken_list(config_lib.divisors(streams))} ({fits}); a new run may set "
                f"input_streams to a multiple of {math.lcm(*range(least, most + 1))}"
            )


def widest_range(streams: int) -> tuple[int, int] | None:
    """(MIN, MAX), the widest run of consecutive worker counts that all divide streams (the highest of equals):
    (1, 2) for 8, (1, 4) for 12; None when no two consecutive counts do (1, 3 or 9 streams)."""
    divisors = config_lib.divisors(streams)
    runs = [(low, high) for low in divisors for high in divisors if set(range(low, high + 1)) <= set(divisors)]
    low, high = max(runs, key=lambda run: (run[1] - run[0], run[1]))
    return (low, high) if high > low else None


def absolute(paths: outputs.Paths) -> outputs.Paths:
    """Ray's workers run in a folder of Ray's own: every local path they get must be absolute."""

    def full(path):
        return path if "://" in path else os.path.abspath(path)

    return outputs.Paths(full(paths.model_dir), full(paths.checkpoints), full(paths.logs))


def check_address(address: str | None) -> str | None:
    """A UsageError when nothing answers at HOST:PORT (Ray itself would retry for a minute before it says so)."""
    if not address or address == "auto":
        return address
    host, separator, port = address.split("://")[-1].rpartition(":")
    if not separator or not port.isdigit():
        raise cli.UsageError(f"--address {address} is not HOST:PORT (the head's address `ray start` printed) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise cli.UsageError(
            f"--address {address}: nothing answers there ({error.strerror or error}); start the cluster "
            "(ray start --head) or give the address `ray start --head` printed"
        ) from None
    return address


@contextlib.contextmanager
def connected(address: str | None, dashboard: bool):
    """Ray, joined to the cluster at address (or started here) until the block ends.

    Ray's own lines and the workers' output stay in Ray's log files, and usage statistics stay off unless
    RAY_USAGE_STATS_ENABLED says otherwise. Ray prints what its raylets push to a driver (a worker died, a raylet
    ended, in paragraphs with colour codes) on the driver's stdout, with no switch to turn that off: the same is in
    Ray's log files (raylet.out) and this command says what happened in its own lines, so its stdout (it writes
    nothing else there) goes nowhere while it is joined.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Train would turn every print in a worker into a log record as well (the lines twice in its log files).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    options = {"log_to_driver": False, "logging_level": logging.ERROR}
    if not address:
        options["include_dashboard"] = dashboard
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere):
        try:
            ray.init(address=address, **options)
        except ConnectionError as error:
            raise cli.UsageError(f"--address {address}: {first_line(error)}") from None
        # Ray Train's driver-side logger would print notices of its own.
        logging.getLogger("ray").setLevel(logging.ERROR)
        try:
            yield ray
        finally:
            ray.shutdown()


def check_resources(ray, args):
    """A UsageError when the cluster, all of it, has too few CPUs or GPUs for the fewest workers asked for."""
    most, least = args.workers
    resources = ray.cluster_resources()
    for name, each in (("CPU", args.cpus_per_worker), ("GPU", args.gpus_per_worker)):
        have = int(resources.get(name, 0))
        if each and have < least * each:
            flag = f"--{name.lower()}s_per_worker"
            raise cli.UsageError(
                f"the Ray cluster has {have} {name}s in all, and {count(least, 'worker')} of {each} {name} "
                f"each ({flag}) need {least * each}; lower --workers or {flag}, or add nodes"
            )


class Driver:
    """The job on the cluster: the trainer, what the workers report (through the Journal), stopping, the end."""

    def __init__(self, ray, args, settings: dict, plan, started: float):
        self.ray, self.args, self.settings, self.plan, self.started = ray, args, settings, plan, started
        self.received: list[int] = []
        self.failures = 0  # of the worker group, each one followed by a restart while --max_failures allows
        self.restarts = 0  # restart lines shown
        self.restart: Restart | None = None  # the restart under way
        self.workers = 0
        self.joined: dict[int, str] = {}  # the workers of the group starting: rank -> pid and node

    def run(self) -> int:
        ray = self.ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer

        most, least = self.args.workers
        # Propagated by Ray Train to its controller: how long a worker group may take to start.
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{self.args.worker_start_timeout:g}"
        # The Journal lives beside this driver (on its node), not on a worker's node that may be lost.
        here = ray.get_runtime_context().get_node_id()
        journal_actor = ray.remote(num_cpus=0)(Journal)
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False)
        self.journal = journal_actor.options(scheduling_strategy=strategy).remote()
        resources = {"CPU": self.args.cpus_per_worker, "GPU": self.args.gpus_per_worker}
        scaling = ScalingConfig(
            num_workers=most if most == least else (least, most),
            resources_per_worker={name: amount for name, amount in resources.items() if amount},
            use_gpu=self.args.gpus_per_worker > 0,
            # A healthy group is not restarted to grow: a node that comes back is used at the next restart.
            elastic_resize_monitor_interval_s=float("inf"),
        )
        storage = tempfile.mkdtemp(prefix="moving-line-ray-")  # Ray Train's run folder (nothing of ours goes there)
        trainer = TensorflowTrainer(
            train_on_worker,
            train_loop_config={**self.settings, "journal": self.journal},
            scaling_config=scaling,
            run_config=RunConfig(
                name="moving_line",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=self.args.max_failures),
                callbacks=[failed_workers_callback(self.journal)],
            ),
        )
        workers = f"{most}" if most == least else f"{least} to {most}"
        log(
            f"training on Ray ({self.describe_cluster()}): {workers} workers of "
            f"{count(self.args.cpus_per_worker, 'CPU')}"
            f"{f' and {self.args.gpus_per_worker} GPU' if self.args.gpus_per_worker else ''} each, at most "
            f"{self.args.max_failures} restarts; model_dir {self.settings['paths'].model_dir}"
        )
        outcome: dict = {}
        fitting = threading.Thread(target=fit, args=(trainer, outcome), name="ray-train-fit", daemon=True)
        # fit() in a thread: Ray Train then leaves SIGINT alone (on the main thread it would end the workers at
        # once, without a checkpoint); this thread takes SIGTERM and SIGINT and asks the workers to stop instead.
        for number in preemption.STOP_SIGNALS:
            signal.signal(number, lambda number, frame: self.received.append(number))
        return self.follow(fitting, outcome, storage)

    def follow(self, fitting: threading.Thread, outcome: dict, storage: str) -> int:
        """Runs fit() and prints what the workers report until it ends; asks them to stop on SIGTERM or SIGINT."""
        try:
            fitting.start()
            stop_deadline = None
            while fitting.is_alive():
                fitting.join(timeout=0.5)
                self.show(self.reported())
                if self.received and stop_deadline is None:
                    self.journal.request_stop.remote(signal.Signals(self.received[0]).name)
                    stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
                if stop_deadline and time.monotonic() > stop_deadline:
                    name = signal.Signals(self.received[0]).name
                    raise cli.FaultError(
                        f"stopped by {name}; the workers did not stop within {STOP_GRACE_SECONDS:g} s and were "
                        "ended; run the same command again to resume from the last checkpoint",
                        exit_code=cli.interrupted_exit(self.received[0]),
                    )
            self.show(self.reported())
        finally:
            cli.install_interrupt_handlers()
            shutil.rmtree(storage, ignore_errors=True)
        return self.finish(outcome)

    def reported(self) -> list:
        """What the workers told the Journal since the last call."""
        from ray.exceptions import RayError

        try:
            return self.ray.get(self.journal.take.remote())
        except RayError as error:  # the head (where the Journal lives, beside this command) is gone
            raise cli.FaultError(
                f"lost the Ray cluster ({first_line(error)}); run the same command again to resume from the last "
                "checkpoint"
            ) from None

    def describe_cluster(self) -> str:
        nodes = [node for node in self.ray.nodes() if node.get("Alive")]
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        return f"{count(len(nodes), 'node')}, {count(cpus, 'CPU')}"

    def show(self, events):
        """Prints what the workers reported: the chief's lines, and one line per restart (at its first step)."""
        for when, kind, payload in events:
            if kind == "line":
                if payload.startswith(FIRST_STEP) and self.restart:
                    self.say_restart(first_step=when)
                log(payload)
            elif kind == "failed":
                self.failures += 1
                if self.restart:
                    self.say_restart()  # that group failed too, before its first step
                self.restart = Restart(when, payload)
                self.joined = {}
            elif kind == "joined":
                rank, workers, where = payload
                self.joined[rank] = where
                if len(self.joined) == workers:
                    self.workers = workers
                    if self.restart:
                        self.restart.workers = workers
                    log(
                        f"{count(workers, 'worker')} up: "
                        + ", ".join(f"worker {rank} ({where})" for rank, where in sorted(self.joined.items()))
                    )
            elif kind == "training" and self.restart:
                self.restart.step = payload

    def say_restart(self, first_step: float | None = None):
        restart, self.restart = self.restart, None
        self.restarts += 1
        text = f"restart {self.restarts} of at most {self.args.max_failures}: {restart.lost}"
        if restart.workers:
            text += f"; Ray started {count(restart.workers, 'worker')} again"
        if restart.step:
            text += f", which resumed at step {restart.step} of {self.plan.total_steps}"
        elif restart.step is not None:
            text += ", which started from step 0 (there was no checkpoint yet)"
        if first_step is not None:
            text += f"; first step {first_step - restart.failed_at:.1f} s after the failure"
        log(text)

    def finish(self, outcome: dict) -> int:
        """The job's last line: its summary, or what stopped it."""
        if "error" in outcome:
            error, restarts = outcome["error"], max(self.failures - 1, 0)
            raise cli.FaultError(
                f"Ray gave up after {count(restarts, 'restart')} "
                f"(--max_failures {self.args.max_failures}): {describe_failure(error)}; run the same command again "
                "to resume from the last checkpoint"
            )
        if self.restart:
            self.say_restart()  # the last group found the run at its end, or was refused
        chief = outcome.get("return_value") or {}
        if self.received and chief.get("exit_code", 0) == 0:
            # Asked to stop, but the workers had already finished: the job is done all the same.
            self.received.clear()
        if chief.get("exit_code"):
            raise cli.FaultError(chief["message"], exit_code=chief["exit_code"])
        log(
            f"done in {time.monotonic() - self.started:.1f} s on {count(self.workers, 'worker')}, "
            f"{count(self.restarts, 'restart')}: {self.settings['paths'].model_dir}"
        )
        return 0


@dataclasses.dataclass
class Restart:
    """A restart under way: when and which workers failed, then the new group's size and starting step."""

    failed_at: float
    lost: str
    workers: int | None = None
    step: int | None = None


def fit(trainer, outcome: dict):
    """trainer.fit() in the fit thread: the chief's return value, or the error Ray gave up with."""
    try:
        outcome["return_value"] = trainer.fit().return_value
    except Exception as error:  # Ray Train's TrainingFailedError, or the cluster lost
        outcome["error"] = error


def describe_failure(error: BaseException) -> str:
    """One line for what Ray gave up on: each failed worker (Ray Train's WorkerGroupError), or the error itself."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        return "; ".join(
            f"worker {rank} {describe_worker_failure(failure)}" for rank, failure in sorted(failures.items())
        )
    return first_line(error)


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class Journal:
    """What the workers tell the driver, kept by a small actor beside the driver until it asks: the chief's
    lines, failed workers, each group's size and starting step, and the driver's request to stop."""

    def __init__(self):
        self.events: list[tuple[float, str, object]] = []
        self.stop_signal: str | None = None

    def add(self, kind: str, payload):
        self.events.append((time.time(), kind, payload))

    def take(self) -> list:
        events, self.events = self.events, []
        return events

    def training(self, step: int):
        """The chief's group has restored its checkpoint (or found none) and starts training."""
        self.add("training", step)

    def arrived(self):
        """Nothing: a caller that waits for it knows that its calls before it have run (one caller's calls to an
        actor run in order)."""

    def request_stop(self, signal_name: str):
        self.stop_signal = self.stop_signal or signal_name

    def stop_requested(self) -> str | None:
        return self.stop_signal


def failed_workers_callback(journal):
    """A Ray Train callback, run in Ray's controller: tells the Journal which workers failed, and why."""
    from ray.train import UserCallback

    class ReportFailedWorkers(UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            failed = [
                f"worker {rank} {describe_worker_failure(error)}" for rank, error in sorted(worker_exceptions.items())
            ]
            # A lost worker makes the others fail too (they lose contact with it): that is no news.
            lost = [text for text in failed if " was lost " in text]
            journal.add.remote("failed", "; ".join(lost or failed))

    return ReportFailedWorkers()


def describe_worker_failure(error: BaseException) -> str:
    """'was lost (...)' for a worker whose process or node is gone, else 'failed (its error's first line)'."""
    from ray.exceptions import RayActorError

    # Ray Train wraps a dead worker's error in its health-check error (keeping it as health_check_failure).
    failure = getattr(error, "health_check_failure", error)
    if isinstance(failure, RayActorError):
        why = "its node was preempted" if failure.preempted else "its process or its node is gone"
        return f"was lost ({why}: {type(failure).__name__})"
    return f"failed ({first_line(error)})"


# What runs in each Ray worker.


class StopFromDriver(preemption.Stop):
    """A stop fed by the driver's request (through the Journal) instead of a signal: the Loop reads `requested`
    before each step, and every worker stops at the same step. The request is fetched in the background, so a step
    never waits for it."""

    def __init__(self, journal):
        super().__init__()
        self.journal = journal
        self.pending = journal.stop_requested.remote()

    @property
    def requested(self) -> bool:
        import ray

        if self.signal_number is None:
            ready, _ = ray.wait([self.pending], timeout=0)
            if ready:
                name = ray.get(self.pending)
                if name:
                    self.signal_number = signal.Signals[name].value
                else:
                    self.pending = self.journal.stop_requested.remote()
        return self.signal_number is not None

    def install(self):
        pass  # no signal reaches a Ray worker: Ray ends workers by killing them

    def uninstall(self):
        pass

    def stopped(self):
        pass

    # waiting: Stop's, which does nothing: the driver ends workers that do not stop in time (STOP_GRACE_SECONDS).


class LinesToDriver(io.TextIOBase):
    """The chief's stderr: its trainer.task lines go to the driver (through the Journal), everything else to the
    worker's own log file as before."""

    def __init__(self, journal, original, relay: bool):
        self.journal, self.original, self.relay = journal, original, relay
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.original.write(text)
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if self.relay and line.startswith(TASK_PREFIX):
                self.journal.add.remote("line", line[len(TASK_PREFIX) :])
        return len(text)

    def flush(self):
        self.original.flush()


def train_on_worker(settings: dict):
    """Each Ray worker's training function: the chief's outcome ({"exit_code", "message"}) for the driver.

    A lost peer raises (Ray then restarts the group); a refusal, a stop or a fault that a restart would not mend
    is returned, so that Ray ends the job instead of trying again."""
    import ray

    from trainer import train

    journal = settings["journal"]
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    with contextlib.redirect_stderr(LinesToDriver(journal, sys.stderr, relay=rank == 0)):
        try:
            code = train_here(settings, journal, rank, workers)
            return {"exit_code": code}
        except cli.UsageError as error:
            return {"exit_code": cli.USAGE_ERROR_EXIT, "message": str(error)}
        except cli.FaultError as error:
            if isinstance(error.__context__, train.LOST_PEER_ERRORS):
                raise  # Ray restarts the group
            return {"exit_code": error.exit_code, "message": str(error)}
        finally:
            ray.get(journal.arrived.remote())  # every line sent before it has arrived


def train_here(settings: dict, journal, rank: int, workers: int) -> int:
    """trainer.task's steps in this worker, with the TF_CONFIG Ray set."""
    import ray

    from trainer import input_pipeline, train

    config, paths = settings["config"], settings["paths"]
    cluster = distribution.read_tf_config(os.environ.get("TF_CONFIG"))  # None for a group of one
    state = outputs.check_model_dir(paths, config)
    if state == "finished":
        return 0
    journal.add.remote("joined", (rank, workers, f"pid {os.getpid()} on {ray.util.get_node_ip_address()}"))
    builder = input_pipeline.load_builder(settings["data_dir"], config["size"])
    plan = train.plan_run(builder, config)
    strategy = distribution.make_strategy(config, cluster)
    stop = StopFromDriver(journal)
    loop, position = task.build_and_restore(
        argparse.Namespace(tf_data_service=None), config, cluster, paths, builder, plan, strategy, stop, state
    )
    if rank == 0:
        journal.training.remote(position.step if position else 0)
    # The driver holds model_dir for the whole job (trainer.model_dir_lock); the chief writes under its hold.
    return task.train_and_finish(config, cluster, paths, builder, stop, loop, position)


if __name__ == "__main__":
    cli.leave(cli.run_main(PROG, main))
