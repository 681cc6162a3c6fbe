"""Faults and bad input: damaged shards, determinism on built data, a battery of bad inputs, safety.

Killing generation and training midway is tested in test_pipeline.py and test_trainer.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import SMALL, generate_args, run_command

from pipeline import generator

VERSION = "1.1.0"
SHARD = f"moving_line/size_8/{VERSION}/moving_line-{{split}}.tfrecord-00000-of-00001"
# One short run: enough to have a SavedModel and a finished model_dir to misuse.
QUICK_TRAIN = ["--config", "configs/smoke.yaml", "--set", "epochs=1", "--set", "steps_per_epoch=2",
               "--set", "validation_steps=1", "--set", "test_after_training=false"]  # fmt: skip


def last_error_line(result, prog: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"{prog}: error: "), result.stderr[-3000:]
    return lines[-1]


def snapshot(*roots) -> dict:
    """Every file and folder under roots, with size and modification time: anything written changes it."""
    seen = {}
    for root in roots:
        for folder, folders, files in os.walk(root):
            for name in folders + files:
                path = os.path.join(folder, name)
                status = os.lstat(path)
                seen[path] = (status.st_size, status.st_mtime_ns)
    return seen


@pytest.fixture(scope="module")
def work(small_data_dir, tmp_path_factory):
    """A trained model, a dataset missing a split, and the bad files the cases below hand the commands."""
    root = tmp_path_factory.mktemp("reliability")
    model = root / "model"
    run_command("-m", "trainer.task", *QUICK_TRAIN, "--data_dir", small_data_dir, "--model_dir", str(model),
                check=True)  # fmt: skip

    no_validation = root / "no_validation"
    shutil.copytree(small_data_dir, no_validation)
    info_path = no_validation / f"moving_line/size_8/{VERSION}/dataset_info.json"
    info = json.loads(info_path.read_text())
    info["splits"] = [split for split in info["splits"] if split["name"] != "validation"]
    info_path.write_text(json.dumps(info))
    (no_validation / SHARD.format(split="validation")).unlink()

    (root / "a_file").write_text("not a folder")
    (root / "occupied").mkdir()
    (root / "occupied" / "notes.txt").write_text("mine")
    (root / "malformed.yaml").write_text("size: 8\nbatch_size: [32\n")
    (root / "mistyped.yaml").write_text("size: 8\nbatch_sise: 32\n")
    (root / "a_list.yaml").write_text("- size: 8\n")
    (root / "notes.txt").write_text("not numpy")
    videos = generator.generate(3, "test", 0, 2, SMALL["size"])["video"]
    np.savez(root / "no_video.npz", videos=videos)
    np.save(root / "size_9.npy", generator.generate(3, "test", 0, 2, 9)["video"])
    np.save(root / "float.npy", videos.astype(np.float32) / 2)
    np.save(root / "empty.npy", videos[:0])
    return {"root": str(root), "data": small_data_dir, "model": str(model), "no_validation": str(no_validation)}


# (command, arguments, what the error line must say). {root}, {data}, {model}, {no_validation}: see work.
GENERATE_SMALL = [f"--{name}={value}" for name, value in SMALL.items() if name != "num_train"]
BAD_INPUTS = [
    ("pipeline.generate", ["--data_dir={root}/new", "--size=0"], "--size: size must be between 2 and 255"),
    ("pipeline.generate", ["--data_dir={root}/new", "--num_validation=0"], "--num_validation: expected a number >= 1"),
    ("pipeline.generate", ["--data_dir={root}/new", "--num_train=ten"], "--num_train: expected a whole number"),
    ("pipeline.generate", ["--data_dir={root}/new", f"--seed={2**64}"], "--seed must be below 2**63"),
    ("pipeline.generate", ["--data_dir={root}/a_file"], "is a file; give a directory"),
    ("pipeline.generate", ["--data_dir=/proc/moving_line"], "cannot be created"),
    ("pipeline.generate", ["--data_dir={data}", "--num_train=1000", *GENERATE_SMALL], "already holds a dataset"),
    ("pipeline.show", ["--data_dir={root}/missing", "--out={root}/x.png"], "no moving_line dataset in --data_dir"),
    ("pipeline.show", ["--data_dir={data}", "--out={root}/x.jpg"], "--out must end in .png or .gif"),
    ("pipeline.show", ["--data_dir={data}", "--out={root}/missing/x.png"], "does not exist; create it"),
    ("pipeline.show", ["--data_dir={data}", "--split=dev", "--out={root}/x.png"], "--split 'dev' not in the dataset"),
    ("pipeline.show", ["--data_dir={data}", "--size=16", "--out={root}/x.png"], "no moving_line/size_16"),
    ("trainer.task", ["--config={root}/missing.yaml"], "--config {root}/missing.yaml: no such file"),
    ("trainer.task", ["--config={root}/malformed.yaml"], "malformed.yaml: not valid YAML at line 3"),
    ("trainer.task", ["--config={root}/mistyped.yaml"], "unknown key 'batch_sise'"),
    ("trainer.task", ["--config={root}/a_list.yaml"], "expected key: value lines, got a list"),
    ("trainer.task", ["--set", "batch_size=big"], "--set batch_size: batch_size must be a int, got 'big'"),
    ("trainer.task", ["--set", "epochs=0"], "epochs must be at least 1"),
    ("trainer.task", ["--set", "learning_rate"], "expected key=value"),
    ("trainer.task", ["--set", "size=16"], "no moving_line/size_16 dataset"),
    ("trainer.task", ["--set", "batch_size=2048"], "batch_size 2048 is larger than the 1024 training examples"),
    ("trainer.task", ["--set", "devices=[/gpu:3]"], "devices: /gpu:3 is not a visible device"),
    ("trainer.task", ["--model_dir={root}/a_file"], "is a file; give a folder"),
    ("trainer.task", ["--model_dir={root}/occupied"], "holds no trainer run"),
    ("trainer.task", ["--model_dir={model}", "--set", "learning_rate=0.5"], "holds a run with another config"),
    ("trainer.task", ["--model_dir=/proc/model"], "--model_dir /proc/model cannot be created"),
    ("trainer.task", ["--data_dir={no_validation}"], "has no validation split"),
    ("trainer.evaluate", ["--model_dir={root}/missing"], "no SavedModel in {root}/missing"),
    ("trainer.evaluate", ["--split=dev"], "argument --split: invalid choice: 'dev'"),
    ("trainer.evaluate", ["--batch_size=0"], "--batch_size: expected a number >= 1"),
    ("trainer.evaluate", ["--data_dir={root}/missing"], "no moving_line/size_8 dataset in --data_dir"),
    ("trainer.evaluate", ["--data_dir={no_validation}", "--split=validation"], "has no validation split"),
    ("trainer.predict", ["--input={root}/missing.npy"], "--input {root}/missing.npy: no such file"),
    ("trainer.predict", ["--input={root}/notes.txt"], "not a .npy or .npz file"),
    ("trainer.predict", ["--input={root}/no_video.npz"], "it needs an array named 'video'"),
    ("trainer.predict", ["--input={root}/size_9.npy"], "this model takes [N, 8, 8, 8, 1]"),
    ("trainer.predict", ["--input={root}/float.npy"], "pixels must be 0 or 1"),
    ("trainer.predict", ["--input={root}/empty.npy"], "holds no videos"),
    ("trainer.predict", ["--input={root}/float.npy", "--seed=3"], "--seed only applies to generated sequences"),
    ("trainer.predict", ["--count=0"], "--count: expected a number >= 1"),
    ("trainer.predict", ["--model={root}/missing"], "no SavedModel in {root}/missing"),
]
# What each command needs besides the case's own flags (a case's flag replaces the default one).
DEFAULT_FLAGS = {
    "pipeline.generate": [],
    "pipeline.show": [],
    "trainer.task": ["--config=configs/smoke.yaml", "--data_dir={data}", "--model_dir={root}/new_model"],
    "trainer.evaluate": ["--model_dir={model}", "--data_dir={data}"],
    "trainer.predict": ["--model={model}"],
}


def with_defaults(prog: str, flags: list[str]) -> list[str]:
    given = {flag.split("=")[0] for flag in flags if flag.startswith("--")}
    return [flag for flag in DEFAULT_FLAGS[prog] if flag.split("=")[0] not in given] + flags


def case_id(case) -> str:
    prog, flags, _ = case
    return f"{prog.split('.')[1]}:{' '.join(flags)}"


def test_there_are_at_least_25_bad_inputs_over_every_command():
    assert len(BAD_INPUTS) >= 25
    assert {prog for prog, _, _ in BAD_INPUTS} == set(DEFAULT_FLAGS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case_id(case) for case in BAD_INPUTS])
def test_a_bad_input_gets_one_line_saying_what_to_change_exit_2_and_writes_nothing(work, case):
    prog, flags, message = case
    arguments = [flag.format(**work) for flag in with_defaults(prog, flags)]
    before = snapshot(work["root"], work["data"])
    result = run_command("-m", prog, *arguments)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message.format(**work) in last_error_line(result, prog)
    assert snapshot(work["root"], work["data"]) == before


# Calls the SavedModel with only TensorFlow imported, two ways: its serving signature (what TF Serving and
# Vertex AI call, by keyword) and its endpoint function (a tf.function, called by position). One JSON line
# per case: the error TensorFlow gave.
CALL_SAVED_MODEL = """
import json, sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
ways = {"signature": loaded.signatures["serving_default"], "function": loaded.serving_default}
wrong = {
    "float32 video": tf.zeros([1, 8, 8, 8, 1], tf.float32),
    "frame size 9": tf.zeros([1, 9, 9, 9, 1], tf.uint8),
    "no batch axis": tf.zeros([8, 8, 8, 1], tf.uint8),
}
for way, serve in ways.items():
    calls = {name: (lambda video=video: serve(video=video) if way == "signature" else serve(video))
             for name, video in wrong.items()}
    if way == "signature":
        calls["input misnamed"] = lambda: serve(videos=tf.zeros([1, 8, 8, 8, 1], tf.uint8))
    for name, call in calls.items():
        try:
            call()
            error = None
        except Exception as caught:
            error = f"{type(caught).__name__}: {caught}"[:1000]
        print(json.dumps({"case": f"{way}: {name}", "error": error}))
