"""The tutorial's CNN-LSTM (docs/training.md), with time folded into the batch; and computed from the path.

The tutorial wraps Conv2D, MaxPooling2D and Flatten in TimeDistributed. Keras 3's
TimeDistributed on the TensorFlow backend runs the wrapped layer frame by frame (much
slower, and out of memory at large batches on a GPU: BENCHMARKS.md), so this model reshapes
[batch, frames, S, S, 1] into [batch * frames, S, S, 1], applies the very same
layers once to all frames, and reshapes back to [batch, frames, features] for the
LSTM. The layers, their shapes and the parameter count (240,661 at S = 50) are the
tutorial's; build_time_distributed_model keeps the tutorial's form for comparison.

Training feeds the model the stored `path` (the pixel each frame lights, 2 bytes a frame)
rather than the video, so the host neither inflates 125 kB per video nor copies it to the
device. build_path_model computes the same CNN-LSTM from it in one of two ways: RenderVideo
draws the frames inside the train step and the layers run on them (the reference), or, by
default, PathConv2D and PathLSTM compute it without drawing a frame. Frame t is frame t-1 plus
one pixel, which changes at most 8 of the 1,152 pooled features, so each frame's LSTM input
projection is the previous one's plus at most 8 kernel rows: the CNN side costs O(T x 8 x 200)
a sequence instead of O(T x S x S) pixels. Both have build_model's weights, in its order;
exports hold build_model's layers and take `video` as the tutorial's model does.

The rendering model, trained with XLA, uses XlaConv2D and XlaMaxPooling2D in place of Conv2D and
MaxPooling2D, and XLA's LSTM loop in place of cuDNN's (the same layers computed another way, see
XlaConv2D). Exports use Keras's own.
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
    overhead (most of a train step: BENCHMARKS.md), and XLA's own convolution is slower still; XLA fuses these
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


def video_input(size: int) -> keras.KerasTensor:
    """The model's input: raw uint8 videos, as stored; the cast to float happens inside the model."""
    return keras.Input(shape=(size, size, size, 1), dtype="uint8", name="video")


def to_float(video: keras.KerasTensor) -> keras.KerasTensor:
    # Rescaling(1) is a parameter-free layer that casts to float32 (pixels are already 0 or 1).
    return keras.layers.Rescaling(1.0, name="to_float")(video)


def build_model(size: int, xla_layers: bool = False) -> keras.Model:
    """The folded CNN-LSTM for videos of `size` frames of size x size pixels (not compiled).

    xla_layers: XlaConv2D, XlaMaxPooling2D and a non-cuDNN LSTM in place of Keras's defaults, for a
    model compiled with XLA (same weights, so either model takes the other's).
    """
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


MIN_PATH_MODEL_SIZE = 3  # below this the max-pool leaves no feature at all


def pool_cells_touched(coordinate, cells: int):
    """The pool rows (or columns) whose 3-pixel block holds a pixel at this row (or column), and which exist.

    A 2x2 'valid' conv output at i covers pixels i and i+1; a 2x2 pool cell p covers conv outputs 2p and 2p+1,
    hence pixels 2p..2p+2. Pixel x is in the blocks of cells floor((x-1)/2) and floor(x/2): one cell when x is
    odd (they coincide), two when it is even. Cells outside 0..cells-1 do not exist (the image's edge, or the
    conv row the 'valid' pool drops). Returns ([..., 2] clamped cell indices, [..., 2] bool: that cell exists).
    """
    low = (coordinate + 1) // 2 - 1  # floor((x-1)/2) without dividing a negative number
    high = coordinate // 2
    exists = keras.ops.stack([(low >= 0) & (low < high) & (low < cells), high < cells], axis=-1)
    touched = keras.ops.clip(keras.ops.stack([low, high], axis=-1), 0, cells - 1)
    return touched, exists


def lit_frame_map(rows, columns, size: int):
    """[batch, S * S] int32: the frame that lights each pixel (row-major), or T where no frame does.

    Rows and columns [batch, T] int32; each pixel lit at most once (scattered frames would add up).
    """
    frames = rows.shape[1]
    batch = tf.shape(rows)[0]
    pixels = tf.range(batch)[:, None] * (size * size) + rows * size + columns  # [batch, T], flat over the batch
    frame_before_end = tf.broadcast_to(tf.range(-frames, 0), tf.shape(rows))  # frame - T: 0 where nothing lands
    lit = tf.scatter_nd(tf.reshape(pixels, (-1, 1)), tf.reshape(frame_before_end, (-1,)), (batch * size * size,))
    return tf.reshape(lit, (-1, size * size)) + frames


