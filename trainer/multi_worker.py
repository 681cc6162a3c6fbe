"""Training across machines: a custom training loop under MultiWorkerMirroredStrategy, driven by TF_CONFIG.

Every machine runs the same trainer.task command with the same --model_dir (a folder all of them
reach, e.g. gs://...), and its own TF_CONFIG:

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}' \\
        python -m trainer.task --config configs/default.yaml --data_dir DIR --model_dir DIR

Each task's server listens on the port TF_CONFIG gives for it, on every interface, with no authentication:
keep the cluster on a private network. Keras 3's model.fit does not run under this strategy
(keras-team/keras#20585), hence the loop here; the model, optimizer and input pipeline are the
single-machine trainer's. Each worker reads every num_workers-th training example; gradients are
summed across all replicas by the strategy, so every worker ends with the same weights (each logs
a fingerprint of them). The chief ("chief" task, else worker 0) writes what trainer.task writes on one
machine (checkpoints are tf.train checkpoints, not .keras files); the other workers write their
checkpoints and logs into a temporary folder they delete. A worker that dies makes the others stop
with an error within about a minute (the strategy's health check, and a timeout on every
all-reduce); running the same commands again resumes from the chief's last checkpoint.
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

from pipeline import cli

PROG = "trainer.task"


def cluster_size(tf_config: str | None) -> int:
    """How many tasks TF_CONFIG names (0 when unset); a UsageError when it is not a JSON object."""
    if not tf_config:
        return 0
    try:
        cluster = json.loads(tf_config).get("cluster", {})
    except (ValueError, AttributeError):
        raise cli.UsageError("TF_CONFIG is not a JSON object; fix it or unset it") from None
    return sum(len(addresses) for addresses in cluster.values())


def is_chief(task_type: str, task_id: int, jobs: list[str]) -> bool:
    """The chief task, or worker 0 when the cluster has no chief (TensorFlow's own convention)."""
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in jobs)


