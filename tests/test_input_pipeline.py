"""The tf.data input: decoding on tiny tensors (eagerly and in Dataset.map), then the real small dataset."""

from __future__ import annotations

import collections
import json
import os
import shutil
import threading
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import SMALL

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


# The same order on any topology (trainer.input_pipeline.training_dataset): W input pipelines of L replicas each,
# built as tf.distribute builds them, one after another in this process.


def global_batches(builder, pipelines: int, replicas_each: int = 1, steps: int = 12, **overrides) -> list[list[bytes]]:
    """The examples of the first global batches (each as a sorted list of path bytes), put together from the
    per-replica batches of every input pipeline."""
    replicas = pipelines * replicas_each
    shares = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, replicas) if replicas > 1 else None
        batches = list(training(builder, input_context=context, **overrides).take(steps * replicas_each))
        shares.append([batches[step * replicas_each : (step + 1) * replicas_each] for step in range(steps)])
    return [
        sorted(path.tobytes() for share in shares for paths, _ in share[step] for path in paths.numpy())
        for step in range(steps)
    ]


@pytest.fixture(scope="module")
def one_device_batches(builder):
    """The first 16 global batches on one device (2 epochs of 8 steps)."""
    return global_batches(builder, 1, steps=16)


# A mirror of 2, 2 workers; 4 and 8 workers and 2 of 2 replicas each in the whole suite only (more pipelines to build).
TOPOLOGIES = [(1, 2), (2, 1)] + [pytest.param(*many, marks=pytest.mark.slow) for many in ((4, 1), (8, 1), (2, 2))]


@pytest.mark.parametrize(("pipelines", "replicas_each"), TOPOLOGIES)
def test_each_global_batch_holds_the_same_examples_on_any_number_of_pipelines_and_replicas(
    builder, one_device_batches, pipelines, replicas_each
):
    assert global_batches(builder, pipelines, replicas_each, steps=16) == one_device_batches


def test_a_stream_resumed_on_other_pipelines_goes_on_with_the_same_global_batches(builder, one_device_batches):
    # Resumed mid-epoch 2 on 2 workers of 2 replicas each.
    assert global_batches(builder, 2, 2, steps=3, start_step=13) == one_device_batches[13:16]


def test_input_streams_define_the_order_and_must_share_the_batch_and_the_pipelines(builder):
    four_streams = global_batches(builder, 1, steps=4, input_streams=4)
    assert four_streams != global_batches(builder, 1, steps=4)
    assert global_batches(builder, 2, steps=4, input_streams=4) == four_streams
    with pytest.raises(UsageError, match=r"3 input pipelines cannot share this run's 8 input streams evenly.*"
                                         r"use 1, 2, 4 or 8 input pipelines"):  # fmt: skip
        global_batches(builder, 3)
    with pytest.raises(UsageError, match=r"batch_size 12 does not split evenly over input_streams 8.*"
                                         r"set input_streams to one of 1, 2, 3, 4, 6 or 12"):  # fmt: skip
        global_batches(builder, 1, batch_size=12)


def bytes_read() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def test_each_of_four_input_pipelines_reads_about_a_quarter_of_the_split(builder):
    info = builder.info.splits["train"]
    split_bytes = sum(os.path.getsize(path) for path in info.filepaths)
    steps = info.num_examples // 16  # one pass
    shares = []
    for pipeline in range(4):
        context = tf.distribute.InputContext(4, pipeline, 4)
        dataset = training(builder, input_context=context, steps_per_epoch=steps, epochs=1)
        before = bytes_read()
        assert sum(len(labels) for _, labels in dataset.take(steps)) == info.num_examples // 4
        shares.append((bytes_read() - before) / split_bytes)
    # Its quarter, and the headers of the records its streams skip to their start (13 of the 126 bytes a record
    # takes here, for at most the one shard file of this split): far from the whole split each.
    assert all(0.25 <= share < 0.45 for share in shares), shares
    assert sum(shares) < 1.5, shares


def test_every_input_pipeline_validates_its_part_of_the_same_first_records(builder):
    config = small_config()
    whole = [path.tobytes() for paths, _ in input_pipeline.validation_dataset(builder, config, 4).take(4)
             for path in paths.numpy()]  # fmt: skip
    assert whole == [path.tobytes() for paths, _ in
                     input_pipeline.evaluation_dataset(builder, "validation", config, paths=True).take(4)
                     for path in paths.numpy()]  # fmt: skip
    for pipelines, replicas in ((2, 2), (4, 4), (2, 4)):
        parts = []
        for pipeline in range(pipelines):
            context = tf.distribute.InputContext(pipelines, pipeline, replicas)
            batches = list(
                input_pipeline.validation_dataset(builder, config, 4, context).take(4 * replicas // pipelines)
            )
            assert {len(labels) for _, labels in batches} == {16 // replicas}
            parts += [path.tobytes() for paths, _ in batches for path in paths.numpy()]
        assert parts == whole


def test_a_shard_cut_short_skipped_when_asked_leaves_full_batches_from_what_is_left(small_data_dir, tmp_path):
    """Seven of the eight input streams lose every record: the eighth fills their place, and the stream goes on
    (each stream reads a bounded number of passes: an endless one with nothing left would never yield)."""
    data_dir = tmp_path / "data"
    shutil.copytree(small_data_dir, data_dir)
    (shard,) = data_dir.rglob("*-train.tfrecord-*")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 8 + 40])
    cut_short = input_pipeline.load_builder(str(data_dir), SMALL["size"])
    batches, reader = [], threading.Thread(target=lambda: batches.extend(paths_of(
        training(cut_short, steps_per_epoch=2, epochs=1, skip_corrupt_records=True), 6)), daemon=True)  # fmt: skip
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive(), "no training batch within 60 s"
    assert len(batches) == 6 * 16 and len(set(batches)) < SMALL["num_train"] // 8


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


def service_pieces(sent) -> tf.data.Dataset:
    """Pieces as 2 tf.data service workers send them: (step, worker) in the order given; worker w holds places w
    and w + 2 of each step, labelled step * 10 + place."""
    steps, workers = [step for step, _ in sent], [worker for _, worker in sent]
    places = [[worker, worker + 2] for _, worker in sent]
    labels = [[step * 10.0 + place for place in where] for step, where in zip(steps, places, strict=True)]
    paths = np.zeros([len(sent), 2, SMALL["size"], 2], np.uint8)
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(steps, tf.int64), tf.constant(workers, tf.int64), tf.constant(places, tf.int64), paths,
         tf.constant(labels, tf.float32))
    )  # fmt: skip


def test_each_steps_pieces_from_the_service_workers_are_put_together_in_order_whoever_sent_first():
    # Worker 1 was slow to start: worker 0's pieces of 3 steps come first.
    sent = [(5, 0), (6, 0), (7, 0), (5, 1), (6, 1), (8, 0), (7, 1), (8, 1)]
    steps = input_pipeline.in_step_order(service_pieces(sent), workers=2, start_step=5)
    assert [labels.tolist() for _, labels in steps.as_numpy_iterator()] == [
        [step * 10.0 + place for place in range(4)] for step in (5, 6, 7, 8)
    ]


def test_a_service_worker_that_restarted_stops_the_run_rather_than_change_the_order():
    sent = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (0, 1)]  # worker 1 started again from the run's first step
    steps = input_pipeline.in_step_order(service_pieces(sent), workers=2, start_step=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=input_pipeline.SERVICE_STEP_ERROR
                       + r" 1 sent a piece of step 0 where step 2 was due: it restarted mid-run"):  # fmt: skip
        list(steps)
