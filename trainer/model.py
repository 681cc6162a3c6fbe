"""The CNN-LSTM of ../shared/SPEC.md, with time folded into the batch.

The tutorial wraps Conv2D, MaxPooling2D and Flatten in TimeDistributed. Keras 3's
TimeDistributed on the TensorFlow backend runs the wrapped layer frame by frame
(3-6x slower on a GPU, out of memory at batch 1,024), so this model reshapes
[batch, frames, S, S, 1] into [batch * frames, S, S, 1], applies the very same
layers once to all frames, and reshapes back to [batch, frames, features] for the
LSTM. The layers, their shapes and the parameter count (240,661 at S = 50) are the
tutorial's; build_time_distributed_model keeps the tutorial's form for comparison.
"""

from __future__ import annotations

import keras

CONV_FILTERS = 2
CONV_KERNEL = (2, 2)
POOL_SIZE = (2, 2)
LSTM_UNITS = 50


@keras.saving.register_keras_serializable(package="moving_line")
class FoldTime(keras.layers.Layer):
    """[batch, frames, ...] -> [batch * frames, ...]: one image batch for the per-frame layers."""

    def call(self, inputs):
        return keras.ops.reshape(inputs, (-1, *inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[2:])


@keras.saving.register_keras_serializable(package="moving_line")
class UnfoldTime(keras.layers.Layer):
    """[batch * frames, features] -> [batch, frames, features]: one sequence per video again."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, inputs):
        return keras.ops.reshape(inputs, (-1, self.frames, inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (None, self.frames, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "frames": self.frames}


def video_input(size: int) -> keras.KerasTensor:
    """The model's input: raw uint8 videos, as stored; the cast to float happens inside the model."""
    return keras.Input(shape=(size, size, size, 1), dtype="uint8", name="video")


def to_float(video: keras.KerasTensor) -> keras.KerasTensor:
    # Rescaling(1) is a parameter-free layer that casts to float32 (pixels are already 0 or 1).
    return keras.layers.Rescaling(1.0, name="to_float")(video)


def build_model(config: dict) -> keras.Model:
    """The folded CNN-LSTM for videos of config["size"] frames of size x size pixels (not compiled)."""
    size = config["size"]
    video = video_input(size)
    frames = FoldTime(name="fold_time")(to_float(video))
    features = keras.layers.Conv2D(CONV_FILTERS, CONV_KERNEL, activation="relu", name="conv")(frames)
    features = keras.layers.MaxPooling2D(POOL_SIZE, name="pool")(features)
    features = keras.layers.Flatten(name="flatten")(features)
    sequence = UnfoldTime(size, name="unfold_time")(features)
    summary = keras.layers.LSTM(LSTM_UNITS, name="lstm")(sequence)
    probability_right = keras.layers.Dense(1, activation="sigmoid", name="probability_right")(summary)
    return keras.Model(video, probability_right, name="cnn_lstm")


def build_time_distributed_model(config: dict) -> keras.Model:
    """The tutorial's form (TimeDistributed wrappers); same layers and weights. For bench/ and tests."""
    size = config["size"]
    video = video_input(size)
    features = keras.layers.TimeDistributed(
        keras.layers.Conv2D(CONV_FILTERS, CONV_KERNEL, activation="relu"), name="conv"
    )(to_float(video))
    features = keras.layers.TimeDistributed(keras.layers.MaxPooling2D(POOL_SIZE), name="pool")(features)
    features = keras.layers.TimeDistributed(keras.layers.Flatten(), name="flatten")(features)
    summary = keras.layers.LSTM(LSTM_UNITS, name="lstm")(features)
    probability_right = keras.layers.Dense(1, activation="sigmoid", name="probability_right")(summary)
    return keras.Model(video, probability_right, name="cnn_lstm_time_distributed")


def compile_model(model: keras.Model, learning_rate: float, clip_norm: float | None = None) -> keras.Model:
    """The tutorial's loss, optimizer and metric; the learning rate and gradient clipping are the config's."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, global_clipnorm=clip_norm),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def prediction_function(model: keras.Model):
    """uint8 video batch -> P(right) [batch], compiled once for any batch size."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)])
    def predict(video):
        return tf.reshape(model(video, training=False), [-1])

    return predict
