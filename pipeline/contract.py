"""The moving_line dataset's contract: what every reader and writer of it agrees on.

Name, version, splits, class names, the predefined configs, the folder of a size, the file
formats, and what a whole build looks like (`check_complete`). The builder, the generate and
show commands, the benchmarks and the tests take these from here; nothing else spells them.
Imports nothing heavy: Beam workers and readers import it too.
"""

from __future__ import annotations

import json
import os
import re

from pipeline import cli

NAME = "moving_line"
VERSION = "1.1.0"
RELEASE_NOTES = {
    "1.0.0": "First release: video (zlib uint8) and label; Philox stream per (seed, split).",
    "1.1.0": "Adds path: the (row, column) each frame lights, 2 bytes a frame, to draw videos on the accelerator.",
}
SPLITS = ("train", "validation", "test")
CLASS_NAMES = ("left", "right")  # label 0 = left, 1 = right
DEFAULT_SIZE = 50
# Predefined configs: size -> examples per split (train, validation, test) when a build does not say.
PREDEFINED_COUNTS = {50: (10_000, 1_000, 2_000), 16: (2_000, 200, 500), 8: (500, 100, 100)}
# Any other size takes these counts.
DEFAULT_COUNTS = PREDEFINED_COUNTS[DEFAULT_SIZE]
DEFAULT_SEED = 0

# File formats a build can write (TFDS's names). The first of a build's formats is the one TFDS's
# metadata names as the dataset's file format; the others are its alternative_file_formats. TFRecord,
# when written, always comes first: tf.data (tfds.load, the trainer) reads only TFRecord files.
FILE_FORMATS = ("tfrecord", "array_record")
DEFAULT_FILE_FORMATS = ("tfrecord",)
RANDOM_ACCESS_FORMATS = ("array_record",)

INFO_FILE = "dataset_info.json"
FEATURES_FILE = "features.json"
# What decides the content (size, seed, counts) and the bytes of every shard file, beside the shards.
METADATA_FILE = "metadata.json"


def config_name(size: int) -> str:
    return f"size_{size}"


def full_name(size: int) -> str:
    return f"{NAME}/{config_name(size)}"


def default_counts(size: int) -> dict[str, int]:
    return dict(zip(SPLITS, PREDEFINED_COUNTS.get(size, DEFAULT_COUNTS), strict=True))


def config_folder(data_dir: str, size: int) -> str:
    return os.path.join(os.fspath(data_dir), NAME, config_name(size))


def dataset_folder(data_dir: str, size: int) -> str:
    """DATA_DIR/moving_line/size_<S>/<VERSION>: where a finished build of this version lives."""
    return os.path.join(config_folder(data_dir, size), VERSION)


def ordered_formats(formats) -> tuple[str, ...]:
    """The formats in the order the metadata records them: TFRecord first when present."""
    return tuple(name for name in FILE_FORMATS if name in set(formats))


def shard_file_name(split: str, file_format: str, index: int, num_shards: int) -> str:
    """TFDS's default file name template, {name}-{split}.{format}-{index}-of-{count}, 5 digits or more."""
    digits = max(5, len(str(num_shards)))
    return f"{NAME}-{split}.{file_format}-{index:0{digits}d}-of-{num_shards:0{digits}d}"


# A shard file being written: .NAME.incomplete-TOKEN beside NAME (TFDS's readers list no such name).
TEMPORARY_MARK = ".incomplete-"


def temporary_file_name(name: str, token: str) -> str:
    return f".{name}{TEMPORARY_MARK}{token}"


def is_temporary(name: str) -> bool:
    return name.startswith(".") and TEMPORARY_MARK in name


