"""The Beam job on Beam's own test runner: each shard holds exactly its index range of the generator's examples."""

import json

import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline import generator
from pipeline.moving_line import moving_line_dataset_builder as dataset_builder
from pipeline.transforms import ShardPlan, WriteShards, chunk_ranges, shard_bounds


@pytest.mark.parametrize(
    "count, chunk, start, expected",
    [(0, 4, 0, []), (3, 4, 0, [(0, 3)]), (8, 4, 0, [(0, 4), (4, 4)]), (9, 4, 10, [(10, 4), (14, 4), (18, 1)])],
)
def test_chunk_ranges_cover_every_index_once(count, chunk, start, expected):
    assert chunk_ranges(count, chunk, start) == expected


@pytest.mark.parametrize(
    "count, shards, expected",
    [(10, 1, [(0, 10)]), (10, 3, [(0, 3), (3, 3), (6, 4)]), (4, 4, [(0, 1), (1, 1), (2, 1), (3, 1)])],
)
def test_shard_bounds_are_consecutive_and_nearly_equal(count, shards, expected):
    assert shard_bounds(count, shards) == expected


def test_write_shards_writes_each_index_range_in_order_and_records_what_it_wrote(tmp_path):
    features = dataset_builder.Builder(config=dataset_builder.make_config(size=6), data_dir=str(tmp_path)).info.features
    plans = [
        ShardPlan("validation", index, start, count, str(tmp_path / f"validation-{index}.tfrecord"))
        for index, (start, count) in enumerate(shard_bounds(11, 3))
    ] + [ShardPlan("test", 0, 0, 5, str(tmp_path / "test-0.tfrecord"))]
    shards_path = str(tmp_path / "shards.json")
    with TestPipeline() as pipeline:
        _ = pipeline | WriteShards(plans, seed=3, size=6, features=features, shards_path=shards_path)

    for plan in plans:
        expected = generator.generate(3, plan.split, plan.start, plan.count, 6)
        # Decoded with the dataset's own features, as a reader of the files would.
        records = [
            features.deserialize_example_np(record) for record in tf.data.TFRecordDataset(plan.path).as_numpy_iterator()
        ]
        assert [int(record["label"]) for record in records] == expected["label"].tolist()
        assert all((record["video"] == video).all() for record, video in zip(records, expected["video"], strict=True))
    with open(shards_path) as file:
        recorded = json.load(file)
    assert sorted((split, index, examples) for split, index, examples, _ in recorded) == sorted(
        [("test", 0, 5)] + [("validation", index, count) for index, (_, count) in enumerate(shard_bounds(11, 3))]
    )
    assert all(size > 0 for *_, size in recorded)
