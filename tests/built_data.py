"""What the generate tests share: a build read back by TFDS alone, and what it should hold."""

from __future__ import annotations

import hashlib
import json
import os

from conftest import last_error_line, run_command

from pipeline import contract, generator

VERSION = contract.VERSION

# Run in a fresh interpreter that never imports this project: prints, per split, the count and a
# hash of (label, video, path) in stored order, and whether any project module got imported.
READ_WITHOUT_PROJECT = """
import hashlib, json, sys
import tensorflow_datasets as tfds
data_dir, name, folder = sys.argv[1:4]
def digest(dataset):
    hasher, count = hashlib.sha256(), 0
    for batch in tfds.as_numpy(dataset.batch(1024)):  # read in batches: example by example is slow in Python
        for label, video, path in zip(batch["label"], batch["video"], batch["path"], strict=True):
            hasher.update(bytes([int(label)]) + video.tobytes() + path.tobytes())
            count += 1
    return count, hasher.hexdigest()
loaded = tfds.load(name, data_dir=data_dir)
from_folder = tfds.builder_from_directory(folder)
result = {
    "load": {split: digest(dataset) for split, dataset in loaded.items()},
    "from_directory": {split: digest(from_folder.as_dataset(split=split)) for split in from_folder.info.splits},
    "shape": list(from_folder.info.features["video"].shape),
    "label_names": from_folder.info.features["label"].names,
    "video_class": type(from_folder.info.features["video"]).__module__,
    "project_imported": sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "trainer")),
}
print(json.dumps(result))
"""


def expected_digests(settings):
    result = {}
    for split in generator.SPLITS:
        count = settings[f"num_{split}"]
        arrays = generator.generate(settings["seed"], split, 0, count, settings["size"])
        hasher = hashlib.sha256()
        for label, video, path in zip(arrays["label"], arrays["video"], arrays["path"], strict=True):
            hasher.update(bytes([int(label)]) + video.tobytes() + path.tobytes())
        result[split] = [count, hasher.hexdigest()]
    return result


def dataset_folder(data_dir, size):
    return os.path.join(data_dir, "moving_line", f"size_{size}", VERSION)


def read_without_project(data_dir, name, size):
    result = run_command("-c", READ_WITHOUT_PROJECT, str(data_dir), name, dataset_folder(data_dir, size), check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_info(data_dir):
    with open(os.path.join(dataset_folder(data_dir, 8), "dataset_info.json")) as file:
        return json.load(file)


def example_hashes(data_dir: str, size: int) -> dict[str, list[str]]:
    """Per split, the SHA-256 of each stored example (label byte + video bytes), read with TFDS alone."""
    script = """
import hashlib, json, sys
import tensorflow_datasets as tfds
folder = sys.argv[1]
builder = tfds.builder_from_directory(folder)
print(json.dumps({
    split: [hashlib.sha256(bytes([int(label)]) + video.tobytes()).hexdigest()
            for batch in tfds.as_numpy(builder.as_dataset(split=split).batch(1024))
            for label, video in zip(batch["label"], batch["video"], strict=True)]
    for split in builder.info.splits
}))
"""
    folder = os.path.join(data_dir, "moving_line", f"size_{size}", VERSION)
    return json.loads(run_command("-c", script, folder, check=True).stdout.strip().splitlines()[-1])


def generator_hashes(settings: dict) -> dict[str, list[str]]:
    hashes = {}
    for split in generator.SPLITS:
        arrays = generator.generate(settings["seed"], split, 0, settings[f"num_{split}"], settings["size"])
        hashes[split] = [
            hashlib.sha256(bytes([int(label)]) + video.tobytes()).hexdigest()
            for label, video in zip(arrays["label"], arrays["video"], strict=True)
        ]
    return hashes


def assert_one_line_error(result, prog: str, exit_code: int, *fragments):
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = last_error_line(result, prog)
    for fragment in fragments:
        assert fragment in line, line
