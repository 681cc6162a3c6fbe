"""Export: a SavedModel for serving and a .keras file; neither needs this package to load.

    python -m trainer.export --model_dir DIR [--export_dir DIR]

The command exports the newest good checkpoint of a trainer.task run (stopped or finished) as a
SavedModel, to --export_dir (default MODEL_DIR/export_step_<N>; MODEL_DIR/export is the finished run's,
written by trainer.task). It holds MODEL_DIR while it reads (trainer.model_dir_lock): a run training there
would be deleting old checkpoints meanwhile, so it is refused while one does.

An export replaces only what an export of the same run wrote: each SavedModel carries a note (MARK, in
assets.extra/, the SavedModel's place for other tools' files, which loaders ignore) naming its model_dir
and every file it wrote. A folder holding anything else (a user's file, a dataset, the model_dir itself)
is refused in one line, and nothing in it is touched.

The SavedModel's serving_default signature takes `video` (uint8 [batch, frames, S, S, 1],
the stored format) and returns probability_right (float32 [batch]), class_id (int64
[batch], 1 = right) and class_name (string [batch]). Both are written beside their
final place and moved there when complete, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil

from pipeline import cli, contract
from trainer import outputs

PROG = "trainer.export"
SIGNATURE = "serving_default"
INPUT_NAME = "video"
# Keras's binary accuracy counts a probability above 0.5 as "right"; serving decides the same way.
THRESHOLD = 0.5
# The note an export leaves in its SavedModel: {"model_dir": ..., "step": ..., "files": [...]} ("files" is None
# while the export is being written).
MARK = "assets.extra/moving_line_export.json"
# What a SavedModel folder holds (TensorFlow's and Keras's names); a folder being written holds only these.
SAVED_MODEL_NAMES = {"saved_model.pb", "saved_model.pbtxt", "fingerprint.pb", "variables", "assets", "assets.extra"}


def serving_function(model, class_names: list[str]):
    import tensorflow as tf

    names = tf.constant(class_names)

    def serve(video):
        # A signature's caller can send any shape (TensorFlow checks only the dtype there): without this
        # check a wrong one fails deep in the model, in an error that does not name the input.
        video = tf.ensure_shape(video, [None, *model.input_shape[1:]], name="video_shape_check")
        probability_right = tf.reshape(model(video, training=False), [-1])
        class_id = tf.cast(probability_right > THRESHOLD, tf.int64)
        return {
            "probability_right": probability_right,
            "class_id": class_id,
            "class_name": tf.gather(names, class_id),
        }

    return serve


def video_spec(model):
    import tensorflow as tf

    return tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8, name=INPUT_NAME)


def export_saved_model(
    model, export_dir: str, class_names: list[str], model_dir: str, step: int | None = None, announce: str = ""
) -> str:
    """Writes the SavedModel of model_dir's run at export_dir, replacing an older export of that run only once the
    new one is complete; a UsageError, nothing touched, when export_dir or its partial folder holds anything else.
    announce: a line to log as the writing starts."""
    import keras
    import tensorflow as tf

    refuse_unless_replaceable(export_dir, model_dir)
    partial = partial_folder(export_dir)
    remove_tree(partial)  # what a killed export of this run left (refuse_unless_replaceable checked it is that)
    try:
        write_mark(partial, model_dir, step, None)  # first: a partial folder left by a kill is known as this run's
        # A signal inside TensorFlow's tracing or writer can come out as another error: it is taken once the SavedModel
        # is written, and the partial folder removed.
        with cli.interrupts_deferred():
            if announce:
                cli.log(PROG, announce)
            archive = keras.export.ExportArchive()
            archive.track(model)
            endpoint = serving_function(model, class_names)
            archive.add_endpoint(name=SIGNATURE, fn=endpoint, input_signature=[video_spec(model)])
            archive.write_out(partial, verbose=False)
        write_mark(partial, model_dir, step, list_files(partial))
        remove_tree(export_dir)
        tf.io.gfile.rename(partial, export_dir)
    except BaseException:
        remove_tree(partial)
        raise
    return export_dir


def partial_folder(export_dir: str) -> str:
    return export_dir.rstrip("/") + ".partial"


def write_mark(folder: str, model_dir: str, step: int | None, written: list[str] | None):
    import tensorflow as tf

    path = os.path.join(folder, MARK)
    tf.io.gfile.makedirs(os.path.dirname(path))
    note = {"model_dir": run_identity(model_dir), "step": step, "files": None if written is None else [*written, MARK]}
    with tf.io.gfile.GFile(path, "w") as file:
        file.write(json.dumps(note, indent=1) + "\n")


def run_identity(model_dir: str) -> str:
    """How a mark names a model_dir: its real path (a local one), or its address (gs://...)."""
    return model_dir.rstrip("/") if "://" in model_dir else os.path.realpath(model_dir)


def list_files(folder: str) -> list[str]:
    """Every file under folder, as paths relative to it, sorted."""
    if "://" in folder:
        import tensorflow as tf

        walk = ((root, names) for root, _, names in tf.io.gfile.walk(folder))
    else:
        walk = ((root, names) for root, _, names in os.walk(folder))
    found = [os.path.relpath(os.path.join(root, name), folder) for root, names in walk for name in names]
    return sorted(path.replace(os.sep, "/") for path in found)


def entries(folder: str) -> list[str]:
    if "://" in folder:
        import tensorflow as tf

        return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(folder))
    return sorted(os.listdir(folder))


