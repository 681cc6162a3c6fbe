"""Train the CNN-LSTM on moving_line videos, evaluate it and export it.

    python -m trainer.task --config configs/default.yaml [--set key=value ...] --data_dir DIR --model_dir DIR

One device, a mirror over several devices (`devices`, `logical_cpu_devices`) or several machines
(TF_CONFIG naming more than one task): the same loop (trainer.train) in every case. The AI Platform /
Vertex AI convention: --model_dir defaults to AIP_MODEL_DIR; checkpoints go to AIP_CHECKPOINT_DIR and
TensorBoard logs to AIP_TENSORBOARD_LOG_DIR when those are set. --tf_data_service grpc://HOST:PORT has a
tf.data service (python -m trainer.data_service) make the training batches.

Running the same command again resumes a stopped or killed run exactly where its last checkpoint
stands and does nothing once the run has finished; a MODEL_DIR holding a run with a different config,
or checkpoints of another dataset, is refused, and so is a MODEL_DIR another live run holds (one writer
per MODEL_DIR: trainer.model_dir_lock). SIGTERM or Ctrl-C: the step in progress finishes, a checkpoint
is saved, and the command exits with 143 or 130 (see trainer.preemption).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time

from pipeline import cli
from trainer import config as config_lib
from trainer import distribution, export, model_dir_lock, outputs, preemption

PROG = "trainer.task"
SKIP_HINT = "--set skip_corrupt_records=true"


def add_run_flags(parser, data_dir_help: str = "TFDS data_dir holding moving_line/size_S."):
    """The flags that name a run: --config, --set, --data_dir, --model_dir (trainer.ray_job takes them too)."""
    parser.add_argument("--config", required=True, help="A flat YAML config, e.g. configs/default.yaml.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a config key.")
    parser.add_argument("--data_dir", required=True, help=data_dir_help)
    parser.add_argument("--model_dir", default=os.environ.get("AIP_MODEL_DIR"), help="Where the run writes.")


def check_run_flags(args):
    if not args.model_dir:
        raise cli.UsageError("--model_dir is required (or set AIP_MODEL_DIR)")


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_run_flags(parser)
    parser.add_argument(
        "--tf_data_service", metavar="grpc://HOST:PORT", help="A tf.data service dispatcher that makes the batches."
    )
    args = parser.parse_args(argv)
    check_run_flags(args)
    return args


def log(message: str):
    cli.log(PROG, message)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)

    # Config, cluster and model_dir: checked before TensorFlow starts.
    config = config_lib.load(args.config, args.set)
    cluster = distribution.read_tf_config(os.environ.get("TF_CONFIG"))
    if cluster is not None and (config["devices"] is not None or config["logical_cpu_devices"]):
        raise cli.UsageError(
            "devices and logical_cpu_devices choose devices on one machine; with TF_CONFIG "
            "every worker trains on all its GPUs (or its CPU): unset them"
        )
    # The training order is defined over input_streams: the batch and the workers must share them evenly.
    config_lib.check_input_streams(config["input_streams"], config["batch_size"])
    config_lib.check_input_pipelines(config["input_streams"], cluster.size if cluster else 1, "workers")
    if args.tf_data_service:
        from trainer import data_service

        data_service.check_dispatcher(args.tf_data_service)
    paths = outputs.output_paths(args.model_dir)
    for flag, path in (("--data_dir", args.data_dir), ("--model_dir", paths.model_dir),
                       ("AIP_CHECKPOINT_DIR", os.environ.get("AIP_CHECKPOINT_DIR"))):  # fmt: skip
        cli.check_reachable(path, flag)
    if cluster is None or cluster.is_chief:
        # A live run's hold first: what the folder holds is that run's, still changing.
        model_dir_lock.refuse_if_held(paths.model_dir)
    state = outputs.check_model_dir(paths, config)
    if state == "finished":
        log(f"{paths.model_dir} already holds this run, trained and exported; nothing to do")
        return 0
    if cluster is None or cluster.is_chief:
        # The run ends by writing MODEL_DIR/export: anything there that no export of this run wrote is refused now.
        problem = export.replace_problem(paths.export, paths.model_dir)
        if problem:
            raise cli.UsageError(
                f"{problem}; the run ends by writing its SavedModel there: move those files away, or give another "
                "--model_dir"
            )
    if preemption.supervised():
        preemption.end_with_supervisor()
    if cluster is not None and not preemption.supervised():
        # The strategy waits for every worker inside TensorFlow, deaf to signals: train in a child we can end.
        return preemption.supervise(PROG, argv, config["peer_wait_seconds"], cluster.peers(), cluster.describe())
    stop = preemption.StopRequest(PROG)
    if cluster is None:
        stop.install()
    cli.quiet_tensorflow()
    distribution.split_cpu(config["logical_cpu_devices"])

    # Data: read before anything is written, so a wrong data_dir leaves model_dir untouched.
    from trainer import input_pipeline, train

    builder = input_pipeline.load_builder(args.data_dir, config["size"])
    input_pipeline.check_data_seed(builder, config["data_seed"])
    plan = train.plan_run(builder, config)

    # Where: one device, a mirror, or every worker of TF_CONFIG (whose constructor waits for all of them).
    if cluster is not None:
        log(f"{cluster.describe()} of the {cluster.size} tasks of TF_CONFIG; waiting for all of them")
    strategy = distribution.make_strategy(config, cluster)
    if cluster is not None:
        stop.install()  # TensorFlow's coordination service took SIGTERM while the workers joined
        preemption.tell_supervisor_ready()
    chief = cluster is None or cluster.is_chief

    # One writer: the chief (the only process that writes) holds model_dir until it ends, however it ends.
    hold = model_dir_lock.hold(paths.model_dir, PROG) if chief else model_dir_lock.Hold(paths.model_dir, None)
    try:
        # Again, under the hold: a run that held the model_dir meanwhile may have moved it on.
        state = outputs.check_model_dir(paths, config)
        if state == "finished":
            log(f"{paths.model_dir} already holds this run, trained and exported; nothing to do")
            return 0
        loop, position = build_and_restore(args, config, cluster, paths, builder, plan, strategy, stop, state)
        return train_and_finish(config, cluster, paths, builder, stop, loop, position)
    except BaseException:
        # Refused, or failed before its first file (a full disk): a model_dir made for the hold goes again.
        hold.release_untouched()
        raise
    finally:
        hold.release()


def build_and_restore(args, config, cluster, paths, builder, plan, strategy, stop, state):
    """The Loop (model and optimizer under the strategy) and the Position of the checkpoint it restored (or None)."""
    from trainer import checkpoints, input_pipeline, train
    from trainer.training_log import count

    workers = cluster.size if cluster else 1
    chief = cluster is None or cluster.is_chief
    devices = list(strategy.extended.worker_devices)
    where = (
        f"{cluster.describe()} ({'the chief' if chief else 'not the chief'}) of {workers} workers, " if cluster else ""
    )
    log(
        f"{state} run in {paths.model_dir}: {builder.data_dir} ({count(plan.num_train, 'training example')}), "
        f"{count(plan.epochs, 'epoch')} of {count(plan.steps_per_epoch, 'step')} of {plan.batch_size}, {where}"
        f"{count(strategy.num_replicas_in_sync, 'replica')} in all {devices}"
    )
    if args.tf_data_service:
        order = (
            "in the run's order (the global batches it would read itself)"
            if config["deterministic"]
            else "in whatever order its workers make them (deterministic: false): not reproducible with the seed, "
            "and a resumed run goes on in another order"
        )
        log(f"training batches come from the tf.data service at {args.tf_data_service}, {order}")
    # Model, and the checkpoint to resume from.
    team = train.Team(workers, chief, cluster.peers() if cluster else {})
    data_service = None
    if args.tf_data_service:
        job = f"moving_line_train_{hashlib.sha1(paths.model_dir.encode()).hexdigest()[:12]}"  # shared by the workers
        data_service = train.DataService(args.tf_data_service, job)
    loop = train.Loop(config, builder, strategy, plan, paths, team=team, stop=stop, log=log, data_service=data_service)
    if chief and state == "new":
        loop.model.get_layer("cnn_lstm").summary(print_fn=lambda text, **_: [log(line) for line in text.splitlines()])
    how = ("the CNN-LSTM computed from each video's path without drawing a frame (PathConv2D, PathLSTM)"
           if config["incremental_model"] else "each video's path drawn into its frames by RenderVideo")  # fmt: skip
    xla = ("each replica's forward and backward pass compiled by XLA (off: --set xla_layers=false)"
           if config["xla_layers"] else "no XLA")  # fmt: skip
    log(f"training {how}; {xla}")
    dataset = input_pipeline.describe_dataset(builder)
    position = checkpoints.restore_latest(loop.checkpoint, paths.checkpoints, config, dataset, log, loop.topology)
    if position is not None:
        epoch, into = divmod(position.step, plan.steps_per_epoch)
        where = (
            f"the end of epoch {epoch}, before its validation"
            if position.epochs_done < epoch
            else f"epoch {epoch + 1}, {count(into, 'step')} into it"
        )
        log(f"resuming at step {position.step} of {plan.total_steps} ({where})")
    return loop, position


def train_and_finish(config, cluster, paths, builder, stop, loop, position):
    """Training from position on (from the start when None), then (on the chief) the outputs; the exit code."""
    from trainer import checkpoints, corrupt_data, files, train

    chief = loop.chief
    start = time.monotonic()
    if chief:
        files.remove_partials(paths.model_dir)
        files.remove_partials(paths.checkpoints)
        if position is None:
            # A run stopped before its first checkpoint may have left an epoch's history: this run starts over.
            for stale in (paths.history_csv, paths.history_json):
                files.remove(stale)
    resume = "free some space and run the same command again to resume from the last checkpoint"
    # Damaged shards: with skip_corrupt_records, how many records each split loses is logged first; a read
    # error inside names the shard in one line. Reading runs TensorFlow, which comes after the strategy.
    splits = ("train", "validation")
    with (
        files.disk_full_is_a_fault(resume),
        corrupt_data.reading(PROG, builder, splits, config["skip_corrupt_records"], SKIP_HINT),
    ):
        outcome = loop.run(position or checkpoints.Position())
    stop.uninstall()  # from here on a signal ends the command at once; the outputs are written atomically
    if outcome.weights is None:
        raise cli.FaultError(
            f"stopped by {signal.Signals(outcome.stop_signal).name} at {outcome.stopped_at}; "
            f"{stop.resume_hint}; run the same command again to resume",
            exit_code=cli.interrupted_exit(outcome.stop_signal),
        )
    log(
        f"trained in {time.monotonic() - start:.1f} s; final weights fingerprint "
        f"{train.weights_fingerprint(outcome.weights)}"
    )
    if not chief:
        log(f"{cluster.describe()} done; the chief evaluates and writes the model")
        return 0
    with files.disk_full_is_a_fault("free some space and run the same command again to write the outputs"):
        finish(config, paths, builder, loop.plain_model())
    return 0


def finish(config: dict, paths: outputs.Paths, builder, trained):
    """The outputs after training: history, learning curves, test metrics, model.keras, export/."""
    from trainer import evaluate, training_log

    history = training_log.write_history(paths.history_csv, paths.history_json)
    training_log.plot_learning_curves(history, paths.plot)
    if config["test_after_training"]:
        evaluate.evaluate_trained_model(trained, builder, config, "test", paths.model_dir, PROG, paths.keras)
    export.save_keras(trained, paths.keras)
    export.export_saved_model(trained, paths.export, builder.info.features["label"].names, paths.model_dir)
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
        log(f"{name}: {where}")


def run() -> int:
    """The command: main's one-line errors and exit codes; a worker of a cluster then leaves it in order."""
    try:
        code = cli.run_main(PROG, main)
    except SystemExit as exit:
        code = exit.code
    code = code or 0
    if preemption.supervised():
        cluster = distribution.read_tf_config(os.environ.get("TF_CONFIG"))
        preemption.leave_cluster(cluster.is_chief, cluster.peers().values(), code)
    return code


if __name__ == "__main__":
    cli.leave(run())
