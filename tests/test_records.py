"""pipeline.records: the generator's examples serialized as TFDS would, framed as TensorFlow reads them."""

from __future__ import annotations

import zlib

import pytest
import tensorflow as tf

from pipeline import contract, generator, records
from pipeline.moving_line import moving_line_dataset_builder as dataset_builder


@pytest.mark.parametrize("size", [2, 8, 50, 255])
@pytest.mark.parametrize("seed", [0, 11])
def test_records_decode_to_the_generators_examples_exactly_as_tfds_serializes_them(size, seed):
    from tensorflow_datasets.core import example_serializer

    from pipeline import records

    name = contract.config_name(size)
    config = name if size in contract.PREDEFINED_COUNTS else dataset_builder.make_config(size)
    features = dataset_builder.Builder(config=config, data_dir="/nonexistent").info.features
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    count = 2 if size == 255 else 40
    expected = generator.generate(seed, "test", 10**9, count, size)
    for index, record in enumerate(records.serialize_examples(seed, "test", 10**9, count, size)):
        example = {name: expected[name][index] for name in ("video", "label", "path")}
        # The same tf.train.Example as TFDS's own encoding and serializer (map order aside), but for the video's
        # zlib stream (pipeline.video_codec's, not zlib's own), which inflates to the same bytes...
        ours, theirs = (
            tf.train.Example.FromString(serialized)
            for serialized in (record, serializer.serialize_example(features.encode_example(example)))
        )
        for proto in (ours, theirs):
            video = proto.features.feature["video"].bytes_list
            video.value[0] = zlib.decompress(video.value[0])
        assert ours == theirs
        # ...which decodes to the generator's example.
        decoded = features.deserialize_example_np(record)
        assert int(decoded["label"]) == int(example["label"])
        assert (decoded["video"] == example["video"]).all() and (decoded["path"] == example["path"]).all()


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_records_written_are_read_back_whole_and_in_order_by_tensorflow_and_array_record(tmp_path, file_format):
    written = records.serialize_examples(3, "train", 0, 50, 8) + [b"", b"x" * 100_000]
    path = str(tmp_path / f"shard.{file_format}")
    writer = records.open_writer(file_format, path)
    for record in written:
        writer.write(record)
    writer.close()
    if file_format == "tfrecord":
        read = [record.numpy() for record in tf.data.TFRecordDataset(path)]
    else:
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        source = ArrayRecordDataSource([path])
        read = [source[index] for index in range(len(source))]
    assert read == written


def test_a_record_is_about_the_bytes_of_its_video_path_and_label():
    assert records.varint(0) == b"\x00" and records.varint(300) == b"\xac\x02"
    mean = records.mean_record_bytes(0, 50)
    assert 400 < mean < 700  # size 50: a video's zlib stream, its path (100 bytes) and the framing
