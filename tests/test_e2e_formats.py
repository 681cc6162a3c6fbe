"""ArrayRecord beside TFRecord: random access with tfds.data_source, Grain and PyTorch, in processes that never
import this project; the same decoded examples in both formats, exactly the generator's."""

import json
import re
import shlex
import shutil

import pytest
from conftest import generate_args, run_command

from pipeline import contract, generator

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e_formats")]  # one worker: module fixtures

SETTINGS = {"size": 8, "num_train": 96, "num_validation": 16, "num_test": 24, "seed": 4}
FORMATS = "--file_format=tfrecord,array_record"

# Run in a fresh interpreter: reads the dataset as another project would and prints one JSON line.
READ_RANDOM_ACCESS = """
import hashlib, json, sys
import numpy as np
import tensorflow_datasets as tfds

data_dir, name = sys.argv[1:3]

def digest(example):
    return hashlib.sha256(
        bytes([int(example["label"])]) + np.asarray(example["video"]).tobytes() + np.asarray(example["path"]).tobytes()
    ).hexdigest()

source = tfds.data_source(name, split="train", data_dir=data_dir)
tfrecord = [digest(example) for example in tfds.as_numpy(tfds.load(name, split="train", data_dir=data_dir))]
result = {
    "source_type": type(source).__name__,
    "length": len(source),
    "by_index": [digest(source[index]) for index in range(len(source))],
    "batched": [digest(example) for example in source.__getitems__([5, 0, 7])],
    "tfrecord": tfrecord,
    "video_shape": list(source[0]["video"].shape),
}
if "grain" in sys.argv[3:]:
    import grain

    def grain_order(seed):
        dataset = grain.MapDataset.source(source).shuffle(seed=seed).batch(8)
        return [[digest({key: batch[key][row] for key in batch}) for row in range(len(batch["label"]))]
                for batch in dataset]

    sampler = grain.samplers.IndexSampler(num_records=len(source), shuffle=True, seed=3, num_epochs=1)
    loader = grain.DataLoader(
        data_source=source, sampler=sampler, operations=[grain.transforms.Batch(batch_size=8)], worker_count=2
    )
    result["grain_map"] = grain_order(1)
    result["grain_map_again"] = grain_order(1)
    result["grain_map_other_seed"] = grain_order(2)
    result["grain_loader"] = [
        [digest({key: batch[key][row] for key in batch}) for row in range(len(batch["label"]))] for batch in loader
    ]
    result["grain_loader_again"] = [
        [digest({key: batch[key][row] for key in batch}) for row in range(len(batch["label"]))]
        for batch in grain.DataLoader(data_source=source, sampler=sampler,
                                      operations=[grain.transforms.Batch(batch_size=8)], worker_count=2)
    ]
if "torch" in sys.argv[3:]:
    import torch

    # Forked workers crash once TensorFlow is loaded in the parent: start them fresh.
    loader = torch.utils.data.DataLoader(
        source, batch_size=8, shuffle=False, num_workers=2, multiprocessing_context="spawn"
    )
    batches = list(loader)
    result["torch_types"] = sorted({type(value).__name__ for batch in batches for value in batch.values()})
    result["torch"] = [
        digest({key: batch[key][row].numpy() for key in batch})
        for batch in batches
        for row in range(len(batch["label"]))
    ]
result["project_imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "trainer"))
print(json.dumps(result))
"""


def expected_digests(settings, split="train"):
    import hashlib

    arrays = generator.generate(settings["seed"], split, 0, settings[f"num_{split}"], settings["size"])
    return [
        hashlib.sha256(bytes([int(label)]) + video.tobytes() + path.tobytes()).hexdigest()
        for label, video, path in zip(arrays["label"], arrays["video"], arrays["path"], strict=True)
    ]


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("formats")
    run_command(*generate_args(data_dir, SETTINGS, extra=[FORMATS]), check=True)
    return str(data_dir)


