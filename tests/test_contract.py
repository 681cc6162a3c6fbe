"""pipeline.contract: names every reader and writer agrees on, and what a whole build is (check_complete).
Readers and generate meeting a damaged build: test_faults_generate.py."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline import contract


def test_names_follow_tfds_templates():
    assert contract.full_name(8) == "moving_line/size_8"
    assert contract.shard_file_name("train", "tfrecord", 3, 22) == "moving_line-train.tfrecord-00003-of-00022"
    assert (
        contract.shard_file_name("test", "array_record", 7, 123456) == "moving_line-test.array_record-000007-of-123456"
    )
    assert contract.default_counts(8) == {"train": 500, "validation": 100, "test": 100}
    assert contract.default_counts(33) == dict(zip(contract.SPLITS, contract.DEFAULT_COUNTS, strict=True))
    assert contract.ordered_formats({"array_record", "tfrecord"}) == ("tfrecord", "array_record")
    temporary = contract.temporary_file_name("moving_line-train.tfrecord-00000-of-00001", "abc")
    assert contract.is_temporary(temporary) and not contract.is_temporary("moving_line-train.tfrecord-00000-of-00001")


@pytest.fixture
def build(small_data_dir, tmp_path):
    folder = tmp_path / "build"
    shutil.copytree(contract.dataset_folder(small_data_dir, 8), folder)
    return folder


def test_a_whole_build_passes_and_each_kind_of_damage_is_named(build):
    assert contract.check_complete(build)["name"] == "moving_line"
    shard = build / contract.shard_file_name("train", "tfrecord", 0, 1)
    sizes = json.loads((build / contract.METADATA_FILE).read_text())["file_bytes"]
    with open(shard, "r+b") as file:
        file.truncate(100)
    with pytest.raises(contract.DamagedDatasetError, match=rf"holds 100 bytes, not the {sizes[shard.name]:,} written"):
        contract.check_complete(build)
    contract.check_complete(build, check_sizes=False)  # left to the reader, which names the bad record
    shard.unlink()
    with pytest.raises(
        contract.DamagedDatasetError, match=rf"\(shard {shard.name} is missing\); run pipeline.generate"
    ):
        contract.check_complete(build)
    (build / contract.INFO_FILE).write_text("{")
    with pytest.raises(contract.DamagedDatasetError, match="its metadata cannot be read: JSONDecodeError"):
        contract.check_complete(build)
    (build / contract.temporary_file_name(shard.name, "killed")).write_bytes(b"half")
    with pytest.raises(contract.DamagedDatasetError, match="a shard file never finished"):
        contract.check_complete(build)
    (build / contract.FEATURES_FILE).unlink()
    with pytest.raises(contract.DamagedDatasetError, match=f"{contract.FEATURES_FILE} is missing"):
        contract.check_complete(build)