def foreign_content(folder: str, model_dir: str) -> str | None:
    """None when folder is missing or empty, or holds only what an export of model_dir's run wrote (complete, or
    cut short); else what it holds that such an export did not write."""
    files = outputs.file_system(folder)
    if not files.exists(folder):
        return None
    if not files.isdir(folder):
        return "is a file"
    names = entries(folder)
    if not names:
        return None
    mark_path = os.path.join(folder, MARK)
    try:
        with files.GFile(mark_path) as file:
            mark = json.loads(file.read())
    except Exception:  # no mark (or an unreadable one): not an export's folder
        return f"holds {names[0]}, which no export of this run wrote"
    recorded = mark.get("model_dir") if isinstance(mark, dict) else None
    inside = "://" not in folder and run_identity(folder).startswith(run_identity(model_dir) + os.sep)
    if recorded != run_identity(model_dir) and not inside:  # a model_dir moved elsewhere keeps its own exports
        return f"holds the export of another --model_dir ({recorded})"
    written = mark.get("files")
    if written is None:  # a write cut short: SavedModel files only
        extra = [name for name in names if name not in SAVED_MODEL_NAMES]
    else:
        extra = [path for path in list_files(folder) if path not in set(written)]
    return f"holds {extra[0]}, which no export of this run wrote" if extra else None


def replace_problem(export_dir: str, model_dir: str) -> str | None:
    """None when export_dir and its partial folder hold nothing but what exports of model_dir's run wrote; else
    which of the two holds what ("DIR holds notes.txt, which no export of this run wrote")."""
    for folder in (export_dir, partial_folder(export_dir)):
        problem = foreign_content(folder, model_dir)
        if problem:
            return f"{folder} {problem}"
    return None


def refuse_unless_replaceable(export_dir: str, model_dir: str):
    """A UsageError (nothing touched) unless a SavedModel of model_dir's run can be written at export_dir."""
    if run_identity(export_dir) == run_identity(model_dir):
        raise cli.UsageError(
            f"--export_dir {export_dir} is the --model_dir itself, whose checkpoints, logs and history an export "
            "would replace; give a folder of its own (the default is MODEL_DIR/export_step_<N>)"
        )
    problem = replace_problem(export_dir, model_dir)
    if problem:
        raise cli.UsageError(
            f"--export_dir {problem}; an export replaces only an earlier export of the same run: give a new or empty "
            "folder, or move those files away"
        )


def save_keras(model, path: str) -> str:
    """model.keras in the tutorial's form: Keras's own layers only, so that plain Keras loads it anywhere.

    model is the CNN-LSTM of trainer.model.build_model (time folded into the batch by this package's
    FoldTime and UnfoldTime); its weights go, in the same order, into build_time_distributed_model's
    TimeDistributed form, which needs no class of this package. Written beside its final name first.
    """
    import tensorflow as tf

    from trainer import model as model_lib

    portable = model_lib.build_time_distributed_model(model.input_shape[2])
    portable.set_weights(model.get_weights())
    partial = path + ".partial.keras"
    try:
        portable.save(partial)
        tf.io.gfile.rename(partial, path, overwrite=True)
    except BaseException:
        remove_tree(partial)
        raise
    return path


def load_keras(path: str):
    """A .keras file, loaded with safe_mode: a Lambda layer (pickled Python code) is refused, not run.

    model.keras needs nothing of this package; the checkpoints (the training model) name its layers.
    """
    import keras

    import trainer.model  # noqa: F401 - registers RenderVideo, FoldTime, ..., which checkpoints name

    return keras.models.load_model(path, safe_mode=True)