# What a build writes into its version folder: the metadata, the label names, the shards, the shards being
# written (is_temporary, and TFDS's own incomplete.<32 hex>.NAME files) and the builder's notes of the shards
# written (moving_line_dataset_builder.WRITTEN_SHARDS_FOLDER). pipeline.generate deletes no folder holding more.
BUILD_FILE = re.compile(
    r"dataset_info\.json|features\.json|metadata\.json|\w+\.labels\.txt|written-shards"
    rf"|{NAME}-\w+\.({'|'.join(FILE_FORMATS)})-\d{{5,}}-of-\d{{5,}}|incomplete\.[0-9a-f]{{32}}\..+"
)
# The folders a build works in beside its version folder, deleted when a killed build left them: TFDS's
# (incomplete.<6 letters or digits>_<version>) and pipeline.generate's own (incomplete.downloads-*, .progress-*).
INCOMPLETE_FOLDER = re.compile(r"incomplete\.([A-Z0-9]{6}_\d+\.\d+\.\d+|downloads-\w+|progress-\w+)")


def is_build_file(name: str) -> bool:
    return bool(BUILD_FILE.fullmatch(name)) or is_temporary(name)


class DamagedDatasetError(cli.FaultError):
    """A dataset folder that is not a whole build; the message says what is wrong and how to rebuild."""


def read_json(path: str):
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path) as file:
            return json.loads(file.read())
    with open(path) as file:
        return json.load(file)


def path_exists(path: str) -> bool:
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def size_of(path: str) -> int:
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.stat(path).length
    return os.path.getsize(path)


def list_folder(folder: str) -> list[str]:
    if "://" in folder:
        import tensorflow as tf

        return [name.rstrip("/") for name in tf.io.gfile.listdir(folder)]
    return os.listdir(folder)


def rebuild_advice(folder: str) -> str:
    return f"run pipeline.generate with the settings it was built with to rebuild it, or delete {folder}"


def check_complete(folder: str, check_sizes: bool = True) -> dict:
    """Checks that folder holds a whole build; returns its dataset_info.json, or raises DamagedDatasetError.

    A whole build has readable dataset_info.json and features.json, and every shard file the metadata
    lists, in every format it lists, with the number of bytes the build wrote (recorded in metadata.json
    by pipeline.generate; builds made before that record are checked for the files alone), and no shard
    file still being written (a build that ended while one was, or a copy taken then). Reads no record.
    check_sizes=False leaves shards cut short or damaged inside to a reader that reads them (the trainer
    names the bad records and can skip them).
    """
    folder = os.fspath(folder).rstrip("/")

    def damaged(what: str):
        return DamagedDatasetError(f"the dataset in {folder} is damaged ({what}); {rebuild_advice(folder)}")

    for name in (INFO_FILE, FEATURES_FILE):
        if not path_exists(os.path.join(folder, name)):
            raise damaged(f"{name} is missing")
    temporary = sorted(name for name in list_folder(folder) if is_temporary(name))
    if temporary:
        raise damaged(f"it holds {temporary[0]}, a shard file never finished")
    try:
        info = read_json(os.path.join(folder, INFO_FILE))
        read_json(os.path.join(folder, FEATURES_FILE))
        formats = [info.get("fileFormat") or "tfrecord", *info.get("alternativeFileFormats", [])]
        splits = {split["name"]: [int(length) for length in split.get("shardLengths", [])] for split in info["splits"]}
    except (ValueError, KeyError, TypeError) as error:
        raise damaged(f"its metadata cannot be read: {type(error).__name__}") from None
    metadata_path = os.path.join(folder, METADATA_FILE)
    file_bytes = {}
    if path_exists(metadata_path):
        try:
            file_bytes = read_json(metadata_path).get("file_bytes", {})
        except ValueError:
            raise damaged(f"{METADATA_FILE} cannot be read") from None
    for split, lengths in splits.items():
        for file_format in formats:
            for index in range(len(lengths)):
                name = shard_file_name(split, file_format, index, len(lengths))
                path = os.path.join(folder, name)
                if not path_exists(path):
                    raise damaged(f"shard {name} is missing")
                expected = file_bytes.get(name) if check_sizes else None
                if expected is not None and size_of(path) != expected:
                    raise damaged(f"shard {name} holds {size_of(path):,} bytes, not the {expected:,} written")
    return info
