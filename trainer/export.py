"""Export: a SavedModel for serving and a .keras file; neither needs this package to load.

The SavedModel's serving_default signature takes `video` (uint8 [batch, frames, S, S, 1],
the stored format) and returns probability_right (float32 [batch]), class_id (int64
[batch], 1 = right) and class_name (string [batch]). Both are written beside their
final place and moved there when complete, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

SIGNATURE = "serving_default"
INPUT_NAME = "video"
# Keras's binary accuracy counts a probability above 0.5 as "right"; serving decides the same way.
THRESHOLD = 0.5


def serving_function(model: keras.Model, class_names: list[str]):
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


def video_spec(model: keras.Model) -> tf.TensorSpec:
    return tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8, name=INPUT_NAME)


def export_saved_model(model: keras.Model, export_dir: str, class_names: list[str]) -> str:
    """Writes the SavedModel at export_dir (replacing an older export only once the new one is complete)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=serving_function(model, class_names), input_signature=[video_spec(model)])
    partial = export_dir.rstrip("/") + ".partial"
    remove_tree(partial)
    try:
        archive.write_out(partial, verbose=False)
        remove_tree(export_dir)
        tf.io.gfile.rename(partial, export_dir)
    except BaseException:
        remove_tree(partial)
        raise
    return export_dir


def save_keras(model: keras.Model, path: str) -> str:
    """model.keras in the tutorial's form: Keras's own layers only, so that plain Keras loads it anywhere.

    model is the CNN-LSTM of trainer.model.build_model (time folded into the batch by this package's
    FoldTime and UnfoldTime); its weights go, in the same order, into build_time_distributed_model's
    TimeDistributed form, which needs no class of this package. Written beside its final name first.
    """
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


def load_keras(path: str) -> keras.Model:
    """A .keras file, loaded with safe_mode: a Lambda layer (pickled Python code) is refused, not run.

    model.keras needs nothing of this package; the checkpoints (the training model) name its layers.
    """
    import trainer.model  # noqa: F401 - registers RenderVideo, FoldTime, ..., which checkpoints name

    return keras.models.load_model(path, safe_mode=True)


def remove_tree(path: str):
    if tf.io.gfile.exists(path):
        if "://" in path:
            tf.io.gfile.rmtree(path)
        else:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
