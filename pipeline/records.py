"""Examples as serialized tf.train.Example records, and the files that hold them, without TensorFlow.

The Beam workers write every shard with these: the records decode exactly as TFDS's own serializer's
(`video` zlib bytes, `label` int64, `path` raw bytes; checked by the tests), the TFRecord files are
TensorFlow's framing (length, masked CRC-32C of the length, data, masked CRC-32C of the data), and the
ArrayRecord files are what TFDS's own ArrayRecord adapter writes (group_size:1, so any record can be
read alone). Keeping TensorFlow and TFDS out of the workers saves seconds of start-up per worker and
the per-example Python of TFDS's generic feature encoding.
"""

from __future__ import annotations

import functools
import os
import struct

import numpy as np

from pipeline import contract, generator, video_codec

_MASK_DELTA = 0xA282EAD8
# TFDS's ArrayRecord adapter writes each record in its own group: random access reads one record.
ARRAY_RECORD_OPTIONS = "group_size:1"


# glibc's malloc tunables for the processes that serialize records, read when a process starts.
# Serializing a chunk makes numpy temporaries of a few MB each; above 128 KiB glibc maps each one
# fresh and unmaps it when freed, and the page faults cost more than the encoding itself
# (BENCHMARKS.md). Raised thresholds keep that memory for the next chunk. Other C libraries ignore them.
MALLOC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def keep_freed_memory_in_children():
    """Processes started from here on (Beam's local workers) keep freed memory for reuse (MALLOC_ENVIRONMENT);
    settings the user made stay."""
    for name, value in MALLOC_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([tag]) + varint(len(payload)) + payload


def _feature_entry(key: bytes, feature: bytes) -> bytes:
    """One entry of Features.feature (a map<string, Feature>): key = 1, value = 2."""
    return _field(0x0A, _field(0x0A, key) + _field(0x12, feature))


def _bytes_feature(value: bytes) -> bytes:
    return _field(0x0A, _field(0x0A, value))  # Feature.bytes_list = 1 { BytesList.value = 1 }


def _int64_feature(value: int) -> bytes:
    return _field(0x1A, _field(0x0A, varint(value)))  # Feature.int64_list = 3 { packed Int64List.value = 1 }


_LABEL_FEATURES = [_feature_entry(b"label", _int64_feature(label)) for label in range(len(contract.CLASS_NAMES))]


class _Prefixes(dict):
    """Bytes before a payload of a given length, made once per length: a record is then a few concatenations."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, length):
        self[length] = prefix = self._make(length)
        return prefix


def _entry_prefix(key: bytes):
    """The bytes of _feature_entry(key, _bytes_feature(value)) before value, for a value of some length."""

    def make(length: int) -> bytes:
        bytes_list = b"\x0a" + varint(length)
        feature = b"\x0a" + varint(len(bytes_list) + length) + bytes_list
        body = _field(0x0A, key) + b"\x12" + varint(len(feature) + length) + feature
        return b"\x0a" + varint(len(body) + length) + body

    return _Prefixes(make)


_PATH_PREFIX = _entry_prefix(b"path")
_VIDEO_PREFIX = _entry_prefix(b"video")
_EXAMPLE_PREFIX = _Prefixes(lambda length: b"\x0a" + varint(length))  # Example.features = 1


def serialize_examples(seed: int, split: str, start: int, count: int, size: int) -> list[bytes]:
    """Examples start..start+count-1 of a split as serialized tf.train.Example records."""
    labels, rows = generator.make_paths(seed, split, start, count, size)
    videos = video_codec.compress_paths(labels, rows)
    path_bytes = generator.pixel_path(labels, rows).tobytes()
    stride = 2 * size
    path_prefix, video_prefix, example_prefix = _PATH_PREFIX[stride], _VIDEO_PREFIX, _EXAMPLE_PREFIX
    records = []
    for index, (label, video) in enumerate(zip(labels.tolist(), videos, strict=True)):
        features = b"".join(
            (
                _LABEL_FEATURES[label],
                path_prefix,
                path_bytes[index * stride : (index + 1) * stride],
                video_prefix[len(video)],
                video,
            )
        )
        records.append(example_prefix[len(features)] + features)
    return records


class TFRecordWriter:
    """TensorFlow's TFRecord framing, uncompressed."""

    def __init__(self, path: str):
        import google_crc32c

        self._value = google_crc32c.value
        from etils import epath

        self._file = epath.Path(path).open("wb")

    def write(self, record: bytes):
        length = struct.pack("<Q", len(record))
        self._file.write(
            length + struct.pack("<I", self._mask(length)) + record + struct.pack("<I", self._mask(record))
        )

    def _mask(self, data: bytes) -> int:
        crc = self._value(data)
        return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF

    def close(self):
        self._file.close()


class ArrayRecordWriter:
    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter as Writer

        self._writer = Writer(path, ARRAY_RECORD_OPTIONS)
        self._path = path

    def write(self, record: bytes):
        self._writer.write(record)

    def close(self):
        if not self._writer.ok():
            raise OSError(f"the ArrayRecord writer failed on {self._path}")
        self._writer.close()


WRITERS = {"tfrecord": TFRecordWriter, "array_record": ArrayRecordWriter}


def open_writer(file_format: str, path: str):
    return WRITERS[file_format](path)


@functools.cache  # the command plans with it, then the builder again
def mean_record_bytes(seed: int, size: int, sample: int = 64) -> float:
    """Serialized bytes of an example, measured on a few training examples."""
    records = serialize_examples(seed, "train", 0, sample, size)
    return float(np.mean([len(record) for record in records]))
