"""The training loop: one loop, one train step and one checkpoint format on one device, on a mirror over
the devices of one machine, and across machines (MultiWorkerMirroredStrategy).

Keras 3's model.fit does not run under MultiWorkerMirroredStrategy, and its BackupAndRestore restarts an
interrupted epoch from its first batch with the input stream from its start. This loop resumes exactly:
a checkpoint (trainer.checkpoints) holds the step, the weights and the optimizer's state, and each
epoch's input order is a pure function of (seed, epoch) (trainer.input_pipeline.training_dataset), so
a run stopped at any point and started again ends with the weights of a run never stopped (with
`deterministic: true`).

A train step: the forward and backward pass of each replica, compiled by XLA (with the XLA layers);
the gradients summed over every replica of every worker and clipped by their global norm (so clipping
means the same on 1 or N replicas); Adam's update. On one device XLA compiles the whole step.
SIGTERM or SIGINT (trainer.preemption) stop the loop after the step in progress, with a checkpoint;
across workers every worker stops at the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import secrets
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from pipeline import cli
from trainer import checkpoints, corrupt_data, export, files, input_pipeline, preemption, training_log
from trainer import config as config_lib
from trainer import model as model_lib

# What the workers agree on before each step (a sum over all of them): who was asked to stop, and who
# could not read its data.
STOP_SIGINT, STOP_SIGTERM, READ_FAILED = range(3)
# A first batch not there after this long is said to be awaited (the tf.data service waits for a worker silently).
WAIT_NOTICE_SECONDS = 10
# TensorFlow's errors when another worker is gone or does not answer within collective_timeout_seconds.
LOST_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The run's shape, checked against the dataset before anything is written."""

    epochs: int
    steps_per_epoch: int
    validation_steps: int
    batch_size: int
    num_train: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def plan_run(builder, config: dict) -> Plan:
    """The run's shape; a UsageError when the dataset cannot give it (a batch larger than a split)."""
    num_train = input_pipeline.split_size(builder, "train")
    batch_size = config["batch_size"]
    if num_train < batch_size:
        raise cli.UsageError(f"batch_size {batch_size} is larger than the {num_train} training examples")
    # Each epoch validates on the same first batches of the validation split (all its full batches by default).
    validation_batches = input_pipeline.split_size(builder, "validation") // batch_size
    validation_steps = min(config["validation_steps"] or validation_batches, validation_batches)
    if validation_steps < 1:
        raise cli.UsageError(f"batch_size {batch_size} is larger than the validation split; lower batch_size")
    steps_per_epoch = config["steps_per_epoch"] or num_train // batch_size
    return Plan(config["epochs"], steps_per_epoch, validation_steps, batch_size, num_train)


@dataclasses.dataclass(frozen=True)
class Team:
    """The workers a run trains with: how many, whether this one writes (the chief), the others' addresses."""

    workers: int = 1
    chief: bool = True
    peers: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> address, to say which was lost


@dataclasses.dataclass(frozen=True)
class DataService:
    """A tf.data service that makes the training batches: its dispatcher and the job the workers share."""

    address: str
    job: str


@dataclasses.dataclass
class Outcome:
    position: checkpoints.Position
    weights: list[np.ndarray] | None = None  # None when the run stopped before its end
    stop_signal: int | None = None
    stopped_at: str = ""


@dataclasses.dataclass
class EpochTraining:
    """An epoch's train steps: the step reached, the epoch's sums, steps run and seconds here; stopped: the
    outcome when every worker stopped midway."""

    epoch: int
    step: int
    sums: checkpoints.Sums
    steps_run: int
    seconds: float
    stopped: Outcome | None = None


@dataclasses.dataclass
class EpochValidation:
    sums: checkpoints.Sums
    seconds: float
    stopped: Outcome | None = None


# A digest of a batch is the sum over its examples of a 40-bit hash of each (the order does not count), summed in
# two 20-bit halves: exact in float64 for any batch under 2**33 examples, and summed over replicas and workers.
HASH_BITS = 20


