"""The Beam job on Beam's own test runner: each shard holds exactly its index range of the generator's examples."""

import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline import contract, generator, transforms
from pipeline.moving_line import moving_line_dataset_builder as dataset_builder
from pipeline.transforms import SplitPlan, WriteShards, chunk_ranges, shard_bounds, shard_groups, shard_range


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


def test_a_shard_of_a_huge_split_is_planned_without_the_others():
    # A trillion examples in a million shards: shard i is computed alone, in constant memory.
    count, shards = 10**12, 10**6
    assert shard_range(count, shards, 0) == (0, 10**6)
    assert shard_range(count, shards, shards - 1) == (count - 10**6, 10**6)
    plan = SplitPlan("train", count, shards, "/data", ("tfrecord",))
    first = next(iter(plan.shards()))
    assert first.file_name("tfrecord") == "moving_line-train.tfrecord-0000000-of-1000000"


def test_the_job_starts_from_one_element_per_shard_or_groups_of_consecutive_shards_when_there_are_many():
    splits = [SplitPlan("train", 100, 5, "/data", ("tfrecord",)), SplitPlan("test", 10, 2, "/data", ("tfrecord",))]
    assert [(group.split.split, group.first, group.count) for group in shard_groups(splits)] == [
        ("train", 0, 1), ("train", 1, 1), ("train", 2, 1), ("train", 3, 1), ("train", 4, 1), ("test", 0, 1),
        ("test", 1, 1),
    ]  # fmt: skip
    groups = shard_groups(splits, max_groups=3)
    assert [(group.split.split, group.first, group.count) for group in groups] == [
        ("train", 0, 3), ("train", 3, 2), ("test", 0, 2),
    ]  # fmt: skip
    # Every shard exactly once, in order.
    assert [(shard.split, shard.index) for group in groups for shard in group.shards()] == [
        (split.split, index) for split in splits for index in range(split.num_shards)
    ]


def test_write_shards_writes_each_index_range_in_order_in_every_format(tmp_path):
    from array_record.python.array_record_module import ArrayRecordReader

    features = dataset_builder.Builder(config=dataset_builder.make_config(size=6), data_dir=str(tmp_path)).info.features
    formats = ("tfrecord", "array_record")
    splits = [SplitPlan("validation", 11, 3, str(tmp_path), formats), SplitPlan("test", 5, 1, str(tmp_path), formats)]
    written = tmp_path / "written"
    written.mkdir()
    with TestPipeline() as pipeline:
        _ = pipeline | WriteShards(splits, seed=3, size=6, written_folder=str(written))

    for split in splits:
        for plan in split.shards():
            expected = generator.generate(3, plan.split, plan.start, plan.count, 6)
            tfrecords = list(tf.data.TFRecordDataset(str(tmp_path / plan.file_name("tfrecord"))).as_numpy_iterator())
            reader = ArrayRecordReader(str(tmp_path / plan.file_name("array_record")))
            assert reader.read_all() == tfrecords  # the same records in both formats
            # Decoded with the dataset's own features, as a reader of the files would.
            decoded = [features.deserialize_example_np(record) for record in tfrecords]
            assert [int(record["label"]) for record in decoded] == expected["label"].tolist()
            for record, video, path in zip(decoded, expected["video"], expected["path"], strict=True):
                assert (record["video"] == video).all() and (record["path"] == path).all()
    recorded = transforms.read_written_shards(str(written))
    assert sorted((split, index, examples) for split, index, examples, _, _ in recorded) == sorted(
        [("test", 0, 5)] + [("validation", index, count) for index, (_, count) in enumerate(shard_bounds(11, 3))]
    )
    for split, index, _, serialized, files in recorded:
        assert serialized > 0
        assert sorted(files) == sorted(
            contract.shard_file_name(split, name, index, 3 if split == "validation" else 1) for name in formats
        )
        assert all((tmp_path / name).stat().st_size == size for name, size in files.items())
    # Nothing else: no temporary files left beside the shards or the notes.
    assert len(list(tmp_path.iterdir())) == 2 * 4 + 1
    assert len(list(written.iterdir())) == 4


def test_a_shard_written_twice_ends_as_one_whole_file_and_a_killed_runs_leftover_is_removed(tmp_path):
    # Dask runs again what a lost worker had finished; Dataflow retries bundles, and may run one twice at once.
    plan = next(SplitPlan("train", 3000, 2, str(tmp_path), ("tfrecord",)).shards())
    written = tmp_path / "written"
    written.mkdir()
    write = transforms.WriteShard(seed=0, size=8, written_folder=str(written))
    final = tmp_path / plan.file_name("tfrecord")
    first_note = list(write.process(plan))
    first = final.read_bytes()
    # A run killed mid-shard left its temporary file; the next run is not disturbed by it.
    leftover = tmp_path / contract.temporary_file_name(final.name, "killed")
    leftover.write_bytes(first[:1000])
    assert list(write.process(plan)) == first_note
    assert final.read_bytes() == first
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([final.name, leftover.name, "written"])
    assert transforms.read_written_shards(str(written)) == first_note
    assert transforms.remove_temporaries(str(tmp_path)) == [leftover.name]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([final.name, "written"])


@pytest.mark.parametrize(
    "counts, workers, expected",
    [
        ((1_000_000, 50_000, 50_000), 2, 50_000),  # 5% splits set the size: 22 equal shards, 11 per worker
        ((100_000, 5_000, 5_000), 2, 5_000),
        ((150_000, 300, 300), 2, 9_413),  # tiny splits do not shrink the others' shards
        ((1024, 256, 256), 2, dataset_builder.MIN_SHARD_EXAMPLES),
        ((1_000_000, 50_000, 50_000), None, None),  # a remote runner balances by itself
    ],
)
def test_local_shards_are_of_about_equal_size_with_several_per_worker(counts, workers, expected):
    assert dataset_builder.balance_examples(counts, workers) == expected
