"""The CNN-LSTM: the tutorial's layers, shapes and 240,661 parameters, with time folded into the batch."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pipeline import generator  # noqa: E402
from trainer import model as model_lib  # noqa: E402


def layer_shapes(model):
    return {layer.name: (tuple(layer.output.shape), layer.count_params()) for layer in model.layers}


def test_the_model_at_size_50_has_the_tutorials_layers_shapes_and_parameter_count():
    model = model_lib.build_model(50)
    assert model.count_params() == 240_661
    assert layer_shapes(model) == {
        "video": ((None, 50, 50, 50, 1), 0),
        "to_float": ((None, 50, 50, 50, 1), 0),
        "fold_time": ((None, 50, 50, 1), 0),  # 50 frames per video, one image each
        "conv": ((None, 49, 49, 2), 10),
        "pool": ((None, 24, 24, 2), 0),
        "flatten": ((None, 1152), 0),
        "unfold_time": ((None, 50, 1152), 0),
        "lstm": ((None, 50), 240_600),
        "probability_right": ((None, 1), 51),
    }
    assert model.input.dtype == "uint8"


def test_the_summary_shows_the_layers_and_the_count():
    lines = []
    model_lib.build_model(50).summary(print_fn=lambda line, **_: lines.append(line))
    summary = "\n".join(lines)
    for text in ["conv (Conv2D)", "(None, 49, 49, 2)", "(None, 24, 24, 2)", "(None, 1152)", "lstm (LSTM)", "240,661"]:
        assert text in summary


def test_the_time_distributed_form_has_the_same_parameters():
    assert model_lib.build_time_distributed_model(50).count_params() == 240_661


def test_folding_time_computes_exactly_what_time_distributed_computes():
    folded = model_lib.build_model(8)
    wrapped = model_lib.build_time_distributed_model(8)
    wrapped.set_weights(folded.get_weights())  # same layers in the same order, so the same weights fit
    videos = generator.generate(3, "test", 0, 6, 8)["video"]
    np.testing.assert_allclose(folded.predict(videos, verbose=0), wrapped.predict(videos, verbose=0), atol=1e-6)


def test_frames_of_different_videos_do_not_mix():
    # A batch of two videos must give each the probability it gets alone.
    model = model_lib.build_model(8)
    videos = generator.generate(4, "test", 0, 2, 8)["video"]
    together = model.predict(videos, verbose=0)
    alone = np.concatenate([model.predict(videos[i : i + 1], verbose=0) for i in range(2)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_fold_and_unfold_time_eagerly_and_in_a_dataset_map():
    import tensorflow as tf

    fold, unfold = model_lib.FoldTime(), model_lib.UnfoldTime(3)
    videos = tf.reshape(tf.range(2 * 3 * 2 * 2, dtype=tf.float32), [2, 3, 2, 2, 1])
    images = fold(videos)
    assert images.shape == (6, 2, 2, 1)
    np.testing.assert_array_equal(images[4], videos[1, 1])  # video 1, frame 1
    features = tf.reshape(images, [6, 4])
    np.testing.assert_array_equal(unfold(features), tf.reshape(videos, [2, 3, 4]))

    mapped = tf.data.Dataset.from_tensors(videos).map(lambda video: unfold(tf.reshape(fold(video), [6, 4])))
    np.testing.assert_array_equal(next(iter(mapped)), tf.reshape(videos, [2, 3, 4]))


def test_the_keras_file_round_trips(tmp_path):
    model = model_lib.build_model(8)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    videos = generator.generate(5, "test", 0, 3, 8)["video"]
    np.testing.assert_allclose(loaded.predict(videos, verbose=0), model.predict(videos, verbose=0), atol=1e-7)
    assert loaded.count_params() == model.count_params()


def test_the_xla_layers_have_the_same_shapes_and_weights_and_compute_the_same_outputs():
    keras.utils.set_random_seed(3)
    plain = model_lib.build_model(20)
    xla = model_lib.compile_model(model_lib.build_model(20, xla_layers=True), 0.001, jit_compile=True)
    assert layer_shapes(xla) == layer_shapes(plain)
    assert [type(layer).__name__ for layer in xla.layers if layer.name in ("conv", "pool")] == [
        "XlaConv2D",
        "XlaMaxPooling2D",
    ]
    xla.set_weights(plain.get_weights())  # the same weights, in the same order
    videos = generator.generate(seed=5, split="train", start=0, count=7, size=20)["video"]  # 7: not a round batch
    np.testing.assert_allclose(xla.predict(videos, verbose=0), plain.predict(videos, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_a_model_trained_with_the_xla_layers_trains_and_hands_its_weights_to_keras_layers():
    keras.utils.set_random_seed(0)
    data = generator.generate(seed=1, split="train", start=0, count=64, size=8)
    videos, labels = data["video"], data["label"].astype("float32")
    xla = model_lib.compile_model(model_lib.build_model(8, xla_layers=True), 0.01, jit_compile=True)
    before = xla.evaluate(videos, labels, verbose=0)[0]
    xla.fit(videos, labels, batch_size=16, epochs=5, verbose=0)
    assert xla.evaluate(videos, labels, verbose=0)[0] < before
    plain = model_lib.compile_model(model_lib.build_model(8), 0.01)
    plain.set_weights(xla.get_weights())
    np.testing.assert_allclose(plain.predict(videos, verbose=0), xla.predict(videos, verbose=0), atol=1e-6)


def test_the_xla_layers_refuse_what_they_do_not_compute():
    with pytest.raises(ValueError, match="one-channel"):
        model_lib.XlaConv2D(2, (2, 2))(keras.Input((8, 8, 3)))
    with pytest.raises(ValueError, match="non-overlapping"):
        model_lib.XlaMaxPooling2D((2, 2), strides=1)(keras.Input((8, 8, 1)))


def test_cosine_decay_brings_the_learning_rate_to_zero_at_the_last_step():
    optimizer = model_lib.compile_model(model_lib.build_model(8), 0.002, cosine_decay_steps=100).optimizer
    rates = {}
    for step in (0, 50, 100):
        optimizer.iterations.assign(step)
        rates[step] = float(optimizer.learning_rate)
    assert rates == pytest.approx({0: 0.002, 50: 0.001, 100: 0.0})


@pytest.mark.parametrize("size", [2, 3, 8, 50])
def test_render_video_draws_exactly_the_generators_videos_eagerly_under_xla_and_in_a_dataset_map(size):
    import tensorflow as tf

    data = generator.generate(seed=size, split="train", start=0, count=33, size=size)
    render = model_lib.RenderVideo(size)
    drawn = render(tf.constant(data["path"]))
    assert drawn.dtype == tf.uint8 and tuple(drawn.shape) == (33, size, size, size, 1)
    np.testing.assert_array_equal(drawn.numpy(), data["video"])
    compiled = tf.function(render, jit_compile=True)
    np.testing.assert_array_equal(compiled(tf.constant(data["path"])).numpy(), data["video"])
    mapped = tf.data.Dataset.from_tensor_slices(data["path"]).batch(8).map(render)
    np.testing.assert_array_equal(np.concatenate(list(mapped.as_numpy_iterator())), data["video"])


def test_the_rendering_path_model_is_the_cnn_lstm_fed_by_render_video_with_the_same_weights():
    keras.utils.set_random_seed(4)
    training = model_lib.build_path_model(8, incremental=False)
    assert [layer.name for layer in training.layers] == ["path", "render_video", "cnn_lstm"]
    assert training.count_params() == model_lib.build_model(8).count_params()
    plain = model_lib.build_model(8)
    plain.set_weights(training.get_weights())
    data = generator.generate(seed=6, split="test", start=0, count=10, size=8)
    np.testing.assert_allclose(
        training.predict(data["path"], verbose=0), plain.predict(data["video"], verbose=0), atol=1e-6
    )


@pytest.mark.parametrize("incremental", [True, False])
def test_the_path_models_round_trip_through_a_keras_file(tmp_path, incremental):
    training = model_lib.build_path_model(8, incremental=incremental, xla_layers=True)
    training.save(tmp_path / "training.keras")
    loaded = keras.models.load_model(tmp_path / "training.keras")
    path = generator.generate(seed=2, split="train", start=0, count=4, size=8)["path"]
    np.testing.assert_allclose(loaded.predict(path, verbose=0), training.predict(path, verbose=0), atol=1e-6)


def test_the_training_model_follows_the_configs_incremental_model_key():
    incremental = model_lib.build_path_model(8, incremental=True)
    rendering = model_lib.build_path_model(8, incremental=False, xla_layers=True)
    assert "render_video" not in [layer.name for layer in incremental.layers]
    assert [type(layer).__name__ for layer in rendering.get_layer("cnn_lstm").layers if layer.name == "conv"] == [
        "XlaConv2D"
    ]


# The incremental path model against the rendering one (RenderVideo, Conv2D, MaxPooling2D, Flatten, LSTM, Dense).


def paths_with_borders(size: int, count: int, seed: int) -> np.ndarray:
    """The generator's paths, and paths along the top and bottom rows and zig-zagging on them, both directions."""
    generated = generator.generate(seed=seed, split="train", start=0, count=count, size=size)["path"]
    steps = np.arange(size)
    rows = [np.zeros(size), np.full(size, size - 1), steps % 2, size - 1 - steps % 2]
    along_borders = [np.stack([row, columns], axis=-1) for row in rows for columns in (steps, size - 1 - steps)]
    return np.concatenate([generated, np.array(along_borders, np.uint8)])