print(json.dumps({"project_imported": sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "trainer"))}))
"""
SAVED_MODEL_CASES = [
    *(f"signature: {name}" for name in ["float32 video", "frame size 9", "no batch axis", "input misnamed"]),
    *(f"function: {name}" for name in ["float32 video", "frame size 9", "no batch axis"]),
]


@pytest.fixture(scope="module")
def saved_model_errors(work):
    result = run_command("-c", CALL_SAVED_MODEL, os.path.join(work["model"], "export"), check=True)
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert lines[-1] == {"project_imported": []}
    return {line["case"]: line["error"] for line in lines[:-1]}


@pytest.mark.parametrize("case", SAVED_MODEL_CASES)
def test_the_saved_model_refuses_a_wrong_input_with_a_clear_error(saved_model_errors, case):
    error = saved_model_errors[case]
    assert error is not None, f"{case} was accepted"
    if case.startswith("function"):
        # The tf.function names the input, what it got and what it takes.
        assert "dtype=tf.uint8, name='video')" in error and "Can not cast TensorSpec" in error, error
    elif case == "signature: float32 video":
        # A signature checks the dtype only when it runs, and TensorFlow then names the input by position
        # (input #0 is video, the only one): the one wrong input TensorFlow does not name.
        assert "input #0(zero-based) was expected to be a uint8 tensor but is a float tensor" in error, error
    elif case == "signature: input misnamed":
        assert "missing a required argument: 'video'" in error, error
    else:
        assert "Shape of tensor video [" in error, error
        assert "is not compatible with expected shape [?,8,8,8,1]" in error, error


def damaged_copy(small_data_dir, tmp_path, split: str, how: str) -> tuple[str, str]:
    """A copy of the small dataset whose one shard of split is cut in half or has one byte flipped."""
    data_dir = tmp_path / "data"
    shutil.copytree(small_data_dir, data_dir)
    shard = data_dir / SHARD.format(split=split)
    content = bytearray(shard.read_bytes())
    if how == "truncated":
        # Early enough that a few training steps' shuffle buffer (256 records) reaches the cut.
        content = content[: len(content) // 8 + 40]  # mid-record (a cut between records is caught too)
    else:
        content[len(content) // 8] ^= 0xFF
    shard.write_bytes(bytes(content))
    return str(data_dir), str(shard)


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_a_damaged_shard_is_named_in_one_line_and_skipped_only_when_asked(work, tmp_path, how):
    data_dir, shard = damaged_copy(work["data"], tmp_path, "test", how)
    model_dir = tmp_path / "model"
    shutil.copytree(work["model"], model_dir)
    before = snapshot(model_dir)

    refused = run_command("-m", "trainer.evaluate", "--model_dir", str(model_dir), "--data_dir", data_dir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = last_error_line(refused, "trainer.evaluate")
    assert f"corrupt data in {shard} ({how} record at " in line, line
    assert "--skip_corrupt_records" in line and "regenerate the dataset" in line
    assert snapshot(model_dir) == before  # no metrics written from a partial pass

    skipped = run_command("-m", "trainer.evaluate", "--model_dir", str(model_dir), "--data_dir", data_dir,
                          "--skip_corrupt_records", check=True)  # fmt: skip
    metrics = json.loads((model_dir / "metrics.json").read_text())
    # TensorFlow drops a damaged shard from its first bad record on: those are the records skipped.
    assert 0 < metrics["examples"] < SMALL["num_test"]
    assert metrics["skipped_records"] == SMALL["num_test"] - metrics["examples"]
    assert sum(map(sum, metrics["confusion_matrix"]["rows_expected_columns_predicted"])) == metrics["examples"]
    assert f"skipped {metrics['skipped_records']} of {SMALL['num_test']} test records ({shard}" in skipped.stderr


def test_training_on_a_damaged_shard_stops_naming_it_and_skips_it_when_asked(work, tmp_path):
    data_dir, shard = damaged_copy(work["data"], tmp_path, "train", "truncated")
    model_dir = tmp_path / "model"
    command = ["-m", "trainer.task", *QUICK_TRAIN, "--data_dir", data_dir, "--model_dir", str(model_dir)]
    refused = run_command(*command)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = last_error_line(refused, "trainer.task")
    assert f"corrupt data in {shard} (truncated record at " in line and "--set skip_corrupt_records=true" in line

    # The same run, resumed with skipping on: it says how many of the 1,024 training records it skips.
    resumed = run_command(*command, "--set", "skip_corrupt_records=true", check=True)
    found = re.search(r"skipped ([\d,]+) of 1,024 train records \(" + re.escape(shard), resumed.stderr)
    assert found and 0 < int(found.group(1).replace(",", "")) < 1024, resumed.stderr[-3000:]
    assert (model_dir / "export" / "saved_model.pb").exists()


def example_hashes(data_dir: str, size: int) -> dict[str, list[str]]:
    """Per split, the SHA-256 of each stored example (label byte + video bytes), read with TFDS alone."""
    script = """
