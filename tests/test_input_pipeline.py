"""The tf.data input: decoding on tiny tensors (eagerly and in Dataset.map), then the real small dataset."""

from __future__ import annotations

import collections
import json
import os
import shutil
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import SMALL, generate_args, run_command

from pipeline import generator
from pipeline.cli import UsageError
from trainer import config as config_lib
from trainer import input_pipeline
from trainer import model as model_lib

SIZE = 3


def tiny_video_feature():
    return tfds.features.Tensor(shape=(SIZE, SIZE, SIZE, 1), dtype=np.uint8, encoding="zlib")


def tiny_example(label: int):
    video = generator.render(np.array([label]), np.array([[0, 1, 2]], np.uint8))[0]
    return video, {"video": tf.constant(zlib.compress(video.tobytes())), "label": tf.constant(label, tf.int64)}


def test_decode_video_eagerly():
    video, example = tiny_example(1)
    decoded = input_pipeline.decode_video(example["video"], tiny_video_feature())
    assert decoded.dtype == tf.uint8 and decoded.shape == (SIZE, SIZE, SIZE, 1)
    np.testing.assert_array_equal(decoded, video)


def test_to_model_inputs_eagerly_and_in_a_dataset_map():
    feature = tiny_video_feature()
    pairs = [tiny_example(label) for label in (0, 1)]
    for video, example in pairs:
        decoded, label = input_pipeline.to_model_inputs(example, feature)
        np.testing.assert_array_equal(decoded, video)
        assert label.dtype == tf.float32 and float(label) == float(example["label"])

    records = tf.data.Dataset.from_tensor_slices(
        {"video": tf.stack([example["video"] for _, example in pairs]), "label": tf.constant([0, 1], tf.int64)}
    )
    mapped = list(records.map(lambda example: input_pipeline.to_model_inputs(example, feature)))
    for (video, _), (decoded, label), expected in zip(pairs, mapped, (0.0, 1.0), strict=True):
        np.testing.assert_array_equal(decoded, video)
        assert float(label) == expected


@pytest.fixture(scope="module")
def builder(small_data_dir):
    return input_pipeline.load_builder(small_data_dir, SMALL["size"])


def small_config(**overrides):
    return {**config_lib.DEFAULTS, "size": SMALL["size"], "batch_size": 16, **overrides}


def test_evaluation_reads_a_split_once_in_stored_order_exactly_as_generated(builder):
    batches = list(input_pipeline.evaluation_dataset(builder, "test", small_config(batch_size=100)))
    assert [len(labels) for _, labels in batches] == [100, 100, 56]  # every example once; the last batch short
    videos = np.concatenate([video for video, _ in batches])
    labels = np.concatenate([label for _, label in batches])
    expected = generator.generate(SMALL["seed"], "test", 0, SMALL["num_test"], SMALL["size"])
    assert videos.dtype == np.uint8
    np.testing.assert_array_equal(videos, expected["video"])
    np.testing.assert_array_equal(labels, expected["label"].astype(np.float32))


