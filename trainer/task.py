"""Train the CNN-LSTM on moving_line videos, evaluate it and export it.

    python -m trainer.task --config configs/default.yaml [--set key=value ...] --data_dir DIR --model_dir DIR

The AI Platform / Vertex AI convention: --model_dir defaults to AIP_MODEL_DIR; checkpoints go
to AIP_CHECKPOINT_DIR and TensorBoard logs to AIP_TENSORBOARD_LOG_DIR when those are set.
TF_CONFIG naming more than one task trains across those machines instead: trainer.multi_worker
(Keras 3's model.fit does not run under MultiWorkerMirroredStrategy, keras-team/keras#20585).
--tf_data_service grpc://HOST:PORT has a tf.data service (python -m trainer.data_service) make
the training batches.

MODEL_DIR gets config.yaml (the resolved config), checkpoints/ (one .keras per epoch and
BackupAndRestore's backup/), logs/ (TensorBoard), history.csv, history.json,
learning_curves.png, metrics.json (the test split), model.keras and export/ (the SavedModel).
Running the same command again resumes an interrupted run from its last backup and does
nothing once the run has finished; a MODEL_DIR holding a run with a different config is refused.
"""

from __future__ import annotations

import dataclasses
import os
import time

from pipeline import cli
from trainer import config as config_lib

PROG = "trainer.task"
EVALUATION_BATCH = 128
SKIP_HINT = "--set skip_corrupt_records=true"


@dataclasses.dataclass(frozen=True)
class Paths:
    model_dir: str
    checkpoints: str
    logs: str

    @property
    def config(self):
        return os.path.join(self.model_dir, "config.yaml")

    @property
    def export(self):
        return os.path.join(self.model_dir, "export")

    @property
    def keras(self):
        return os.path.join(self.model_dir, "model.keras")

    @property
    def backup(self):
        return os.path.join(self.checkpoints, "backup")

    @property
    def history_csv(self):
        return os.path.join(self.model_dir, "history.csv")

    @property
    def history_json(self):
        return os.path.join(self.model_dir, "history.json")

    @property
    def plot(self):
        return os.path.join(self.model_dir, "learning_curves.png")


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="A flat YAML config, e.g. configs/default.yaml.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a config key.")
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir holding moving_line/size_S.")
    parser.add_argument("--model_dir", default=os.environ.get("AIP_MODEL_DIR"), help="Where the run writes.")
    parser.add_argument(
        "--tf_data_service", metavar="grpc://HOST:PORT", help="A tf.data service dispatcher that makes the batches."
    )
    args = parser.parse_args(argv)
    if not args.model_dir:
        raise cli.UsageError("--model_dir is required (or set AIP_MODEL_DIR)")
    return args


def output_paths(model_dir: str) -> Paths:
    return Paths(
        model_dir=model_dir,
        checkpoints=os.environ.get("AIP_CHECKPOINT_DIR") or os.path.join(model_dir, "checkpoints"),
        logs=os.environ.get("AIP_TENSORBOARD_LOG_DIR") or os.path.join(model_dir, "logs"),
    )


def gfile():
    """tf.io.gfile, which reads gs:// paths too."""
    import tensorflow as tf

    return tf.io.gfile


def check_model_dir(paths: Paths, config: dict) -> str:
    """'new', 'resume' or 'finished'; a UsageError if MODEL_DIR holds something else."""
    # Local folders are checked without TensorFlow, so that a refusal is quick and prints one line.
    files = gfile() if "://" in paths.model_dir else LocalFiles
    if files.exists(paths.model_dir) and not files.isdir(paths.model_dir):
        raise cli.UsageError(f"--model_dir {paths.model_dir} is a file; give a folder")
    if not files.exists(paths.model_dir) or not files.listdir(paths.model_dir):
        return "new"
    if not files.exists(paths.config):
        raise cli.UsageError(
            f"--model_dir {paths.model_dir} is not empty and holds no trainer run (no config.yaml); "
            "give an empty or new folder"
        )
    with files.GFile(paths.config) as file:
        previous = config_lib.load_text(file.read(), paths.config)
    changed = config_lib.differences(previous, config)
    if changed:
        raise cli.UsageError(
            f"--model_dir {paths.model_dir} holds a run with another config ({'; '.join(changed)}); "
            "use a new --model_dir, or the same config to resume that run"
        )
    return "finished" if files.exists(os.path.join(paths.export, "saved_model.pb")) else "resume"