import hashlib, json, sys
import tensorflow_datasets as tfds
folder = sys.argv[1]
builder = tfds.builder_from_directory(folder)
print(json.dumps({
    split: [hashlib.sha256(bytes([int(e["label"])]) + e["video"].tobytes()).hexdigest()
            for e in tfds.as_numpy(builder.as_dataset(split=split))]
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


def test_a_keras_file_holding_python_code_is_refused(tmp_path):
    result = run_command("-c", """
import sys, keras
from trainer import export
inputs = keras.Input([2])
model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
model.save(sys.argv[1])
try:
    export.load_keras(sys.argv[1])
except ValueError as error:
    print("refused:", error)
else:
    print("loaded")
""", str(tmp_path / "lambda.keras"), check=True)  # fmt: skip
    assert result.stdout.startswith("refused:") and "safe_mode" in result.stdout, result.stdout


def python_sources():
    from conftest import REPO

    for folder in ("pipeline", "trainer", "bench", "scripts"):
        for parent, _, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                if name.endswith(".py"):
                    with open(os.path.join(parent, name), encoding="utf-8") as file:
                        yield file.name, file.read()


def test_no_user_file_is_read_with_an_unsafe_loader():
    for path, source in python_sources():
        assert not re.search(r"\bpickle\b|\bdill\b|\bmarshal\b|allow_pickle\s*=\s*True", source), path
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", source), path
        for call in re.findall(r"load_model\([^)]*\)", source):
            assert "safe_mode=True" in call, f"{path}: {call}"