def test_validation_paths_come_in_stored_order_and_draw_exactly_the_stored_videos(builder):
    config = small_config(batch_size=100)
    paths = list(input_pipeline.evaluation_dataset(builder, "validation", config, paths=True))
    videos = list(input_pipeline.evaluation_dataset(builder, "validation", config))
    assert [len(labels) for _, labels in paths] == [len(labels) for _, labels in videos]
    expected = generator.generate(SMALL["seed"], "validation", 0, SMALL["num_validation"], SMALL["size"])
    path = np.concatenate([path for path, _ in paths])
    assert path.dtype == np.uint8 and path.shape == (SMALL["num_validation"], SMALL["size"], 2)
    np.testing.assert_array_equal(path, expected["path"])
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in paths]), expected["label"])
    drawn = model_lib.RenderVideo(SMALL["size"])(tf.constant(path)).numpy()
    np.testing.assert_array_equal(drawn, np.concatenate([video for video, _ in videos]))
    full_batches = input_pipeline.evaluation_dataset(builder, "validation", config, full_batches_only=True, paths=True)
    assert [len(labels) for _, labels in full_batches] == [100] * (SMALL["num_validation"] // 100)


def training(builder, start_step=0, steps_per_epoch=8, epochs=3, input_context=None, **overrides):
    config = small_config(deterministic=True, **overrides)
    return input_pipeline.training_dataset(builder, config, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                           start_step=start_step, input_context=input_context)  # fmt: skip


def paths_of(dataset, batches: int) -> list[bytes]:
    return [path.tobytes() for batch, _ in dataset.take(batches).as_numpy_iterator() for path in batch]


def test_training_batches_have_the_global_batch_size_and_never_end(builder):
    dataset = training(builder, batch_size=48, steps_per_epoch=30, epochs=1)
    assert dataset.element_spec[0].shape.as_list() == [48, 8, 2]  # static: drop_remainder
    # 30 batches of 48 run past the 1,024 training examples: an epoch takes passes until its steps are done.
    batches = list(dataset.take(31))
    assert len(batches) == 31 and all(path.dtype == tf.uint8 for path, _ in batches)
    # Every path is one of the split's (the pixel each frame lights), none made up.
    stored = {path.tobytes() for path in generator.generate(SMALL["seed"], "train", 0, 1024, SMALL["size"])["path"]}
    assert all(path.tobytes() in stored for batch, _ in batches for path in batch.numpy())


def test_a_stream_started_at_any_step_is_the_rest_of_the_stream_started_at_zero(builder):
    whole = paths_of(training(builder), 24)
    for start_step in (1, 8, 13, 23):
        assert paths_of(training(builder, start_step=start_step), 24 - start_step) == whole[start_step * 16 :]


def test_each_epoch_has_its_own_order_drawn_from_the_seed_and_the_epoch_alone(builder):
    epochs = [paths_of(training(builder, start_step=8 * epoch), 8) for epoch in range(3)]
    assert len({tuple(epoch) for epoch in epochs}) == 3
    # Epoch 2 is the same whether a run has 3 epochs or 10, and another seed changes it.
    assert paths_of(training(builder, start_step=16, epochs=10), 8) == epochs[2]
    assert paths_of(training(builder, start_step=16, seed=1), 8) != epochs[2]
    # Within an epoch no example comes twice before the split has been read once (8 x 16 < 1,024); at size 8
    # different examples can share a path, so count each path against the split's.
    stored = collections.Counter(
        path.tobytes() for path in generator.generate(SMALL["seed"], "train", 0, 1024, SMALL["size"])["path"]
    )
    assert all(count <= stored[path] for path, count in collections.Counter(epochs[0]).items())


FOUR_SHARDS = {**SMALL, "size": 16, "num_train": 256, "num_validation": 64, "num_test": 64}


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    """256 training examples in 4 shard files; size 16, where no two examples share a path."""
    data_dir = tmp_path_factory.mktemp("four_shards")
    run_command(*generate_args(data_dir, FOUR_SHARDS, extra=["--num_shards=4"]), check=True)
    return input_pipeline.load_builder(str(data_dir), FOUR_SHARDS["size"])


@pytest.mark.slow
def test_input_pipelines_read_their_own_shard_files_when_there_is_one_for_each(four_shards):
    info = four_shards.info.splits["train"]
    assert info.num_shards == 4
    paths = generator.generate(SMALL["seed"], "train", 0, info.num_examples, FOUR_SHARDS["size"])["path"]
    edges = np.cumsum([0, *info.shard_lengths])
    shard_of = {
        path.tobytes(): int(np.searchsorted(edges, index, side="right")) - 1 for index, path in enumerate(paths)
    }
    assert len(shard_of) == len(paths)
    shares = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2)
        # Half a pass each (8 per-replica batches of 8 = 64 of the pipeline's 128): files of the first pass only.
        dataset = training(four_shards, size=16, batch_size=16, input_context=context, steps_per_epoch=8, epochs=1)
        shares.append({shard_of[path] for path in paths_of(dataset, 8)})
    assert len(shares[0]) == len(shares[1]) == 2 and not shares[0] & shares[1], shares


def test_a_dataset_without_the_path_feature_is_refused_with_what_to_do(small_data_dir, tmp_path):
    # An older build (1.0.0 had no path): the same folder with path taken out of its features.
    folder = os.path.join(small_data_dir, "moving_line", f"size_{SMALL['size']}", builder_version())
    old = tmp_path / "moving_line" / f"size_{SMALL['size']}" / builder_version()
    shutil.copytree(folder, old)
    features = json.loads((old / "features.json").read_text())
    del features["featuresDict"]["features"]["path"]
    (old / "features.json").write_text(json.dumps(features))
    with pytest.raises(UsageError, match="without the path feature.*pipeline.generate"):
        input_pipeline.load_builder(str(tmp_path), SMALL["size"])


def builder_version():
    from pipeline.moving_line.moving_line_dataset_builder import Builder

    return str(Builder.VERSION)


def first_labels(builder, **overrides):
    return np.concatenate([labels for _, labels in training(builder, batch_size=64, **overrides).take(4)])


def test_the_deterministic_option_gives_the_same_order_every_time(builder):
    assert paths_of(training(builder, seed=7), 5) == paths_of(training(builder, seed=7), 5)


def test_training_order_is_shuffled_and_the_seed_changes_it(builder):
    stored = generator.generate(SMALL["seed"], "train", 0, 256, SMALL["size"])["label"].astype(np.float32)
    shuffled = first_labels(builder, seed=1)
    assert not np.array_equal(shuffled, stored)
    assert not np.array_equal(shuffled, first_labels(builder, seed=2))
    assert 0.3 < shuffled.mean() < 0.7  # both classes mixed in, not runs of one


def test_the_shuffle_buffer_holds_serialized_records_not_videos(builder):
    # Shuffling before parsing keeps the buffer at ~150 bytes an example here (about 500 at size 50).
    records = input_pipeline.read_serialized(
        builder, "train", shuffle_files=True, seed=0, cycle_length=4, deterministic=True
    )
    assert records.element_spec.dtype == tf.string and records.element_spec.shape == []


def test_a_missing_dataset_says_how_to_make_it(tmp_path):
    with pytest.raises(UsageError, match=r"no moving_line/size_8 dataset .*python -m pipeline.generate"):
        input_pipeline.load_builder(str(tmp_path), 8)


def test_a_dataset_of_another_size_is_not_found(small_data_dir):
    with pytest.raises(UsageError, match="size_9"):
        input_pipeline.load_builder(small_data_dir, 9)