def remove_tree(path: str):
    import tensorflow as tf

    if tf.io.gfile.exists(path):
        if "://" in path:
            tf.io.gfile.rmtree(path)
        else:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


# The command.


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description="Export the newest good checkpoint of a trainer.task run.")
    parser.add_argument("--model_dir", required=True, help="The trainer.task --model_dir (holds checkpoints/).")
    parser.add_argument("--export_dir", help="Where the SavedModel goes (default MODEL_DIR/export_step_<N>).")
    return parser.parse_args(argv)


def check_export_dir(export_dir: str, paths, finished: bool):
    """A UsageError unless a SavedModel can be written at export_dir without touching the run itself, or any file
    an export of this run did not write."""
    if os.path.abspath(export_dir) == os.path.abspath(paths.export) and not finished:
        raise cli.UsageError(
            f"--export_dir {export_dir} is where trainer.task writes the finished run's model (the run would then "
            "count as finished and never resume); give another --export_dir"
        )
    if "://" in export_dir:
        return
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise cli.UsageError(f"--export_dir {export_dir} is a file; give a folder")
    parent = os.path.dirname(os.path.abspath(export_dir))
    if not os.path.isdir(parent):
        raise cli.UsageError(f"--export_dir {export_dir}: its folder {parent} does not exist; create it first")
    refuse_unless_replaceable(export_dir, paths.model_dir)


def restore_model(folder: str, manifest: dict):
    """The CNN-LSTM taking `video`, with the weights of the checkpoint in folder."""
    import tensorflow as tf

    from trainer import checkpoints
    from trainer import model as model_lib

    config = manifest["config"]
    path_model = model_lib.build_path_model(
        config["size"], incremental=config["incremental_model"], xla_layers=config["xla_layers"]
    )
    # The model's weights only: the optimizer's state is for resuming, not for serving.
    status = tf.train.Checkpoint(model=path_model).read(os.path.join(folder, checkpoints.PREFIX))
    status.assert_existing_objects_matched().expect_partial()
    model = model_lib.build_model(config["size"])
    model.set_weights(path_model.get_weights())
    return model


def main(argv=None):
    from trainer import model_dir_lock

    args = parse_args(argv)
    cli.check_reachable(args.model_dir, "--model_dir")
    cli.check_reachable(args.export_dir, "--export_dir")
    paths = outputs.output_paths(args.model_dir)
    files = outputs.file_system(args.model_dir)
    if not files.isdir(args.model_dir):
        raise cli.UsageError(
            f"--model_dir {args.model_dir}: no such folder; give the --model_dir of a trainer.task run"
        )
    # A live run's hold first: a run still before its first checkpoint is in use, not empty.
    model_dir_lock.refuse_if_held(args.model_dir)
    if not outputs.has_checkpoint(paths):
        raise cli.UsageError(
            f"--model_dir {args.model_dir} holds no checkpoint to export (no trainer.task run there got that far)"
        )
    finished = files.exists(os.path.join(paths.export, "saved_model.pb"))
    if args.export_dir:
        check_export_dir(args.export_dir, paths, finished)
    cli.quiet_tensorflow()
    from trainer import checkpoints
    from trainer import files as trainer_files

    hold = model_dir_lock.hold(args.model_dir, PROG)
    try:
        for _, folder in checkpoints.folders(paths.checkpoints):
            manifest, problem = checkpoints.check(folder)
            if manifest is not None:
                break
            cli.log(PROG, f"checkpoint {folder} is not usable: {problem}; trying the one before it")
        else:
            raise cli.FaultError(f"no checkpoint in {paths.checkpoints} is usable; train again into a new --model_dir")
        step = manifest["step"]
        export_dir = args.export_dir or os.path.join(args.model_dir, f"export_step_{step:09d}")
        refuse_unless_replaceable(export_dir, args.model_dir)
        with trainer_files.disk_full_is_a_fault("free some space and run the same command again"):
            model = restore_model(folder, manifest)
            announce = f"exporting the checkpoint of step {step} to {export_dir}"
            export_saved_model(model, export_dir, list(contract.CLASS_NAMES), args.model_dir, step, announce)
    finally:
        hold.release()
    epochs = manifest["epochs_done"]
    cli.log(PROG, f"exported the checkpoint of step {step} ({epochs} epoch{'s' * (epochs != 1)} done) to {export_dir}")
    return 0


if __name__ == "__main__":
    cli.run_and_exit(PROG, main)
