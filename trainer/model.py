"""The CNN-LSTM of ../shared/SPEC.md, with time folded into the batch.

The tutorial wraps Conv2D, MaxPooling2D and Flatten in TimeDistributed. Keras 3's
TimeDistributed on the TensorFlow backend runs the wrapped layer frame by frame
(3-6x slower on a GPU, out of memory at batch 1,024), so this model reshapes
[batch, frames, S, S, 1] into [batch * frames, S, S, 1], applies the very same
layers once to all frames, and reshapes back to [batch, frames, features] for the
LSTM. The layers, their shapes and the parameter count (240,661 at S = 50) are the
tutorial's; build_time_distributed_model keeps the tutorial's form for comparison.

Training feeds the model the stored `path` (the pixel each frame lights, 2 bytes a frame)
rather than the video: RenderVideo draws the frames inside the train step, on the accelerator,
so the host neither inflates 125 kB per video nor copies it to the device. The trained layers
see exactly the stored videos; exports take `video` as the tutorial's model does.

Training on one device (a CPU or one GPU) uses XlaConv2D and XlaMaxPooling2D in place of Conv2D
and MaxPooling2D, and XLA's LSTM loop in place of cuDNN's (the same layers computed another way,
see XlaConv2D), with the whole train step compiled by XLA. Exports use Keras's own.
"""

from __future__ import annotations

import keras
import tensorflow as tf

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


@keras.saving.register_keras_serializable(package="moving_line")
class RenderVideo(keras.layers.Layer):
    """path [batch, T, 2] uint8, the (row, column) each frame lights -> video [batch, T, S, S, 1] uint8.

    Frame t lights path[0..t], each pixel once (every column is visited once), so one [S, S] map of
    "the frame a pixel lights up in" holds the video; frame t is that map compared with t. No weights.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, path):
        size, frames = self.size, path.shape[1]
        rows = keras.ops.one_hot(keras.ops.cast(path[..., 0], "int32"), size)  # [batch, T, S]
        columns = keras.ops.one_hot(keras.ops.cast(path[..., 1], "int32"), size)
        step = keras.ops.reshape(keras.ops.arange(1, frames + 1, dtype="float32"), (1, frames, 1))
        # lit_at[b, r, c]: 1 + the frame that lights (r, c), or 0 if none does. Small integers: exact even in TF32.
        lit_at = keras.ops.einsum("btr,btc->brc", rows * step, columns)
        frame = keras.ops.reshape(step, (1, frames, 1, 1))
        lit = keras.ops.logical_and(lit_at[:, None] > 0, lit_at[:, None] <= frame)
        return keras.ops.cast(lit, "uint8")[..., None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.size, self.size, 1)

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def shifted_products_conv(images, kernel, bias):
    """A 'valid', stride-1 convolution of one-channel images: a sum of shifted copies times the kernel's taps."""
    rows, columns = kernel.shape[0], kernel.shape[1]
    height, width = images.shape[1] - rows + 1, images.shape[2] - columns + 1
    total = bias
    for row in range(rows):
        for column in range(columns):
            total += images[:, row : row + height, column : column + width, :] * kernel[row, column, 0]
    return total


def reshaped_max_pool(images, rows: int, columns: int):
    """Non-overlapping 'valid' max-pooling as a reshape and a max."""
    height, width, channels = images.shape[1] // rows, images.shape[2] // columns, images.shape[3]
    windows = keras.ops.reshape(
        images[:, : height * rows, : width * columns], (-1, height, rows, width, columns, channels)
    )
    return keras.ops.max(windows, axis=(2, 4))


@keras.saving.register_keras_serializable(package="moving_line")
class XlaConv2D(keras.layers.Conv2D):
    """Conv2D on one-channel images as a sum of shifted products, for a model compiled with XLA.

    On a CPU, the library convolution of 1,600 one-channel 50x50 frames into 2 filters is mostly
    overhead (90% of a train step), and XLA's own convolution is slower still; XLA fuses these
    products, the bias and the ReLU into one pass. Same weights and outputs as Conv2D.
    """

    def build(self, input_shape):
        if input_shape[-1] != 1 or self.strides != (1, 1) or self.padding != "valid" or self.dilation_rate != (1, 1):
            raise ValueError("XlaConv2D takes one-channel images, stride 1, 'valid' padding and no dilation")
        super().build(input_shape)

    def call(self, inputs):
        return self.activation(shifted_products_conv(inputs, self.kernel, self.bias))