def random_weights(model, seed: int) -> list[np.ndarray]:
    """Weights of the scale of Keras's initialisers, a positive and a negative conv bias (empty features 0 and not)."""
    rng = np.random.default_rng(seed)
    weights = [
        rng.normal(0, 1 / np.sqrt(np.prod(w.shape[:-1])), w.shape).astype("float32") for w in model.get_weights()
    ]
    weights[1] = np.array([0.2, -0.1], np.float32)  # the conv's bias: relu(bias) > 0 on empty cells for filter 0
    return weights


def output_and_gradients(model, path, labels):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        probability = model(path)
        loss = keras.ops.mean(keras.losses.binary_crossentropy(labels, probability))
    return [probability, *[tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]]


def assert_equal_within(actual, expected):
    """Each tensor within 1e-5 of the other (relative to its largest magnitude where that is above 1), and within
    1e-4 of its largest magnitude (so that small gradients are compared too)."""
    assert len(actual) == len(expected)
    for got, wanted in zip(actual, expected, strict=True):
        got, wanted = np.asarray(got), np.asarray(wanted)
        assert got.shape == wanted.shape
        largest = float(np.abs(wanted).max())
        np.testing.assert_array_less(np.abs(got - wanted), min(1e-5 * max(1.0, largest), 1e-4 * largest))


