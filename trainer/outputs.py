"""What a training run writes, where, and what a model_dir already holds (checked before TensorFlow starts).

MODEL_DIR gets .trainer.lock (held by the one process writing MODEL_DIR: trainer.model_dir_lock),
config.yaml (the resolved config, written with the first checkpoint), checkpoints/ (state/step_<N>/: the
resumable checkpoints; epoch_<E>.keras: the model after each epoch), logs/ (TensorBoard), history.csv,
history.json, learning_curves.png, metrics.json (the test split), model.keras and export/ (the SavedModel).
AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR move the checkpoints and the logs (Vertex AI sets them).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import tempfile

from pipeline import cli
from trainer import config as config_lib

STATE_FOLDER = "state"  # trainer.checkpoints keeps its checkpoints under CHECKPOINTS/state
MANIFEST = "manifest.json"
PARTIAL = ".partial"  # trainer.files' temporary names
# The files and folders a run writes into MODEL_DIR and its checkpoints folder, under their temporary names (NAME +
# PARTIAL, and + ".keras" for Keras's files): what a killed run may leave half-written. Nothing else is removed.
PARTIAL_NAME = re.compile(
    r"(config\.yaml|history\.(csv|json)|learning_curves\.png|metrics(_\w+)?\.json|model\.keras|export|epoch_\d+\.keras)"
    + re.escape(PARTIAL)
    + r"(\.keras)?"
)
LOCK_FILE = ".trainer.lock"  # trainer.model_dir_lock: held by the one process that writes MODEL_DIR
# What a run writes into MODEL_DIR before its first checkpoint (and config.yaml) exists.
STARTED_RUN = {"checkpoints", "logs", LOCK_FILE}


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
    def history_csv(self):
        return os.path.join(self.model_dir, "history.csv")

    @property
    def history_json(self):
        return os.path.join(self.model_dir, "history.json")

    @property
    def plot(self):
        return os.path.join(self.model_dir, "learning_curves.png")

    def epoch_keras(self, epoch: int) -> str:
        """The model after epoch (1-based)."""
        return os.path.join(self.checkpoints, f"epoch_{epoch:03d}.keras")


def is_partial(name: str) -> bool:
    """Whether name is one of a run's files under its temporary name (see PARTIAL_NAME)."""
    return bool(PARTIAL_NAME.fullmatch(name.rstrip("/")))


def output_paths(model_dir: str) -> Paths:
    return Paths(
        model_dir=model_dir,
        checkpoints=os.environ.get("AIP_CHECKPOINT_DIR") or os.path.join(model_dir, "checkpoints"),
        logs=os.environ.get("AIP_TENSORBOARD_LOG_DIR") or os.path.join(model_dir, "logs"),
    )


class LocalFiles:
    """The part of tf.io.gfile used here, for local paths, without importing TensorFlow."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)

    @staticmethod
    def GFile(path):  # noqa: N802 - tf.io.gfile's name
        return open(path, encoding="utf-8")


def file_system(path: str):
    if "://" not in path:
        return LocalFiles
    import tensorflow as tf

    return tf.io.gfile


def has_checkpoint(paths: Paths) -> bool:
    """Whether a checkpoint was written whole (its manifest exists): a run that got that far can resume."""
    files = file_system(paths.checkpoints)
    root = os.path.join(paths.checkpoints, STATE_FOLDER)
    if not files.isdir(root):
        return False
    return any(files.exists(os.path.join(root, name.rstrip("/"), MANIFEST)) for name in files.listdir(root))


def check_model_dir(paths: Paths, config: dict) -> str:
    """'new', 'resume' or 'finished'; a UsageError if MODEL_DIR holds something else.

    A model_dir whose run never wrote a checkpoint (it failed at start-up, or was stopped before its first
    one) is 'new': its config.yaml does not bind the next command.
    """
    files = file_system(paths.model_dir)
    if files.exists(paths.model_dir) and not files.isdir(paths.model_dir):
        raise cli.UsageError(f"--model_dir {paths.model_dir} is a file; give a folder")
    if not files.exists(paths.model_dir):
        check_creatable(paths.model_dir)
        return "new"
    if not [name for name in files.listdir(paths.model_dir) if name.rstrip("/") != LOCK_FILE]:
        return "new"  # empty, or only the hold of the run checking it (trainer.model_dir_lock)
    if not files.exists(paths.config):
        left = [name.rstrip("/") for name in files.listdir(paths.model_dir)]
        if all(name in STARTED_RUN or is_partial(name) for name in left) and not has_checkpoint(paths):
            return "new"  # a run stopped before its first checkpoint left these: they bind nothing
        raise cli.UsageError(
            f"--model_dir {paths.model_dir} is not empty and holds no trainer run (no config.yaml); "
            "give an empty or new folder"
        )
    finished = files.exists(os.path.join(paths.export, "saved_model.pb"))
    if not finished and not has_checkpoint(paths):
        return "new"
    with files.GFile(paths.config) as file:
        previous = config_lib.load_text(file.read(), paths.config)
    changed = config_lib.differences(previous, config)
    if changed:
        raise cli.UsageError(
            f"--model_dir {paths.model_dir} holds a run with another config ({'; '.join(changed)}); "
            "use a new --model_dir, or the same config to resume that run"
        )
    return "finished" if finished else "resume"


def check_creatable(folder: str):
    """A UsageError unless a local folder can be made there: a probe folder of a unique name is made in its
    nearest existing ancestor and removed (workers sharing the folder check it at once, without racing)."""
    if "://" in folder:
        return  # a bucket's permissions show when the run writes
    parent = os.path.abspath(folder)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:
        if not os.path.isdir(parent):
            raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file")
        os.rmdir(tempfile.mkdtemp(prefix=".trainer-probe-", dir=parent))
    except OSError as error:
        raise cli.UsageError(
            f"--model_dir {folder} cannot be created ({error.strerror}); give a writable folder"
        ) from None