@keras.saving.register_keras_serializable(package="moving_line")
class XlaMaxPooling2D(keras.layers.MaxPooling2D):
    """MaxPooling2D over non-overlapping windows as a reshape and a max, for a model compiled with XLA.

    Where a window holds equal maxima, its gradient is shared among them (MaxPooling2D gives it to one).
    """

    def build(self, input_shape):
        if self.strides != self.pool_size or self.padding != "valid":
            raise ValueError("XlaMaxPooling2D takes non-overlapping windows (strides = pool_size) and 'valid' padding")
        super().build(input_shape)

    def call(self, inputs):
        return reshaped_max_pool(inputs, *self.pool_size)


def xla_layers_for(strategy, enabled: bool) -> bool:
    """Whether to train with the XLA layers and XLA: when enabled and training on one device (a CPU or a GPU).

    Measured (BENCHMARKS.md): 2-3x faster train steps than Keras's layers on a 2-core CPU, and 2.2-2.5x
    on an H100 at batch 1,024 (cuDNN's conv and max-pool on 2-channel 50x50 frames are mostly overhead).
    Several replicas (a mirror, or workers) keep Keras's layers without XLA: XLA compiles the
    cross-replica gradient sum only as an NCCL collective, which two replicas on one GPU cannot use.
    """
    devices = strategy.extended.worker_devices
    return enabled and len(devices) == 1


def video_input(size: int) -> keras.KerasTensor:
    """The model's input: raw uint8 videos, as stored; the cast to float happens inside the model."""
    return keras.Input(shape=(size, size, size, 1), dtype="uint8", name="video")


def to_float(video: keras.KerasTensor) -> keras.KerasTensor:
    # Rescaling(1) is a parameter-free layer that casts to float32 (pixels are already 0 or 1).
    return keras.layers.Rescaling(1.0, name="to_float")(video)


def build_model(config: dict, xla_layers: bool = False) -> keras.Model:
    """The folded CNN-LSTM for videos of config["size"] frames of size x size pixels (not compiled).

    xla_layers: XlaConv2D, XlaMaxPooling2D and a non-cuDNN LSTM in place of Keras's defaults, for a
    model compiled with XLA (same weights, so either model takes the other's).
    """
    size = config["size"]
    conv, pool = (XlaConv2D, XlaMaxPooling2D) if xla_layers else (keras.layers.Conv2D, keras.layers.MaxPooling2D)
    video = video_input(size)
    frames = FoldTime(name="fold_time")(to_float(video))
    features = conv(CONV_FILTERS, CONV_KERNEL, activation="relu", name="conv")(frames)
    features = pool(POOL_SIZE, name="pool")(features)
    features = keras.layers.Flatten(name="flatten")(features)
    sequence = UnfoldTime(size, name="unfold_time")(features)
    # cuDNN's LSTM kernel cannot be compiled by XLA: with the XLA layers the LSTM is XLA's loop (same weights).
    summary = keras.layers.LSTM(LSTM_UNITS, name="lstm", use_cudnn=False if xla_layers else "auto")(sequence)
    probability_right = keras.layers.Dense(1, activation="sigmoid", name="probability_right")(summary)
    return keras.Model(video, probability_right, name="cnn_lstm")


def path_input(size: int) -> keras.KerasTensor:
    """The training model's input: the stored path, the pixel each of the size frames lights."""
    return keras.Input(shape=(size, 2), dtype="uint8", name="path")


def build_training_model(config: dict, xla_layers: bool = False) -> keras.Model:
    """build_model's CNN-LSTM fed by RenderVideo: path in, P(right) out. Same weights as build_model's."""
    size = config["size"]
    path = path_input(size)
    cnn_lstm = build_model(config, xla_layers=xla_layers)
    return keras.Model(path, cnn_lstm(RenderVideo(size, name="render_video")(path)), name="cnn_lstm_from_path")


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


def make_optimizer(
    learning_rate: float, clip_norm: float | None = None, cosine_decay_steps: int | None = None
) -> keras.optimizers.Optimizer:
    """Adam (the tutorial's) with the config's learning rate and gradient clipping.

    cosine_decay_steps: the learning rate falls along a cosine to zero over this many steps.
    """
    if cosine_decay_steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, cosine_decay_steps)
    return keras.optimizers.Adam(learning_rate=learning_rate, global_clipnorm=clip_norm)


def compile_model(
    model: keras.Model,
    learning_rate: float,
    clip_norm: float | None = None,
    jit_compile: bool = False,
    cosine_decay_steps: int | None = None,
) -> keras.Model:
    """The tutorial's loss, optimizer and metric; the learning rate and gradient clipping are the config's.

    jit_compile: train and test steps compiled by XLA (for the XLA layers; Keras's own conv is slower under it).
    """
    model.compile(
        optimizer=make_optimizer(learning_rate, clip_norm, cosine_decay_steps),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def prediction_function(model: keras.Model):
    """uint8 video batch -> P(right) [batch], compiled once for any batch size."""

    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)])
    def predict(video):
        return tf.reshape(model(video, training=False), [-1])

    return predict
