"""pipeline.generate end to end on Beam's runners: the records, read back by TFDS in a process that never imports
this package, are the generator's, whatever the runner settings, shards or worker count; `tfds build` builds it."""

from __future__ import annotations

import os

import pytest
from built_data import (
    dataset_folder,
    example_hashes,
    expected_digests,
    generator_hashes,
    read_info,
    read_without_project,
)
from conftest import SMALL, generate_args, run_command, snapshot

from pipeline import contract

pytestmark = pytest.mark.slow

VERSION = contract.VERSION


def test_other_projects_read_every_split_exactly_as_generated(small_data_dir):
    read = read_without_project(small_data_dir, "moving_line/size_8", 8)
    assert read["project_imported"] == []
    assert read["shape"] == [8, 8, 8, 1] and read["label_names"] == ["left", "right"]
    # The video is recorded as TFDS's own Tensor (our faster encoder writes plain zlib).
    assert read["video_class"] == "tensorflow_datasets.core.features.tensor_feature"
    # Stored in index order, each example exactly the generator's (seed, split, index) example.
    assert read["load"] == read["from_directory"] == expected_digests(SMALL)


def test_default_config_loads_by_bare_name_and_stays_under_600_bytes(tmp_path):
    settings = {"size": 50, "num_train": 48, "num_validation": 16, "num_test": 16, "seed": 5}
    run_command(*generate_args(tmp_path, settings), check=True)
    read = read_without_project(tmp_path, "moving_line", 50)
    assert read["shape"] == [50, 50, 50, 1]
    assert read["load"] == expected_digests(settings)
    folder = dataset_folder(tmp_path, 50)
    on_disk = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder) if ".tfrecord" in name)
    assert on_disk / 80 <= 600


def read_records(path):
    import tensorflow as tf

    return [tf.train.Example.FromString(record.numpy()) for record in tf.data.TFRecordDataset(path)]


@pytest.mark.parametrize(
    "runner",
    [
        ["--runner=FnApiRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"],
        ["--runner=FnApiRunner", "--direct_num_workers=3", "--direct_running_mode=multi_processing"],
    ],
    ids=["one worker in process", "three worker processes"],
)
def test_other_runner_settings_write_the_same_records_as_the_default(small_data_dir, tmp_path, runner):
    run_command(*generate_args(tmp_path, extra=runner), check=True)
    two, one = dataset_folder(small_data_dir, 8), dataset_folder(tmp_path, 8)
    shards = sorted(name for name in os.listdir(two) if ".tfrecord" in name)
    assert shards and shards == sorted(name for name in os.listdir(one) if ".tfrecord" in name)
    for name in shards:
        # Compared as parsed protos: protobuf writes a map's entries in an order that can vary by process.
        assert read_records(os.path.join(two, name)) == read_records(os.path.join(one, name)), name


def test_num_shards_is_honoured(tmp_path):
    settings = {**SMALL, "num_train": 300, "num_validation": 40, "num_test": 40}
    run_command(*generate_args(tmp_path, settings, extra=["--num_shards=4"]), check=True)
    info = read_info(tmp_path)
    shard_lengths = {split["name"]: [int(n) for n in split["shardLengths"]] for split in info["splits"]}
    assert shard_lengths["train"] == [75, 75, 75, 75]
    assert all(len(lengths) == 4 and sum(lengths) == 40 for name, lengths in shard_lengths.items() if name != "train")


def test_same_settings_again_do_nothing_and_other_settings_are_refused(small_data_dir):
    folder = dataset_folder(small_data_dir, 8)
    before = snapshot(folder)
    again = run_command(*generate_args(small_data_dir))
    assert again.returncode == 0 and "nothing to do" in again.stderr
    other = run_command(*generate_args(small_data_dir, {**SMALL, "num_train": 1000}))
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("pipeline.generate: error:")
    assert "already holds a dataset built with" in other.stderr
    assert snapshot(folder) == before


def test_tfds_build_builds_a_predefined_config(tmp_path):
    options = "runner=FnApiRunner,direct_num_workers=2,direct_running_mode=multi_processing"
    # The `tfds` console script, run with this interpreter.
    result = run_command(
        "-c",
        "import sys; from tensorflow_datasets.scripts.cli.main import launch_cli; sys.argv[0] = 'tfds'; launch_cli()",
        "build",
        "pipeline/moving_line",
        "--config=size_8",
        f"--data_dir={tmp_path}",
        f"--beam_pipeline_options={options}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_info(tmp_path)
    assert {split["name"]: sum(int(n) for n in split["shardLengths"]) for split in info["splits"]} == {
        "train": 500,
        "validation": 100,
        "test": 100,
    }
    assert "Donahue" in info["citation"]


def test_two_in_process_workers_write_each_example_once_other_seeds_differ_and_splits_share_none(tmp_path):
    # Size 32: about 10**16 possible videos, so a repeat between splits would be a bug, not chance
    # (at size 8, with a few tens of thousands of possible videos, chance repeats are expected).
    settings = {"size": 32, "num_train": 300, "num_validation": 100, "num_test": 100, "seed": 1}
    two_threads = ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=in_memory"]
    run_command(*generate_args(tmp_path, settings, extra=two_threads), check=True)
    built = example_hashes(str(tmp_path), 32)
    assert built == generator_hashes(settings)  # every example once, in order, the generator's own
    every = [digest for split in built.values() for digest in split]
    assert len(set(every)) == len(every)  # no example repeated, within or across splits
    other_seed = generator_hashes({**settings, "seed": 2})
    for split, digests in built.items():
        assert not set(digests) & set(other_seed[split]), split