def replica_digest(paths, labels):
    """[sum of the low halves, sum of the high halves, examples] of this replica's examples' hashes."""
    pixels = tf.reshape(tf.cast(paths, tf.int32), [tf.shape(paths)[0], -1])
    text = tf.strings.join(
        [tf.strings.reduce_join(tf.strings.as_string(pixels), axis=1, separator=","), tf.strings.as_string(labels)],
        separator="|",
    )
    hashes = tf.strings.to_hash_bucket_fast(text, 2 ** (2 * HASH_BITS))
    return tf.stack(
        [
            tf.reduce_sum(tf.cast(hashes % 2**HASH_BITS, tf.float64)),
            tf.reduce_sum(tf.cast(hashes // 2**HASH_BITS, tf.float64)),
            tf.cast(tf.size(labels), tf.float64),
        ]
    )


def describe_digest(sums) -> str:
    """'N examples, digest XXXXXXXXXX' from the summed replica_digest of a global batch."""
    low, high, examples = (int(value) for value in sums)
    digest = (high * 2**HASH_BITS + low) % 2 ** (2 * HASH_BITS)
    return f"{examples} examples, digest {digest:010x}"


def weights_fingerprint(weights) -> str:
    """A short hash of the weights' bytes: equal on every worker, and between a run and its resumed twin."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def service_errors_in_one_line(data_service: DataService | None):
    """What the tf.data service refuses (trainer.input_pipeline.data_service_dataset), in one line."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        if data_service is None:
            raise
        message = error.message
        # Static sharding with a dispatcher that takes any worker: TensorFlow names the first worker not listed.
        if "is not in the workers list" in message:
            raise cli.UsageError(
                f"--tf_data_service {data_service.address}: the dispatcher has no fixed list of workers, which the "
                "service needs to make the run's batches in their order: start it with `python -m "
                "trainer.data_service dispatcher --workers HOST:PORT,...` and each worker on its listed port, or "
                "--set deterministic=false to take the batches in whatever order the service makes them"
            ) from None
        for known in (input_pipeline.SERVICE_TOPOLOGY_ERROR, input_pipeline.SERVICE_STEP_ERROR):
            if known in message:
                said = message[message.index(known) :].split("\n")[0].rstrip("] ")
                raise cli.FaultError(f"{said}; run the same command again to resume from the last checkpoint") from None
        raise


class ServiceProbe:
    """input_pipeline.service_workers in a thread of its own: it blocks inside TensorFlow until a service worker
    is up, where this process's signal handlers would not run."""

    def __init__(self, address: str, job_name: str):
        self.outcome = None
        self.thread = threading.Thread(target=self.ask, args=(address, job_name), daemon=True)
        self.thread.start()

    def ask(self, address, job_name):
        try:
            self.outcome = input_pipeline.service_workers(address, job_name), None
        except Exception as error:  # handed to the main thread by result()
            self.outcome = None, error

    def answered(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def result(self) -> tuple[int, int]:
        answer, error = self.outcome
        if error is not None:
            raise error
        return answer


class Loop:
    """One run's model, optimizer, steps, input and outputs (built under the strategy)."""

    def __init__(
        self, config, builder, strategy, plan: Plan, paths, *, team: Team, stop, log, data_service: DataService = None
    ):
        self.config, self.builder, self.strategy, self.plan, self.paths = config, builder, strategy, plan, paths
        self.team, self.stop, self.log, self.data_service = team, stop, log, data_service
        self.replicas = strategy.num_replicas_in_sync
        if plan.batch_size % self.replicas:
            raise cli.UsageError(f"batch_size {plan.batch_size} does not split evenly over {self.replicas} replicas")
        self.xla = config["xla_layers"]
        keras.utils.set_random_seed(config["seed"])
        with strategy.scope():
            self.model = model_lib.build_path_model(
                config["size"], incremental=config["incremental_model"], xla_layers=self.xla
            )
            decay_steps = plan.total_steps if config["cosine_decay"] else None
            # Clipping is the step's (after the sum over replicas), not the optimizer's (before it).
            self.optimizer = model_lib.make_optimizer(config["learning_rate"], None, decay_steps)
            self.optimizer.build(self.model.trainable_variables)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
        self.dataset = input_pipeline.describe_dataset(builder)  # what the checkpoints record
        self.saved: checkpoints.Position | None = None
        self.first_step_logged = self.batch_logged = False
        self.step = 0
        self.fetched: set[int] = set()  # the iterators a first batch was taken from
        self._build_steps()

    @property
    def chief(self) -> bool:
        return self.team.chief

    @property
    def workers(self) -> int:
        return self.team.workers

    @property
    def topology(self) -> dict:
        """Where the run trains, as its checkpoints record it: a resume elsewhere says so."""
        return {"workers": self.workers, "replicas": self.replicas}

    # The steps.

    def _build_steps(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        batch_size, replicas, clip_norm = self.plan.batch_size, self.replicas, self.config["clip_norm"]

        def sums(probability_right, labels, losses):
            correct = tf.cast((probability_right[:, 0] > 0.5) == (labels > 0.5), tf.float32)
            return tf.stack([tf.reduce_sum(losses), tf.reduce_sum(correct), tf.cast(tf.size(labels), tf.float32)])

        def forward_backward(paths, labels):
            with tf.GradientTape() as tape:
                probability_right = model(paths, training=True)
                losses = keras.losses.binary_crossentropy(labels[:, None], probability_right)
                # Summed here, divided by the global batch: the sum over replicas is then the global mean.
                loss = tf.reduce_sum(losses) / batch_size
            return tape.gradient(loss, model.trainable_variables), sums(probability_right, labels, losses)

        def forward(paths, labels):
            probability_right = model(paths, training=False)
            return sums(probability_right, labels, keras.losses.binary_crossentropy(labels[:, None], probability_right))

        # XLA compiles what each replica computes alone; the sum over replicas stays outside, where
        # tf.distribute does it (XLA compiles cross-replica sums only as NCCL collectives). No autograph:
        # the steps hold no Python control flow to convert, and its converted code is left in temporary files.
        forward_backward = tf.function(forward_backward, jit_compile=self.xla, autograph=False)
        forward = tf.function(forward, jit_compile=self.xla, autograph=False)

        def replica_step(paths, labels):
            gradients, step_sums = forward_backward(paths, labels)
            if clip_norm is not None:
                context = tf.distribute.get_replica_context()
                gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
                gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
                # The optimizer sums over replicas again: hand it 1/N of the clipped sum (exact for N a power of 2).
                gradients = [gradient / replicas for gradient in gradients] if replicas > 1 else gradients
            optimizer.apply(gradients, model.trainable_variables)
            return step_sums

        # On one device the whole step, Adam's update included, is one XLA program, as model.fit compiles it.
        @tf.function(autograph=False, jit_compile=self.xla and replicas == 1)
        def train_step(batch):
            return strategy.reduce("SUM", strategy.run(replica_step, args=batch), axis=None)

        def replica_validation_step(paths, labels):
            # Called from a Python function: a compiled function handed to strategy.run itself is placed on the
            # first replica's device for every replica.
            return forward(paths, labels)

        @tf.function(autograph=False)
        def validation_step(batch):
            return strategy.reduce("SUM", strategy.run(replica_validation_step, args=batch), axis=None)

        @tf.function(autograph=False)
        def agree(status):
            return strategy.reduce("SUM", strategy.run(tf.identity, args=(status,)), axis=None)

        @tf.function(autograph=False)
        def batch_digest(batch):
            return strategy.reduce("SUM", strategy.run(replica_digest, args=batch), axis=None)

        self.train_step, self.validation_step, self._agree = train_step, validation_step, agree
        self.batch_digest = batch_digest

    def agree(self, status: np.ndarray) -> np.ndarray:
        """The sum of every worker's status: all see the same, so all stop at the same step. One worker: its own."""
        if self.workers == 1:
            return status
        # Each local replica adds this worker's status: send 1/(local replicas) of it.
        local_replicas = self.replicas // self.workers
        return self._agree(tf.constant(np.asarray(status, np.float64) / local_replicas)).numpy()

    def next_batch(self, iterator):
        """(batch, status): the batch, or None with the reason every worker agreed to stop on."""
        status, batch, error = np.zeros(3), None, None
        if self.stop.requested:
            status[STOP_SIGTERM if self.stop.name() == "SIGTERM" else STOP_SIGINT] = 1
        else:
            try:
                batch = self.fetch(iterator)
            except corrupt_data.READ_ERRORS as caught:
                if self.workers == 1:
                    raise
                status[READ_FAILED], error = 1, caught
        agreed = self.agree(status)
        if agreed[READ_FAILED]:
            raise error if error is not None else corrupt_data.PeerReadError()
        return (batch, None) if not agreed.any() else (None, agreed)

    def fetch(self, iterator):
        """next(iterator). A first batch long in coming is said (the tf.data service waits, silently, for a worker to
        join its dispatcher), and a stop signal meanwhile ends the wait (trainer.preemption names it): at once while
        this run has taken no step (there is nothing to save), else after the grace period."""
        if id(iterator) in self.fetched:
            return next(iterator)
        self.fetched.add(id(iterator))
        source = f"the tf.data service at {self.data_service.address}" if self.data_service else "the input pipeline"
        what = f"the first batch from {source}"
        said = "; a tf.data service sends none until a worker joins its dispatcher" if self.data_service else ""
        notice = threading.Timer(WAIT_NOTICE_SECONDS, self.log, [f"still waiting for {what}{said}"])
        notice.daemon = True
        notice.start()
        try:
            with self.stop.waiting(what, at_once=not self.first_step_logged):
                return next(iterator)
        finally:
            notice.cancel()

    def take_step(self, iterator) -> tuple[checkpoints.Sums | None, np.ndarray | None]:
        """One train step on the next batch: its sums, or (None, why every worker stops)."""
        batch, agreed = self.next_batch(iterator)
        if batch is None:
            return None, agreed
        if not self.batch_logged:
            # What the run starts from, comparable across topologies and between a run and its resumed twin.
            self.batch_logged = True
            self.log(f"step {self.step}'s global batch: {describe_digest(self.batch_digest(batch).numpy())}")
        return checkpoints.Sums.of(self.train_step(batch).numpy()), None

    def stop_signal(self, agreed) -> int:
        return signal.SIGTERM if agreed[STOP_SIGTERM] else signal.SIGINT

    # The run.

    def run(self, position: checkpoints.Position) -> Outcome:
        """Trains from position to the end of the plan, epoch by epoch: training, validation, the epoch's end."""
        if self.workers > 1:
            self.check_same_start(position.step)
        self.started, self.step = time.monotonic(), position.step
        train_batches, validation_batches = self.inputs(position.step)
        if self.chief:
            # It binds the model_dir only once a checkpoint exists (trainer.outputs.check_model_dir).
            files.write_atomically(self.paths.config, config_lib.dump(self.config))
        scalars = training_log.Scalars(self.paths.logs) if self.chief else None
        line = training_log.ProgressLine("trainer.task", self.config["verbose"])
        try:
            with service_errors_in_one_line(self.data_service):
                while position.epochs_done < self.plan.epochs:
                    trained = self.train_epoch(train_batches, position, line, scalars)
                    if trained.stopped:
                        return trained.stopped
                    validated = self.validate(validation_batches, trained)
                    if validated.stopped:
                        return validated.stopped
                    self.end_epoch(trained, validated, scalars, line)
                    position = checkpoints.Position(trained.step, trained.epoch + 1)
                    self.save(position)
        except LOST_PEER_ERRORS as error:
            if self.workers == 1:
                raise
            raise cli.FaultError(
                f"lost contact with {self.lost_peers()} ({type(error).__name__}) at step {self.step}; start every "
                "worker again with the same command to resume from the last checkpoint"
            ) from None
        finally:
            if scalars:
                scalars.close()
        self.stop.stopped()
        return Outcome(position, weights=self.model.get_weights())

    def inputs(self, start_step: int):
        """The distributed training stream from start_step on (from the tf.data service when given), and the
        validation stream."""
        config, plan, builder = self.config, self.plan, self.builder
        schedule = {"steps_per_epoch": plan.steps_per_epoch, "epochs": plan.epochs, "start_step": start_step}
        job, service_workers = None, None
        if self.data_service:
            with service_errors_in_one_line(self.data_service):
                service_workers = self.wait_for_service_workers() if config["deterministic"] else None
                job = self.service_job(start_step)

        def training_input(context):
            if self.data_service:
                address = self.data_service.address
                return input_pipeline.data_service_dataset(builder, config, address, job, **schedule,
                                                           service_workers=service_workers or 1,
                                                           input_context=context)  # fmt: skip
            return input_pipeline.training_dataset(builder, config, **schedule, input_context=context, log=self.log)

        def validation_input(context):
            return input_pipeline.validation_dataset(builder, config, plan.validation_steps, context)

        distribute = self.strategy.distribute_datasets_from_function
        with service_errors_in_one_line(self.data_service):
            return iter(distribute(training_input)), iter(distribute(validation_input))

    def wait_for_service_workers(self) -> int:
        """How many workers the tf.data service's dispatcher lists, once every one is up (a piece of each step comes
        from each, and one that joins late would start out of step); a UsageError when they cannot share the run's
        input streams. It says what it waits for, and SIGTERM or Ctrl-C end the wait with one line."""
        address, said, probes = self.data_service.address, None, itertools.count()
        while True:
            probe = ServiceProbe(address, f"{self.data_service.job}_probe_{os.getpid()}_{next(probes)}")
            while not probe.answered(timeout=0.5):
                self.stop_if_asked("waiting for the tf.data service's workers")
                if said is None:
                    said = "none up"
                    self.log(f"waiting for the tf.data service at {address} to have a worker up")
            listed, up = probe.result()
            if up == listed:
                break
            if said != (listed, up):
                said = (listed, up)
                self.log(f"waiting for the tf.data service's workers: {up} of the {listed} its dispatcher lists are up")
            for _ in range(4):
                self.stop_if_asked("waiting for the tf.data service's workers")
                time.sleep(0.5)
        config, pipelines = self.config, self.workers
        config_lib.check_input_pipelines(config["input_streams"], listed, "tf.data service workers")
        if config["batch_size"] // listed % pipelines:
            raise cli.UsageError(
                f"the {listed} tf.data service workers cannot split their records of a step (batch_size "
                f"{config['batch_size']} / {listed}) evenly over {pipelines} trainers: change the number of service "
                "workers or the batch_size"
            )
        self.log(f"the tf.data service's {listed} worker{'s' * (listed != 1)} are up")
        return listed

    def stop_if_asked(self, doing: str):
        """Ends the command in one line when SIGTERM or Ctrl-C came before training began (nothing to save)."""
        if self.stop.requested:
            self.stop.stopped()
            raise cli.FaultError(f"stopped by {self.stop.name()} while {doing}, before training; run the same "
                                 "command again to go on", exit_code=self.stop.exit_code)  # fmt: skip

    def service_job(self, start_step: int) -> str:
        """A tf.data service job of its own for this start (a job's stream cannot be started again), the same
        on every worker: the run's job name, the step and the chief's random number."""
        number = self.agree(np.array([secrets.randbelow(2**31) if self.chief else 0, 0, 0]))[0]
        return f"{self.data_service.job}_step{start_step}_{int(number):x}"

    def train_epoch(self, batches, position: checkpoints.Position, line, scalars) -> EpochTraining:
        """The train steps of epoch position.epochs_done, from position (its start, or where a resumed run stood)."""
        plan, epoch = self.plan, position.epochs_done
        epoch_end = (epoch + 1) * plan.steps_per_epoch
        step, sums = position.step, position.epoch_sums
        began, steps_run, interval = time.monotonic(), 0, (time.monotonic(), step)
        while step < epoch_end:
            step_sums, agreed = self.take_step(batches)
            if step_sums is None:
                line.clear()
                stopped = self.save_stopped(step, epoch, sums, agreed, "training")
                return EpochTraining(epoch, step, sums, steps_run, time.monotonic() - began, stopped)
            if not self.first_step_logged:
                self.first_step_logged = True
                seconds = time.monotonic() - self.started
                self.log(f"first step of this run after {seconds:.1f} s (input position, compilation)")
            step, steps_run, sums = step + 1, steps_run + 1, sums + step_sums
            self.step = step
            into_epoch = step - epoch * plan.steps_per_epoch
            line.update(epoch + 1, plan.epochs, into_epoch, plan.steps_per_epoch, sums.metrics())
            if scalars and step % self.scalar_every == 0:
                seconds = time.monotonic() - interval[0]
                throughput = (step - interval[1]) * plan.batch_size / max(seconds, 1e-9)
                metrics = {**step_sums.metrics(), "learning_rate": self.learning_rate(), "throughput": throughput}
                scalars.step(step, metrics)
                interval = (time.monotonic(), step)
            every = self.config["checkpoint_every_steps"]
            if every and step % every == 0 and step < epoch_end:
                self.save(checkpoints.Position(step, epoch, sums))
        return EpochTraining(epoch, step, sums, steps_run, time.monotonic() - began)

    def validate(self, batches, trained: EpochTraining) -> EpochValidation:
        """The epoch's validation steps (the same first batches of the validation split every epoch)."""
        began, sums = time.monotonic(), checkpoints.Sums()
        for _ in range(self.plan.validation_steps):
            batch, agreed = self.next_batch(batches)
            if batch is None:
                stopped = self.save_stopped(trained.step, trained.epoch, trained.sums, agreed, "validation")
                return EpochValidation(sums, 0.0, stopped)
            sums = sums + checkpoints.Sums.of(self.validation_step(batch).numpy())
        return EpochValidation(sums, time.monotonic() - began)

    def lost_peers(self) -> str:
        """Which workers no longer answer at their TF_CONFIG address (a killed worker's server is gone)."""
        gone = [f"{name} ({address})" for name, address in self.team.peers.items() if not preemption.listening(address)]
        return ", ".join(gone) if gone else "another worker (every one still answers: one may hang)"

    @property
    def scalar_every(self) -> int:
        return max(1, min(50, self.plan.steps_per_epoch))

    def learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def check_same_start(self, step: int):
        """Every worker must resume from the same checkpoint (the chief's, in the one model_dir they share)."""
        total = self.agree(np.array([step, step * step, 0.0]))
        # Equal sums of the steps and of their squares: every worker has the same step.
        if total[0] != self.workers * step or total[1] != self.workers * step * step:
            raise cli.FaultError(
                "the workers resumed from different checkpoints: --model_dir (and AIP_CHECKPOINT_DIR) must be one "
                "folder that every worker reaches, such as gs://BUCKET/model"
            )

    def end_epoch(self, trained: EpochTraining, validated: EpochValidation, scalars, line):
        """The epoch's line; on the chief its history row, TensorBoard scalars and model.keras."""
        epoch = trained.epoch
        train, validation = trained.sums.metrics(), validated.sums.metrics()
        learning_rate = self.learning_rate()
        steps_run, seconds = trained.steps_run, trained.seconds
        throughput = steps_run * self.plan.batch_size / seconds if steps_run else 0.0
        line.line(
            f"epoch {epoch + 1}/{self.plan.epochs}: {training_log.count(steps_run, 'step')} in {seconds:.1f} s, "
            f"{throughput:,.0f} sequences/s, then {validated.seconds:.1f} s validating; "
            + training_log.describe_metrics(
                {
                    **train,
                    **{f"val_{name}": value for name, value in validation.items()},
                    "learning_rate": learning_rate,
                }
            )
        )
        if not self.chief:
            return
        training_log.append_history(
            self.paths.history_csv,
            {
                "epoch": epoch,
                "accuracy": train["accuracy"],
                "learning_rate": learning_rate,
                "loss": train["loss"],
                "val_accuracy": validation["accuracy"],
                "val_loss": validation["loss"],
            },
        )
        extra = {"learning_rate": learning_rate} | ({"throughput": throughput} if steps_run else {})
        scalars.epoch(epoch + 1, {**train, **extra}, validation)
        tf.io.gfile.makedirs(self.paths.checkpoints)
        export.save_keras(self.plain_model(), self.paths.epoch_keras(epoch + 1))

    def plain_model(self) -> keras.Model:
        """The CNN-LSTM taking `video`, with the trained weights (no distributed variables)."""
        model = model_lib.build_model(self.config["size"])
        model.set_weights(self.model.get_weights())
        return model

    def save(self, position: checkpoints.Position):
        if position.step == 0 and position.epochs_done == 0 or position == self.saved:
            return  # nothing learnt yet, or saved already
        self.saved = position
        if not self.chief:
            # One checkpoint for all, the chief's: every worker holds the same state at the same step.
            self.stop.resume_hint = f"the chief saves the checkpoint of step {position.step}"
            return
        folder = checkpoints.save(
            self.checkpoint,
            self.paths.checkpoints,
            position,
            self.config,
            self.dataset,
            self.config["keep_checkpoints"],
            self.topology,
        )
        self.stop.resume_hint = f"the last checkpoint is {folder} (step {position.step})"

    def save_stopped(self, step, epoch, epoch_sums: checkpoints.Sums, agreed, where) -> Outcome:
        position = checkpoints.Position(step, epoch, epoch_sums)
        self.save(position)
        self.stop.stopped()
        return Outcome(
            position, stop_signal=self.stop_signal(agreed), stopped_at=f"step {step} ({where} of epoch {epoch + 1})"
        )