@pytest.mark.parametrize("size", [3, 8, 50])
def test_the_incremental_model_computes_the_rendering_models_outputs_and_gradients_eagerly_and_under_xla(size):
    import tensorflow as tf

    incremental = model_lib.build_path_model(size)
    rendering = model_lib.build_path_model(size, incremental=False)
    assert [w.shape for w in incremental.get_weights()] == [w.shape for w in rendering.get_weights()]
    weights = random_weights(rendering, seed=size)
    incremental.set_weights(weights)
    rendering.set_weights(weights)
    path = tf.constant(paths_with_borders(size, count=8, seed=size))
    labels = tf.constant(np.random.default_rng(size).integers(0, 2, (len(path), 1)), tf.float32)

    expected = output_and_gradients(rendering, path, labels)
    assert_equal_within(output_and_gradients(incremental, path, labels), expected)
    compiled = tf.function(lambda path, labels: output_and_gradients(incremental, path, labels), jit_compile=True)
    assert_equal_within(compiled(path, labels), expected)
    # The gradients are not all zero (the comparison would prove little): every weight moves.
    assert all(float(np.abs(gradient).max()) > 1e-4 for gradient in expected[1:])


def test_the_incremental_models_weights_make_the_video_model():
    keras.utils.set_random_seed(7)
    incremental = model_lib.build_path_model(8)
    plain = model_lib.build_model(8)
    assert {layer.name: layer.count_params() for layer in incremental.get_layer("cnn_lstm").layers} == {
        "path": 0,
        "conv": 10,
        "lstm": plain.get_layer("lstm").count_params(),
        "probability_right": 51,
    }
    plain.set_weights(incremental.get_weights())
    data = generator.generate(seed=8, split="test", start=0, count=10, size=8)
    np.testing.assert_allclose(
        incremental.predict(data["path"], verbose=0), plain.predict(data["video"], verbose=0), atol=1e-6
    )