def read(data_dir, *readers):
    result = run_command("-c", READ_RANDOM_ACCESS, data_dir, contract.full_name(SETTINGS["size"]), *readers, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_metadata_names_tfrecord_first_and_array_record_as_the_alternative(both_formats):
    folder = contract.dataset_folder(both_formats, SETTINGS["size"])
    with open(f"{folder}/{contract.INFO_FILE}") as file:
        info = json.load(file)
    assert info["fileFormat"] == "tfrecord" and info["alternativeFileFormats"] == ["array_record"]
    import tensorflow_datasets as tfds

    # The trainer reads the split's filepaths with tf.data: they stay the TFRecord shards.
    builder = tfds.builder_from_directory(folder)
    assert all(".tfrecord-" in str(path) for path in builder.info.splits["train"].filepaths)


def test_tfds_data_source_reads_the_generators_examples_in_both_formats(both_formats):
    result = read(both_formats)
    assert result["project_imported"] == []
    assert result["source_type"] == "ArrayRecordDataSource"
    expected = expected_digests(SETTINGS)
    assert result["length"] == SETTINGS["num_train"] and result["video_shape"] == [8, 8, 8, 1]
    assert result["by_index"] == expected == result["tfrecord"]
    assert result["batched"] == [expected[5], expected[0], expected[7]]


def test_grain_reads_it_deterministically(both_formats):
    pytest.importorskip("grain")
    result = read(both_formats, "grain")
    expected = set(expected_digests(SETTINGS))
    for name in ("grain_map", "grain_loader"):
        order = [digest for batch in result[name] for digest in batch]
        assert sorted(order) == sorted(expected), name  # every example once
        assert len(result[name][0]) == 8
    assert result["grain_map"] == result["grain_map_again"] != result["grain_map_other_seed"]
    # With two worker processes: the same batches in the same order, run after run.
    assert result["grain_loader"] == result["grain_loader_again"]


def test_a_pytorch_dataloader_wraps_the_data_source(both_formats):
    pytest.importorskip("torch")
    result = read(both_formats, "torch")
    assert result["torch"] == expected_digests(SETTINGS)
    assert result["torch_types"] == ["Tensor"]


PROBE_TRAINER = """
import sys
from pipeline import cli
from trainer import input_pipeline

sys.exit(cli.run_main("probe", lambda argv: input_pipeline.load_builder(sys.argv[1], int(sys.argv[2])) and 0))
"""


def test_array_record_alone_serves_random_access_and_the_trainer_refuses_it_with_advice_that_works(tmp_path):
    run_command(*generate_args(tmp_path, SETTINGS, extra=["--file_format=array_record"]), check=True)
    script = READ_RANDOM_ACCESS.replace("tfrecord = [digest", "tfrecord = None and [digest")
    result = run_command("-c", script, str(tmp_path), contract.full_name(SETTINGS["size"]), check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1])["by_index"] == expected_digests(SETTINGS)
    show = run_command("-m", "pipeline.show", f"--data_dir={tmp_path}", "--num=2", f"--out={tmp_path}/x.png")
    assert show.returncode == 0 and "drew 2 train sequences" in show.stderr, show.stderr[-2000:]
    result = run_command("-c", PROBE_TRAINER, str(tmp_path), str(SETTINGS["size"]))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("probe: error:") and "holds no TFRecord files" in last
    assert "Traceback" not in result.stderr

    # pipeline.generate does not point at tfds convert_format either (it writes nothing from ArrayRecord).
    added = run_command(*generate_args(tmp_path, SETTINGS, extra=["--file_format=tfrecord"]))
    assert added.returncode == 2 and "cannot make from ArrayRecord" in added.stderr.strip().splitlines()[-1]

    # The advice, followed to the letter: delete the folder it names, run the command it gives.
    folder = contract.dataset_folder(str(tmp_path), SETTINGS["size"])
    assert "`tfds convert_format` cannot make them" in last and f"delete {folder} and build it again" in last
    command = re.search(r"`(python -m pipeline\.generate [^`]+)`", last).group(1)
    shutil.rmtree(folder)
    rebuilt = run_command(*shlex.split(command)[1:])
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    result = run_command("-c", PROBE_TRAINER, str(tmp_path), str(SETTINGS["size"]))
    assert result.returncode == 0, result.stderr[-3000:]
    # The same examples as before, now in both formats.
    result = run_command("-c", READ_RANDOM_ACCESS, str(tmp_path), contract.full_name(SETTINGS["size"]), check=True)
    read = json.loads(result.stdout.strip().splitlines()[-1])
    assert read["by_index"] == read["tfrecord"] == expected_digests(SETTINGS)