def weights_fingerprint(weights) -> str:
    """A short hash of the weights' bytes: equal on every worker when they stayed in sync."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def make_strategy(config: dict):
    import tensorflow as tf

    # A timeout on every all-reduce: a peer that hangs (rather than dies, which the strategy's health check
    # notices) stops the job instead of blocking it forever.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=config["collective_timeout_seconds"])
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def run(args, config: dict, paths, state: str) -> int:
    """Trains on this worker as one of the TF_CONFIG cluster; the chief then evaluates and exports."""
    import tensorflow as tf

    try:
        return train(args, config, paths, state)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as error:
        # Not a usage error (exit 2): the job failed, one line says why and what to do.
        print(
            f"{PROG}: error: lost contact with another worker ({type(error).__name__}); start every worker "
            "again with the same command to resume from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        return 1


def train(args, config: dict, paths, state: str) -> int:
    import tensorflow as tf

    from trainer import input_pipeline
    from trainer import model as model_lib

    builder = input_pipeline.load_builder(args.data_dir, config["size"])
    num_train = input_pipeline.split_size(builder, "train")
    batch_size = config["batch_size"]
    steps_per_epoch = config["steps_per_epoch"] or num_train // batch_size
    validation_batches = input_pipeline.split_size(builder, "validation") // batch_size
    validation_steps = min(config["validation_steps"] or validation_batches, validation_batches)
    if validation_steps < 1:
        raise cli.UsageError(f"batch_size {batch_size} is larger than the validation split; lower batch_size")

    # The strategy's constructor waits until every worker in TF_CONFIG has started.
    cli.log(PROG, f"TF_CONFIG names {cluster_size(os.environ.get('TF_CONFIG'))} tasks; waiting for all of them")
    strategy = make_strategy(config)
    resolver = strategy.cluster_resolver
    chief = is_chief(resolver.task_type, resolver.task_id, list(resolver.cluster_spec().jobs))
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise cli.UsageError(f"batch_size {batch_size} does not split evenly over {replicas} replicas")
    me = f"{resolver.task_type} {resolver.task_id}"
    # Non-chief workers must still save (the strategy expects every worker to), but nobody needs their copies.
    scratch = None if chief else tempfile.mkdtemp(prefix=f"trainer_{resolver.task_type}_{resolver.task_id}_")
    if scratch:
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # on errors too
    checkpoints = paths.checkpoints if chief else os.path.join(scratch, "checkpoints")
    logs = paths.logs if chief else os.path.join(scratch, "logs")
    cli.log(
        PROG,
        f"{me} of {cluster_size(os.environ.get('TF_CONFIG'))} tasks ({'chief' if chief else 'not the chief'}), "
        f"{replicas} replicas in all; {state} run in {paths.model_dir}: {config['epochs']} epochs of "
        f"{steps_per_epoch} steps of {batch_size}" + ("" if chief else f"; writing only to {scratch}"),
    )
    if chief:
        tf.io.gfile.makedirs(paths.model_dir)
        if not tf.io.gfile.exists(paths.config):
            with tf.io.gfile.GFile(paths.config, "w") as file:
                file.write(config_dump(config))

    def training_input(input_context):
        return input_pipeline.training_dataset(
            builder,
            config,
            input_context,
            data_service=args.tf_data_service,
            data_service_job=f"moving_line_train_{hashlib.sha1(paths.model_dir.encode()).hexdigest()[:12]}",
        )

    def validation_input(input_context):
        dataset = input_pipeline.evaluation_dataset(
            builder, "validation", config, full_batches_only=True, input_context=input_context, paths=True
        )
        return dataset.take(validation_steps)

    train_batches = iter(strategy.distribute_datasets_from_function(training_input))
    validation = strategy.distribute_datasets_from_function(validation_input)

    import keras

    keras.utils.set_random_seed(config["seed"])
    with strategy.scope():
        model = model_lib.build_training_model(config)
        decay_steps = config["epochs"] * steps_per_epoch if config["cosine_decay"] else None
        optimizer = model_lib.make_optimizer(config["learning_rate"], config["clip_norm"], decay_steps)
        optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, checkpoints, max_to_keep=3)
    # Every worker resumes from the chief's checkpoint, so that they start from the same weights.
    latest = tf.train.latest_checkpoint(paths.checkpoints)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    done_steps = int(optimizer.iterations.numpy())
    first_epoch = done_steps // steps_per_epoch
    if latest:
        cli.log(PROG, f"{me} resumed from {latest}: step {done_steps}, epoch {first_epoch + 1}")

    def sums(paths, labels, training: bool):
        probability_right = model(paths, training=training)
        losses = keras.losses.binary_crossentropy(labels[:, None], probability_right)
        correct = keras.ops.cast((probability_right[:, 0] > 0.5) == (labels > 0.5), "float32")
        return losses, correct

    def train_step(batch):
        paths, labels = batch
        with tf.GradientTape() as tape:
            losses, correct = sums(paths, labels, training=True)
            # Summed over this replica, divided by the global batch: the strategy's sum of gradients is then the mean.
            loss = tf.reduce_sum(losses) / batch_size
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return tf.stack([tf.reduce_sum(losses), tf.reduce_sum(correct), tf.cast(tf.size(labels), tf.float32)])

    def validation_step(batch):
        paths, labels = batch
        losses, correct = sums(paths, labels, training=False)
        return tf.stack([tf.reduce_sum(losses), tf.reduce_sum(correct), tf.cast(tf.size(labels), tf.float32)])

    @tf.function
    def distributed_train_step(batch):
        return strategy.reduce("SUM", strategy.run(train_step, args=(batch,)), axis=None)

    @tf.function
    def distributed_validation_step(batch):
        return strategy.reduce("SUM", strategy.run(validation_step, args=(batch,)), axis=None)

    def summary_writers():
        # Only the chief's logs are kept (in scratch otherwise), so every worker may write them.
        return {name: tf.summary.create_file_writer(os.path.join(logs, name)) for name in ["train", "validation"]}

    writers = summary_writers()
    history_csv = paths.history_csv if chief else os.path.join(scratch, "history.csv")
    start = time.monotonic()
    for epoch in range(first_epoch, config["epochs"]):
        epoch_start = time.monotonic()
        totals = tf.zeros([3])
        steps = steps_per_epoch - (done_steps - epoch * steps_per_epoch if epoch == first_epoch else 0)
        for _ in range(steps):
            totals += distributed_train_step(next(train_batches))
            if config["backup_every_steps"] and int(optimizer.iterations.numpy()) % config["backup_every_steps"] == 0:
                manager.save(checkpoint_number=optimizer.iterations)
        seconds = time.monotonic() - epoch_start
        validation_totals = tf.zeros([3])
        for batch in validation:
            validation_totals += distributed_validation_step(batch)
        loss, correct, count = totals.numpy()
        validation_loss, validation_correct, validation_count = validation_totals.numpy()
        logs_row = {
            "epoch": epoch,
            "accuracy": correct / count,
            "loss": loss / count,
            "val_accuracy": validation_correct / validation_count,
            "val_loss": validation_loss / validation_count,
        }
        manager.save(checkpoint_number=optimizer.iterations)
        append_history(history_csv, logs_row)
        for name, prefix in [("train", ""), ("validation", "val_")]:
            with writers[name].as_default(step=epoch + 1):
                tf.summary.scalar("epoch_loss", logs_row[prefix + "loss"])
                tf.summary.scalar("epoch_accuracy", logs_row[prefix + "accuracy"])
        cli.log(
            PROG,
            f"{me} epoch {epoch + 1}/{config['epochs']}: {steps} steps in {seconds:.1f} s, "
            f"{steps * batch_size / seconds:,.0f} sequences/s over all workers; "
            + ", ".join(f"{name} {value:.4f}" for name, value in logs_row.items() if name != "epoch"),
        )
    for writer in writers.values():
        writer.close()
    cli.log(PROG, f"{me} trained in {time.monotonic() - start:.1f} s")

    weights = model.get_weights()
    cli.log(PROG, f"{me} final weights fingerprint {weights_fingerprint(weights)}")
    if not chief:
        cli.log(PROG, f"{me} done; the chief writes the model")
        return 0
    finish(config, paths, builder, model_lib, weights)
    return 0


def config_dump(config: dict) -> str:
    from trainer import config as config_lib

    return config_lib.dump(config)


def append_history(path: str, row: dict):
    """One epoch's metrics in CSVLogger's layout (0-based epoch), so training_log reads both alike."""
    import io

    import tensorflow as tf

    # Rewritten whole rather than appended to: gs:// files cannot be appended to.
    before = tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else ""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row))
    if not before:
        writer.writeheader()
    writer.writerow(row)
    with tf.io.gfile.GFile(path, "w") as file:
        file.write(before + text.getvalue())


def finish(config: dict, paths, builder, model_lib, weights):
    """The chief's outputs after training, as on one machine: history, test metrics, model.keras, export/."""
    from trainer import export, training_log

    history = training_log.write_history(paths.history_csv, paths.history_json)
    training_log.plot_learning_curves(history, paths.plot)
    # A plain copy of the trained model (no distributed variables) is what gets evaluated and exported.
    trained = model_lib.build_model(config)
    trained.set_weights(weights)
    class_names = builder.info.features["label"].names
    if config["test_after_training"]:
        from trainer.task import evaluate_on_test  # trainer.task imports this module only when it runs

        evaluate_on_test(trained, builder, config, paths)
    export.save_keras(trained, paths.keras)
    export.export_saved_model(trained, paths.export, class_names)
    for name, where in {"SavedModel": paths.export, "checkpoints": paths.checkpoints, "logs": paths.logs}.items():
        cli.log(PROG, f"{name}: {where}")