def test_the_incremental_model_is_initialised_as_the_video_model_is():
    keras.utils.set_random_seed(11)
    incremental = model_lib.build_path_model(8).get_weights()
    keras.utils.set_random_seed(11)
    plain = model_lib.build_model(8).get_weights()
    for got, wanted in zip(incremental, plain, strict=True):
        np.testing.assert_array_equal(got, wanted)


def test_the_incremental_model_computes_its_gradients_per_replica_under_a_mirrored_strategy():
    import tensorflow as tf

    devices = [device.name for device in tf.config.list_logical_devices("CPU")][:2]  # two if the CPU is split
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        incremental = model_lib.build_path_model(8)
        optimizer = keras.optimizers.Adam(0.01)
        optimizer.build(incremental.trainable_variables)
    rendering = model_lib.build_path_model(8, incremental=False)
    weights = random_weights(rendering, seed=1)
    incremental.set_weights(weights)
    rendering.set_weights(weights)
    path = tf.constant(paths_with_borders(8, count=4, seed=1))
    labels = tf.constant(path.numpy()[:, 1, 1:] > path.numpy()[:, 0, 1:], tf.float32)  # right: the column grows
    compiled = tf.function(lambda path, labels: output_and_gradients(incremental, path, labels), jit_compile=True)

    def replica_step(path, labels):
        results = compiled(path, labels)
        optimizer.apply(results[1:], incremental.trainable_variables)  # outside XLA, as the training loop does
        return results

    per_replica = tf.function(lambda path, labels: strategy.run(replica_step, args=(path, labels)))(path, labels)
    expected = output_and_gradients(rendering, path, labels)
    for replica in range(strategy.num_replicas_in_sync):
        assert_equal_within([strategy.experimental_local_results(values)[replica] for values in per_replica], expected)
    assert not np.allclose(incremental.get_weights()[2], weights[2])  # the optimizer applied them


@pytest.mark.slow
def test_the_incremental_model_trains():
    keras.utils.set_random_seed(0)
    data = generator.generate(seed=1, split="train", start=0, count=64, size=8)
    paths, labels = data["path"], data["label"].astype("float32")
    model = model_lib.compile_model(model_lib.build_path_model(8), 0.01, jit_compile=True)
    before = model.evaluate(paths, labels, verbose=0)[0]
    model.fit(paths, labels, batch_size=16, epochs=5, verbose=0)
    assert model.evaluate(paths, labels, verbose=0)[0] < before


def test_the_incremental_model_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="at least 3"):
        model_lib.build_path_model(2)
    with pytest.raises(ValueError, match="2x2 kernel"):
        model_lib.PathConv2D(2, (3, 3), size=8)(keras.Input((8, 2), dtype="uint8"))