@keras.saving.register_keras_serializable(package="moving_line")
class PathConv2D(keras.layers.Conv2D):
    """RenderVideo -> Conv2D -> MaxPooling2D -> Flatten, computed from the path as changes between frames.

    Frame t is frame t-1 plus one pixel, which changes at most 4 conv outputs, in at most 4 pool cells: at
    most 4 x filters of the pooled features change, and every other feature keeps its value (relu(bias) on
    an empty region). Call on path [batch, T, 2] uint8 -> (cells [batch, T, 4] int32: the flat pool cells the
    frame's pixel may change; changes [batch, T, 4, filters]: by how much each of their features changes, 0
    for a cell that does not exist; empty [batch, filters]: the features of an empty frame). The features of
    frame t are empty's everywhere plus the changes of frames 0..t. Exact for paths that light each pixel
    at most once, as the generator's do (RenderVideo assumes it too).

    Same weights as Conv2D (so Conv2D takes them); the pool is MaxPooling2D's (2x2, strides 2, 'valid').
    """

    def __init__(self, filters, kernel_size, size: int, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self.size = size
        self.input_spec = keras.layers.InputSpec(ndim=3)  # the path, not images

    def build(self, input_shape):
        if self.kernel_size != (2, 2) or self.strides != (1, 1) or self.padding != "valid":
            raise ValueError("PathConv2D computes a 2x2 kernel, stride 1, 'valid' padding (then a 2x2 pool)")
        if self.size < MIN_PATH_MODEL_SIZE:
            raise ValueError(f"PathConv2D needs a size of at least {MIN_PATH_MODEL_SIZE}, got {self.size}")
        super().build((None, self.size, self.size, 1))
        self.input_spec = keras.layers.InputSpec(ndim=3)

    @property
    def pooled(self) -> int:
        """Pool cells along each side: (S - 1) // 2 (the conv gives S - 1 outputs, the pool halves them)."""
        return (self.size - 1) // 2

    def call(self, path):
        size, frames, pooled = self.size, path.shape[1], self.pooled
        rows = keras.ops.cast(path[..., 0], "int32")
        columns = keras.ops.cast(path[..., 1], "int32")
        touched_rows, row_exists = pool_cells_touched(rows, pooled)  # [batch, T, 2]
        touched_columns, column_exists = pool_cells_touched(columns, pooled)
        cells = touched_rows[..., :, None] * pooled + touched_columns[..., None, :]  # [batch, T, 2, 2]
        exists = keras.ops.logical_and(row_exists[..., :, None], column_exists[..., None, :])

        # The frame each pixel of each touched cell's 3x3 block lights up in (frames when none does).
        offsets = keras.ops.arange(3, dtype="int32")
        block_rows = 2 * touched_rows[..., None] + offsets  # [batch, T, 2, 3]
        block_columns = 2 * touched_columns[..., None] + offsets
        pixels = block_rows[:, :, :, None, :, None] * size + block_columns[:, :, None, :, None, :]
        lit_frame = keras.ops.take_along_axis(
            lit_frame_map(rows, columns, size), keras.ops.reshape(pixels, (-1, frames * 2 * 2 * 3 * 3)), axis=1
        )
        lit_frame = keras.ops.reshape(lit_frame, (-1, frames, 2, 2, 3, 3))
        frame = keras.ops.reshape(keras.ops.arange(frames, dtype="int32"), (1, frames, 1, 1, 1, 1))
        before = self.pool_block(keras.ops.cast(lit_frame < frame, self.compute_dtype))
        after = self.pool_block(keras.ops.cast(lit_frame <= frame, self.compute_dtype))
        changes = (after - before) * keras.ops.cast(exists, self.compute_dtype)[..., None]
        empty = self.activation(self.bias) * keras.ops.ones_like(changes[:, 0, 0, 0, :1])
        return (
            keras.ops.reshape(cells, (-1, frames, 4)),
            keras.ops.reshape(changes, (-1, frames, 4, self.filters)),
            empty,
        )

    def pool_block(self, block):
        """[..., 3, 3] pixels of a pool cell's block -> [..., filters]: the cell's pooled conv features."""
        conv = self.bias
        for row in range(2):
            for column in range(2):
                conv = conv + block[..., row : row + 2, column : column + 2, None] * self.kernel[row, column, 0]
        return keras.ops.max(self.activation(conv), axis=(-3, -2))

    def compute_output_shape(self, input_shape):
        batch, frames = input_shape[0], input_shape[1]
        return (batch, frames, 4), (batch, frames, 4, self.filters), (batch, self.filters)

    def compute_output_spec(self, path):
        batch, frames = path.shape[0], path.shape[1]
        return (
            keras.KerasTensor((batch, frames, 4), dtype="int32"),
            keras.KerasTensor((batch, frames, 4, self.filters), dtype=self.compute_dtype),
            keras.KerasTensor((batch, self.filters), dtype=self.compute_dtype),
        )

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def lstm_over_running_sums(start, increments, recurrent_kernel):
    """LSTM's recurrence (gates i, f, c, o; sigmoid and tanh) over the input projections start + increments[0]
    + ... + increments[t] (start [batch, 4 x units], increments [T, batch, 4 x units]): the last output.

    The running sum is carried through the loop (tf.cumsum is a windowed reduction under XLA, T times
    the work). A tf.while_loop with its trip count (XLA needs it for the gradient): unrolled, XLA fused
    each step's elementwise work into the next steps' and recomputed it many times over in the backward pass.
    """
    frames, units = increments.shape[0], recurrent_kernel.shape[0]
    zeros = tf.zeros_like(start[:, :units])

    def step(frame, projection, output, carry):
        projection = projection + tf.gather(increments, frame)
        gates = projection + tf.matmul(output, recurrent_kernel)
        input_gate, forget_gate, candidate, output_gate = tf.split(gates, 4, axis=-1)
        carry = tf.sigmoid(forget_gate) * carry + tf.sigmoid(input_gate) * tf.tanh(candidate)
        return frame + 1, projection, tf.sigmoid(output_gate) * tf.tanh(carry), carry

    loop = tf.while_loop(lambda frame, *_: frame < frames, step, (0, start, zeros, zeros), maximum_iterations=frames)
    return loop[2]


@keras.saving.register_keras_serializable(package="moving_line")
class PathLSTM(keras.layers.Layer):
    """LSTM over the pooled features PathConv2D describes as changes: the input projection as a running sum.

    The LSTM multiplies each frame's features by its kernel. Frame t's product is frame t-1's plus the
    changed features times their kernel rows (at most 4 cells x filters of them), and frame -1's (empty)
    is empty's features times the kernel's rows summed over the cells. Then the recurrence, as LSTM
    computes it (gates i, f, c, o; sigmoid and tanh), returning the last output. Weights: an LSTMCell's
    (kernel, recurrent_kernel, bias), in LSTM's order and shapes, so LSTM takes them.
    """

    def __init__(self, units: int, features: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.features = features
        self.cell = keras.layers.LSTMCell(units, name="lstm_cell")

    def build(self, input_shape):
        self.cell.build((None, self.features))

    def call(self, inputs):
        cells, changes, empty = inputs
        filters, gates = changes.shape[-1], 4 * self.units
        frames, touched = cells.shape[1], cells.shape[2] * filters
        kernel = tf.reshape(self.cell.kernel, (-1, filters, gates))  # [pool cells, filters, gates]
        # Time-major, so that the recurrence reads one frame's projections as one block. Each frame's
        # increment is a [1, 4 x filters] x [4 x filters, gates] product of its changes and their kernel rows.
        # The cells in time-major order, gathered rather than transposed: oneDNN's transpose of an integer tensor
        # logs an error line on CPUs without its integer kernels.
        batch_major_row = tf.range(frames)[:, None] + frames * tf.range(tf.shape(cells)[0])[None, :]  # [T, batch]
        time_major_cells = tf.gather(tf.reshape(cells, (-1, cells.shape[2])), batch_major_row)
        rows = tf.reshape(tf.gather(kernel, time_major_cells), (-1, touched, gates))
        changes = tf.reshape(tf.transpose(changes, (1, 0, 2, 3)), (-1, 1, touched))
        increments = tf.reshape(tf.matmul(changes, rows), (frames, -1, gates))  # [T, batch, gates]
        start = tf.matmul(empty, tf.reduce_sum(kernel, axis=0)) + self.cell.bias  # the empty frame's
        return lstm_over_running_sums(start, increments, self.cell.recurrent_kernel)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "features": self.features}


def build_path_model(size: int, *, incremental: bool = True, xla_layers: bool = False) -> keras.Model:
    """The CNN-LSTM fed the path: path [batch, S, 2] uint8 in, P(right) [batch, 1] out (not compiled).

    incremental: PathConv2D and PathLSTM compute the CNN-LSTM from the path without drawing a frame (plain
    ops: eagerly, in a tf.function, under XLA, on any device). Otherwise RenderVideo draws the frames and
    build_model's layers run on them (xla_layers: its XLA layers, for a step compiled with XLA).
    Either way the weights are build_model's, in its order and shapes: build_model(...).set_weights(
    path_model.get_weights()) gives the same function of the video.
    """
    path = path_input(size)
    if not incremental:
        cnn_lstm = build_model(size, xla_layers=xla_layers)
        return keras.Model(path, cnn_lstm(RenderVideo(size, name="render_video")(path)), name="cnn_lstm_from_path")
    conv = PathConv2D(CONV_FILTERS, CONV_KERNEL, size=size, activation="relu", name="conv")
    summary = PathLSTM(LSTM_UNITS, features=conv.pooled**2 * CONV_FILTERS, name="lstm")(conv(path))
    probability_right = keras.layers.Dense(1, activation="sigmoid", name="probability_right")(summary)
    # Nested like the rendering model, so that either has its CNN-LSTM as the layer "cnn_lstm".
    cnn_lstm = keras.Model(path, probability_right, name="cnn_lstm")
    outer = path_input(size)
    return keras.Model(outer, cnn_lstm(outer), name="cnn_lstm_from_path")


def build_time_distributed_model(size: int) -> keras.Model:
    """The tutorial's form (TimeDistributed wrappers); same layers and weights, Keras's own layers only:
    what model.keras holds, so that plain Keras loads it."""
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