class LocalFiles:
    """The part of tf.io.gfile that check_model_dir uses, for local paths, without importing TensorFlow."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)

    @staticmethod
    def GFile(path):  # noqa: N802 - tf.io.gfile's name
        return open(path, encoding="utf-8")


def split_cpu(logical_devices: int):
    """Splits the CPU into logical devices (so a CPU-only machine can mirror); before TF initialises."""
    import tensorflow as tf

    if logical_devices < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_devices)


def make_strategy(devices: list[str] | None):
    """MirroredStrategy over the given devices, or every GPU, or the CPU when there is no GPU."""
    import tensorflow as tf

    visible = [device.name for device in tf.config.list_logical_devices()]
    if devices is None:
        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
        devices = gpus or ["/cpu:0"]
    canonical = {tf.DeviceSpec.from_string(name).to_string().lower(): name for name in visible}
    for device in devices:
        spec = tf.DeviceSpec.from_string(device)
        full = tf.DeviceSpec(device_type=spec.device_type, device_index=spec.device_index)
        matches = [name for key, name in canonical.items() if key.endswith(full.to_string().lower())]
        if not matches:
            raise cli.UsageError(f"devices: {device} is not a visible device; visible: {', '.join(visible)}")
    # NCCL refuses two replicas on one physical GPU (logical GPUs split from it): sum on one device then.
    gpus = [device for device in devices if tf.DeviceSpec.from_string(device).device_type == "GPU"]
    shared_gpu = len(gpus) > len(tf.config.list_physical_devices("GPU"))
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice() if shared_gpu else None
    )


def callbacks(paths: Paths, config: dict, steps_per_epoch: int):
    import importlib.util

    import keras

    from trainer import training_log

    chosen = [
        training_log.AtomicBackupAndRestore(paths.backup, save_freq=config["backup_every_steps"] or "epoch"),
        keras.callbacks.ModelCheckpoint(os.path.join(paths.checkpoints, "epoch_{epoch:03d}.keras")),
        keras.callbacks.CSVLogger(paths.history_csv, append=True),
        # Given before the throughput line, the progress bar finishes its line first.
        keras.callbacks.ProgbarLogger(),
        training_log.ThroughputLog(PROG, config["batch_size"]),
    ]
    # tf.summary needs the tensorboard package, which tensorflow does not install.
    if importlib.util.find_spec("tensorboard") is None:
        cli.log(PROG, "no TensorBoard logs: the tensorboard package is not installed (pip install tensorboard)")
    else:
        chosen.append(keras.callbacks.TensorBoard(paths.logs, update_freq=max(1, min(50, steps_per_epoch))))
    return chosen


def main(argv=None):
    args = parse_args(argv)

    # Config: everything checked before TensorFlow starts.
    config = config_lib.load(args.config, args.set)
    from trainer import multi_worker

    tasks = multi_worker.cluster_size(os.environ.get("TF_CONFIG"))
    if args.tf_data_service:
        from trainer import data_service

        data_service.check_dispatcher(args.tf_data_service)
    paths = output_paths(args.model_dir)
    state = check_model_dir(paths, config)
    if state == "finished":
        cli.log(PROG, f"{paths.model_dir} already holds this run, trained and exported; nothing to do")
        return 0
    cli.quiet_tensorflow()
    import tensorflow as tf

    if tasks > 1:
        return multi_worker.run(args, config, paths, state)

    split_cpu(config["logical_cpu_devices"])

    # Data: read before anything is written, so a wrong data_dir leaves model_dir untouched.
    from trainer import corrupt_data, input_pipeline

    builder = input_pipeline.load_builder(args.data_dir, config["size"])
    num_train = input_pipeline.split_size(builder, "train")
    batch_size = config["batch_size"]
    if num_train < batch_size:
        raise cli.UsageError(f"batch_size {batch_size} is larger than the {num_train} training examples")
    steps_per_epoch = config["steps_per_epoch"] or num_train // batch_size
    # Each epoch validates on the same first batches of the validation split (all its full batches by default).
    validation_batches = input_pipeline.split_size(builder, "validation") // batch_size
    validation_steps = min(config["validation_steps"] or validation_batches, validation_batches)
    if validation_steps < 1:
        raise cli.UsageError(f"batch_size {batch_size} is larger than the validation split; lower batch_size")
    strategy = make_strategy(config["devices"])
    train = input_pipeline.training_dataset(builder, config, data_service=args.tf_data_service)
    if args.tf_data_service:
        cli.log(PROG, f"training batches come from the tf.data service at {args.tf_data_service}")
    if config["skip_corrupt_records"]:
        skipped = {split: corrupt_data.log_skipped(PROG, builder, split) for split in ("train", "validation")}
        readable_batches = (input_pipeline.split_size(builder, "validation") - skipped["validation"]) // batch_size
        validation_steps = max(1, min(validation_steps, readable_batches))
    validation = input_pipeline.evaluation_dataset(builder, "validation", config, full_batches_only=True, paths=True)
    # Stated, not only taken: Keras 3.15 miscounts its metrics over a dataset of unknown length (seen:
    # val_accuracy 0.65 where every batch scored 0.97).
    validation = validation.take(validation_steps).apply(tf.data.experimental.assert_cardinality(validation_steps))
    cli.log(
        PROG,
        f"{state} run in {paths.model_dir}: {builder.data_dir} ({num_train:,} training examples), "
        f"{config['epochs']} epochs of {steps_per_epoch} steps of {batch_size} "
        f"over {strategy.num_replicas_in_sync} replicas {list(strategy.extended.worker_devices)}",
    )
    try:
        tf.io.gfile.makedirs(paths.model_dir)
    except tf.errors.OpError as error:
        raise cli.UsageError(
            f"--model_dir {paths.model_dir} cannot be created ({error.message}); give a writable folder"
        ) from None
    if state == "new":
        with tf.io.gfile.GFile(paths.config, "w") as file:
            file.write(config_lib.dump(config))

    # Model: built and compiled under the strategy, so its variables are mirrored.
    from trainer import model as model_lib

    keras_seed(config["seed"])
    xla_layers = model_lib.xla_layers_for(strategy, config["xla_layers"])
    with strategy.scope():
        model = model_lib.build_training_model(config, xla_layers=xla_layers)
        decay_steps = config["epochs"] * steps_per_epoch if config["cosine_decay"] else None
        model = model_lib.compile_model(
            model,
            config["learning_rate"],
            config["clip_norm"],
            jit_compile=xla_layers,
            cosine_decay_steps=decay_steps,
        )
    model.get_layer("cnn_lstm").summary(print_fn=lambda line, **_: cli.log(PROG, line))
    cli.log(PROG, "fed each video's path, which RenderVideo draws into its frames on the training device")
    if xla_layers:
        cli.log(
            PROG,
            "one device: training with XlaConv2D, XlaMaxPooling2D and XLA's LSTM under XLA "
            "(off: --set xla_layers=false)",
        )

    # Train.
    start = time.monotonic()
    with corrupt_data.named_in_errors(builder, ("train", "validation"), SKIP_HINT):
        model.fit(
            train,
            epochs=config["epochs"],
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            callbacks=callbacks(paths, config, steps_per_epoch),
            verbose=config["verbose"],
            shuffle=False,  # the input pipeline shuffles
        )
    cli.log(PROG, f"trained in {time.monotonic() - start:.1f} s")
    from trainer import training_log

    history = training_log.write_history(paths.history_csv, paths.history_json)
    training_log.plot_learning_curves(history, paths.plot)

    # A plain copy of the trained model (no mirrored variables) is what gets evaluated and exported.
    trained = model_lib.build_model(config)
    trained.set_weights(model.get_weights())
    class_names = builder.info.features["label"].names

    # Evaluate on the test split.
    if config["test_after_training"]:
        evaluate_on_test(trained, builder, config, paths)

    # Export.
    from trainer import evaluate, export

    export.save_keras(trained, paths.keras)
    export.export_saved_model(trained, paths.export, class_names)
    written = {
        "SavedModel": paths.export,
        "Keras model": paths.keras,
        "checkpoints": paths.checkpoints,
        "TensorBoard logs": paths.logs,
        "history": f"{paths.history_csv}, {paths.history_json}",
        "learning curves": paths.plot,
    }
    if config["test_after_training"]:
        written["test metrics"] = evaluate.metrics_path(paths.model_dir, "test")
    for name, where in written.items():
        cli.log(PROG, f"{name}: {where}")
    return 0


def evaluate_on_test(trained, builder, config: dict, paths: Paths):
    """Loss, accuracy and confusion matrix of the trained model on the test split: logged, and in metrics.json."""
    from trainer import corrupt_data, evaluate, input_pipeline
    from trainer import model as model_lib

    with corrupt_data.named_in_errors(builder, ["test"], SKIP_HINT):
        metrics = evaluate.evaluate(
            model_lib.prediction_function(trained),
            input_pipeline.evaluation_dataset(builder, "test", {**config, "batch_size": EVALUATION_BATCH}),
            builder.info.features["label"].names,
        )
    if config["skip_corrupt_records"]:
        metrics["skipped_records"] = corrupt_data.log_skipped(PROG, builder, "test", metrics["examples"])
    metrics = {"split": "test", "model": paths.keras, "data": builder.data_dir, **metrics}
    for line in evaluate.describe(metrics):
        cli.log(PROG, line)
    evaluate.write_metrics(metrics, evaluate.metrics_path(paths.model_dir, "test"))


def keras_seed(seed: int):
    """Seeds weight initialisation (the input order has its own seed in the input pipeline)."""
    import keras

    keras.utils.set_random_seed(seed)


if __name__ == "__main__":
    raise SystemExit(cli.run_main(PROG, main))
