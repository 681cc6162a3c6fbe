"""trainer.corrupt_data: a damaged shard found and named with how many of its records can be read; a read error
from it becomes one line saying what to do. Training and evaluation on damaged shards: test_faults_training.py."""

from __future__ import annotations

import shutil

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline import cli, contract
from trainer import corrupt_data


@pytest.fixture
def damaged(small_data_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(small_data_dir, data_dir)
    folder = contract.dataset_folder(data_dir, 8)
    shard = f"{folder}/{contract.shard_file_name('validation', 'tfrecord', 0, 1)}"
    with open(shard, "r+b") as file:
        file.truncate(file.seek(0, 2) // 2 + 7)  # mid-record
    return tfds.builder_from_directory(folder), shard


def test_a_cut_shard_is_found_with_its_readable_records_and_whole_splits_are_not(damaged):
    builder, shard = damaged
    assert corrupt_data.scan_split(builder, "train") == []
    (found,) = corrupt_data.scan_split(builder, "validation")
    assert found.path == shard and found.expected == 256 and 0 < found.readable < 256
    assert found.problem.startswith("truncated record at ")
    assert found.describe() == f"{shard} ({found.problem}; {found.readable} of 256 records readable)"


def test_a_read_error_names_the_shard_and_the_two_ways_out(damaged, capsys):
    builder, shard = damaged
    with pytest.raises(cli.FaultError) as raised, corrupt_data.named_in_errors(builder, ["validation"], "--skip"):
        for _ in tf.data.TFRecordDataset(shard):
            pass
    assert str(raised.value).startswith(f"corrupt data in {shard} (truncated record at ")
    assert "regenerate the dataset" in str(raised.value) and str(raised.value).endswith("with --skip")
    skipped = corrupt_data.log_skipped("demo", builder, "validation")
    assert 0 < skipped < 256 and f"skipped {skipped:,} of 256 validation records ({shard}" in capsys.readouterr().err
