"""Export: a SavedModel for serving (no project code needed to load it) and a .keras file.

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
    archive.write_out(partial, verbose=False)
    remove_tree(export_dir)
    tf.io.gfile.rename(partial, export_dir)
    return export_dir


def save_keras(model: keras.Model, path: str) -> str:
    """model.keras, written beside its final name first (needs trainer.model imported to load: FoldTime)."""
    partial = path + ".partial.keras"
    model.save(partial)
    tf.io.gfile.rename(partial, path, overwrite=True)
    return path


def load_keras(path: str) -> keras.Model:
    """A .keras file, loaded with safe_mode: a Lambda layer (pickled Python code) is refused, not run."""
    import trainer.model  # noqa: F401 - registers FoldTime and UnfoldTime, which the file names

    return keras.models.load_model(path, safe_mode=True)


def remove_tree(path: str):
    if tf.io.gfile.exists(path):
        if "://" in path:
            tf.io.gfile.rmtree(path)
        else:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
