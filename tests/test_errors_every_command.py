"""Every command's bad input, faults and signals: one line `<command>: error: ...`, its exit code, nothing written.

Refusals that parsing and checking decide run in this process (cli.run_main, as `python -m` runs it); each
command also runs as a process once for each kind of outcome: bad input (exit 2), a fault (exit 1), a signal
(130 or 143). Killing generation and training midway: test_faults_generate.py and test_faults_training.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from conftest import (
    REPO,
    SMALL,
    ended_within,
    fill,
    free_port,
    last_error_line,
    mount_tmpfs,
    run_command,
    run_in_process,
    snapshot,
    unmount,
)

from pipeline import contract, generator

VERSION = contract.VERSION
SHARD = f"moving_line/size_8/{VERSION}/moving_line-{{split}}.tfrecord-00000-of-00001"


def npz_member_offset(path, name: str) -> tuple[int, int]:
    """Where the stored (compressed) bytes of a .npz member start, and how many there are."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(file.read(4), "<u2")
    return info.header_offset + 30 + int(name_length) + int(extra_length), info.compress_size


@pytest.fixture(scope="module")
def work(small_data_dir, quick_model_dir, tmp_path_factory):
    """A trained model, a dataset missing a split, and the bad files the cases below hand the commands."""
    root = tmp_path_factory.mktemp("reliability")
    model = root / "model"
    shutil.copytree(quick_model_dir, model)

    no_validation = root / "no_validation"
    shutil.copytree(small_data_dir, no_validation)
    info_path = no_validation / f"moving_line/size_8/{VERSION}/dataset_info.json"
    info = json.loads(info_path.read_text())
    info["splits"] = [split for split in info["splits"] if split["name"] != "validation"]
    info_path.write_text(json.dumps(info))
    (no_validation / SHARD.format(split="validation")).unlink()

    (root / "a_file").write_text("not a folder")
    (root / "a_folder.png").mkdir()
    (root / "occupied").mkdir()
    (root / "occupied" / "notes.txt").write_text("mine")
    (root / "malformed.yaml").write_text("size: 8\nbatch_size: [32\n")
    (root / "mistyped.yaml").write_text("size: 8\nbatch_sise: 32\n")
    (root / "a_list.yaml").write_text("- size: 8\n")
    (root / "twice.yaml").write_text("size: 8\nbatch_size: 32\nbatch_size: 64\n")
    (root / "garbage.yaml").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    (root / "nul.yaml").write_text("size: 8\n\0\n")
    (root / "notes.txt").write_text("not numpy")
    (root / "not_a_zip.npz").write_text("not numpy either")
    videos = generator.generate(3, "test", 0, 2, SMALL["size"])["video"]
    np.savez(root / "no_video.npz", videos=videos)
    np.savez(root / "empty.npz")
    np.save(root / "size_9.npy", generator.generate(3, "test", 0, 2, 9)["video"])
    np.save(root / "one_size_9.npy", generator.generate(3, "test", 0, 1, 9)["video"][0])
    np.savez(root / "no_channel.npz", video=videos[..., 0])
    np.save(root / "float.npy", videos.astype(np.float32) / 2)
    np.save(root / "empty.npy", videos[:0])
    np.save(root / "objects.npy", np.array([videos[0], None], dtype=object))
    np.save(root / "truncated.npy", videos)
    with open(root / "truncated.npy", "r+b") as file:
        file.truncate(os.path.getsize(root / "truncated.npy") - 100)
    np.savez(root / "label_5.npz", video=videos, label=np.array([1, 5]))
    np.savez(root / "label_text.npz", video=videos, label=np.array(["left", "right"]))
    np.savez(root / "label_objects.npz", video=videos, label=np.array([1, None], dtype=object))
    np.savez(root / "one_label.npz", video=videos, label=np.array(1))
    np.savez(root / "three_labels.npz", video=videos, label=np.array([1, 0, 1]))
    np.savez(root / "fortran.npz", video=np.asfortranarray(videos))
    np.savez_compressed(root / "damaged.npz", video=generator.generate(3, "test", 0, 64, SMALL["size"])["video"])
    start, length = npz_member_offset(root / "damaged.npz", "video.npy")
    content = bytearray((root / "damaged.npz").read_bytes())
    content[start + length // 2] ^= 0xFF
    (root / "damaged.npz").write_bytes(bytes(content))
    np.savez(root / "truncated.npz", video=videos)
    (root / "truncated.npz").write_bytes((root / "truncated.npz").read_bytes()[:700])

    # SavedModels damaged two ways: a saved_model.pb of random bytes, variables cut short.
    for name in ("garbage_model", "truncated_model"):
        shutil.copytree(model / "export", root / name / "export")
    (root / "garbage_model/export/saved_model.pb").write_bytes(np.random.default_rng(1).bytes(2000))
    variables = next((root / "truncated_model/export/variables").glob("variables.data-*"))
    with open(variables, "r+b") as file:
        file.truncate(100)
    # A run stopped before its end (checkpoints, no export/), and one of which trainer.export exported a checkpoint.
    shutil.copytree(model, root / "stopped_model", ignore=shutil.ignore_patterns("export"))
    shutil.copytree(model, root / "exported_model", ignore=shutil.ignore_patterns("export"))
    shutil.copytree(model / "export", root / "exported_model" / "export_step_000000002")
    # A run whose every checkpoint is damaged (its one checkpoint's data cut short): nothing to export.
    shutil.copytree(model, root / "damaged_checkpoint_model", ignore=shutil.ignore_patterns("export"))
    data = next((root / "damaged_checkpoint_model/checkpoints/state").glob("step_*/ckpt.data-*"))
    data.write_bytes(data.read_bytes()[:100])

    busy = socket.socket()
    busy.bind(("", 0))
    busy.listen()
    full = root / "full"
    full_disk_missing = mount_tmpfs(full, "4m")
    try:
        if not full_disk_missing:
            shutil.copytree(model / "export", full / "export")  # what trainer.evaluate --model_dir={full} reads
            fill(full)
        yield {
            "root": str(root),
            "data": small_data_dir,
            "model": str(model),
            "no_validation": str(no_validation),
            "busy_port": busy.getsockname()[1],
            "free_port": free_port(),
            "full": str(full),
            "full_disk_missing": full_disk_missing,
        }
    finally:
        busy.close()
        if not full_disk_missing:
            unmount(full)


# (command, arguments, what the error line must say). {root}, {data}, {model}, {no_validation}: see work.
GENERATE_SMALL = [f"--{name}={value}" for name, value in SMALL.items() if name != "num_train"]
BAD_INPUTS = [
    ("pipeline.generate", ["--data_dir={root}/new", "--size=0"], "--size: size must be between 2 and 255",
     {"process": True}),
    ("pipeline.generate", ["--data_dir={root}/new", "--num_validation=0"], "--num_validation: expected a number >= 1"),
    ("pipeline.generate", ["--data_dir={root}/new", "--num_train=ten"], "--num_train: expected a whole number"),
    ("pipeline.generate", ["--data_dir={root}/new", f"--seed={2**64}"], "--seed must be below 2**63"),
    ("pipeline.generate", ["--data_dir={root}/a_file"], "is a file; give a directory"),
    ("pipeline.generate", ["--data_dir=/proc/moving_line"], "cannot be created"),
    ("pipeline.generate", ["--data_dir={data}", "--num_train=1000", *GENERATE_SMALL], "already holds a dataset"),
    ("pipeline.show", ["--data_dir={root}/missing", "--out={root}/x.png"], "no moving_line dataset in --data_dir"),
    ("pipeline.show", ["--data_dir={data}", "--out={root}/x.jpg"], "--out must end in .png or .gif", {"process": True}),
    ("pipeline.show", ["--data_dir={data}", "--out={root}/missing/x.png"], "does not exist; create it"),
    ("pipeline.show", ["--data_dir={data}", "--out={root}/a_folder.png"], "--out {root}/a_folder.png is a folder"),
    ("pipeline.show", ["--data_dir={data}", "--split=dev", "--out={root}/x.png"], "--split 'dev' not in the dataset"),
    ("pipeline.show", ["--data_dir={data}", "--size=16", "--out={root}/x.png"], "no moving_line/size_16"),
    ("trainer.task", ["--config={root}/missing.yaml"], "--config {root}/missing.yaml: no such file"),
    ("trainer.task", ["--config={root}/malformed.yaml"], "malformed.yaml: not valid YAML at line 3"),
    ("trainer.task", ["--config={root}/mistyped.yaml"], "unknown key 'batch_sise'"),
    ("trainer.task", ["--config={root}/a_list.yaml"], "expected key: value lines, got a list"),
    ("trainer.task", ["--set", "batch_size=big"], "--set batch_size: batch_size must be a whole number, got 'big'"),
    ("trainer.task", ["--set", "epochs=0"], "epochs must be at least 1", {"process": True}),
    ("trainer.task", ["--set", "learning_rate"], "expected key=value"),
    ("trainer.task", ["--set", "size=16"], "no moving_line/size_16 dataset"),
    ("trainer.task", ["--set", "batch_size=2048"], "batch_size 2048 is larger than the 1024 training examples"),
    # A process: TensorFlow finds its devices inside the command, whose start-up lines the command keeps out.
    ("trainer.task", ["--set", "devices=[/gpu:3]"], "devices: /gpu:3 is not a visible device", {"process": True}),
    ("trainer.task", ["--model_dir={root}/a_file"], "is a file; give a folder"),
    ("trainer.task", ["--model_dir={root}/occupied"], "holds no trainer run"),
    ("trainer.task", ["--model_dir={model}", "--set", "learning_rate=0.5"], "holds a run with another config"),
    ("trainer.task", ["--model_dir=/proc/model"], "--model_dir /proc/model cannot be created"),
    ("trainer.task", ["--data_dir={no_validation}"], "has no validation split"),
    ("trainer.task", ["--set", "data_seed=5"], "was generated with seed 0, but the config says data_seed 5"),
    ("trainer.evaluate", ["--model_dir={root}/missing"], "no SavedModel in {root}/missing"),
    ("trainer.evaluate", ["--split=dev"], "argument --split: invalid choice: 'dev'", {"process": True}),
    ("trainer.evaluate", ["--batch_size=0"], "--batch_size: expected a number >= 1"),
    ("trainer.evaluate", ["--data_dir={root}/missing"], "no moving_line/size_8 dataset in --data_dir"),
    ("trainer.evaluate", ["--data_dir={no_validation}", "--split=validation"], "has no validation split"),
    ("trainer.export", ["--model_dir={root}/missing"], "--model_dir {root}/missing: no such folder", {"process": True}),
    ("trainer.export", ["--model_dir={root}/occupied"], "holds no checkpoint to export"),
    ("trainer.export", ["--export_dir={root}/a_file"], "--export_dir {root}/a_file is a file"),
    ("trainer.export", ["--export_dir={root}/missing/export"], "its folder {root}/missing does not exist"),
    # An export replaces only an earlier export of the same run: a user's folder, a dataset, the run itself are kept.
    ("trainer.export", ["--export_dir={root}/occupied"], "--export_dir {root}/occupied holds notes.txt, which no "
     "export of this run wrote; an export replaces only an earlier export of the same run"),
    ("trainer.export", ["--export_dir={data}"], "--export_dir {data} holds moving_line, which no export of this run"),
    ("trainer.export", ["--export_dir={model}"], "--export_dir {model} is the --model_dir itself"),
    ("trainer.export", ["--export_dir={model}/checkpoints"], "--export_dir {model}/checkpoints holds epoch_001.keras"),
    ("trainer.predict", ["--input={root}/missing.npy"], "--input {root}/missing.npy: no such file", {"process": True}),
    ("trainer.predict", ["--input={root}/notes.txt"], "not a .npy or .npz file"),
    ("trainer.predict", ["--input={root}/no_video.npz"], "it needs an array named 'video'"),
    ("trainer.predict", ["--input={root}/size_9.npy"], "videos of shape [2, 9, 9, 9, 1]; this model takes [N, 8, 8, "),
    ("trainer.predict", ["--input={root}/one_size_9.npy"], "videos of shape [9, 9, 9, 1]; this model takes [N, 8, "),
    # Shapes as the file holds them: 2 videos without their channel axis are not one video of 2 frames.
    ("trainer.predict", ["--input={root}/no_channel.npz"], "videos of shape [2, 8, 8, 8]; give [N, S, S, S, 1]"),
    ("trainer.predict", ["--input={root}/float.npy"], "pixels must be 0 or 1"),
    ("trainer.predict", ["--input={root}/empty.npy"], "holds no videos"),
    ("trainer.predict", ["--input={root}/float.npy", "--seed=3"], "--seed only applies to generated sequences"),
    ("trainer.predict", ["--count=0"], "--count: expected a number >= 1"),
    ("trainer.predict", [f"--count={10**20}"], "--count: expected at most 1,000,000,000,000"),
    ("trainer.evaluate", [f"--batch_size={10**20}"], "--batch_size: expected at most 65,536"),
    ("trainer.predict", ["--model={root}/missing"], "no SavedModel in {root}/missing"),
    # A run stopped before its end: the advice is to export it (or finish it), not to train one from scratch.
    ("trainer.predict", ["--model={root}/stopped_model"], "its trainer.task run has not finished: export its newest "
     "checkpoint with `python -m trainer.export --model_dir {root}/stopped_model` and give the folder it names, or"),
    ("trainer.evaluate", ["--model_dir={root}/exported_model"], "export its newest checkpoint with `python -m "
     "trainer.export --model_dir {root}/exported_model` and give the folder it names, or give "
     "{root}/exported_model/export_step_000000002 (an export of it), or run the same trainer.task command again"),
    # Configs: files that are not YAML text, keys given twice, values out of range, sizes the model cannot take.
    ("trainer.task", ["--config={root}/garbage.yaml"], "--config {root}/garbage.yaml is not UTF-8 text"),
    ("trainer.task", ["--config={root}/nul.yaml"], "nul.yaml: not valid YAML"),
    ("trainer.task", ["--config={root}/occupied"], "--config {root}/occupied is a folder"),
    ("trainer.task", ["--config={root}/twice.yaml"], "not valid YAML at line 3 (key 'batch_size' is given twice)"),
    ("trainer.task", ["--set", f"seed={10**23}"], "seed must be at most 4,294,967,295"),
    ("trainer.task", ["--set", "learning_rate=fast"], "learning_rate must be a number, got 'fast'"),
    ("trainer.task", ["--set", "learning_rate=nan"], "learning_rate must be a finite number, got 'nan'"),
    ("trainer.task", ["--set", "clip_norm=0"], "clip_norm must be above 0, got 0.0 (null: no clipping)"),
    ("trainer.task", ["--set", "deterministic=maybe"], "deterministic must be true or false, got 'maybe'"),
    ("trainer.task", ["--set", "size=2"], "size must be at least 3, got 2 (the model's 2x2 convolution"),
    ("trainer.task", ["--set", "size=300"], "size must be at most 255"),
    # Inputs to predict: labels, element types, files that are not (whole) .npy or .npz files.
    ("trainer.predict", ["--input={root}/occupied"], "--input {root}/occupied: is a folder"),
    ("trainer.predict", ["--input={root}/not_a_zip.npz"], "not a .npy or .npz file"),
    ("trainer.predict", ["--input={root}/empty.npz"], "the .npz holds []; it needs an array named 'video'"),
    ("trainer.predict", ["--input={root}/label_5.npz"], "labels must be 0 (left) or 1 (right); found 5"),
    ("trainer.predict", ["--input={root}/label_text.npz"], "'label' holds text; labels must be 0 (left) or 1"),
    ("trainer.predict", ["--input={root}/label_objects.npz"], "'label' holds Python objects"),
    ("trainer.predict", ["--input={root}/one_label.npz"], "'label' has shape []; give one label per video, shape [2]"),
    ("trainer.predict", ["--input={root}/three_labels.npz"], "'label' has shape [3]; give one label per video"),
    ("trainer.predict", ["--input={root}/objects.npy"], "the array holds Python objects; pixels must be 0 or 1"),
    ("trainer.predict", ["--input={root}/truncated.npy"], "the array is truncated"),
    ("trainer.predict", ["--input={root}/truncated.npz"], "truncated.npz is damaged or not an .npz file"),
    ("trainer.predict", ["--input={root}/damaged.npz"], "damaged.npz is damaged"),
    ("trainer.predict", ["--input={root}/fortran.npz"], "'video' is stored in Fortran order"),
    ("pipeline.show", ["--data_dir={data}", "--num=101", "--out={root}/x.png"], "--num 101 is more than one"),
    # An object store that cannot be reached (here, no network): one line before anything is written.
    ("pipeline.generate", ["--data_dir=gs://moving-line-no-such-bucket/data"],
     "--data_dir gs://moving-line-no-such-bucket/data cannot be reached (", {"offline": True}),
    ("trainer.task", ["--data_dir=gs://moving-line-no-such-bucket/data"], "cannot be reached (", {"offline": True}),
    ("trainer.task", ["--model_dir=gs://moving-line-no-such-bucket/model"], "--model_dir gs://moving-line-no-such-"
     "bucket/model cannot be reached (", {"offline": True}),
    ("trainer.evaluate", ["--model_dir=gs://moving-line-no-such-bucket/model"], "cannot be reached (",
     {"offline": True}),
    ("trainer.predict", ["--model=gs://moving-line-no-such-bucket/model"], "cannot be reached (", {"offline": True}),
    ("trainer.export", ["--model_dir=gs://moving-line-no-such-bucket/model"], "cannot be reached (",
     {"offline": True}),
    # The tf.data service.
    ("trainer.data_service", ["launcher"], "invalid choice: 'launcher'", {"process": True}),
    ("trainer.data_service", ["dispatcher", "--port=65536"], "expected a port from 0 to 65535, got 65536"),
    ("trainer.data_service", ["dispatcher", "--port={busy_port}"], "--port {busy_port} is already in use"),
    ("trainer.data_service", ["worker", "--dispatcher=localhost"], "--dispatcher localhost: expected HOST:PORT"),
    ("trainer.data_service", ["worker", "--dispatcher=localhost:1", "--port={busy_port}"], "is already in use"),
    # Training on Ray: what is refused before a cluster is reached (the refusals that need one: test_scale_out_ray.py).
    ("trainer.ray_job", ["--workers=1:2"], "--workers: expected MAX >= MIN >= 1, got '1:2'", {"process": True}),
    ("trainer.ray_job", ["--workers=two"], "--workers: expected N or MAX:MIN (whole numbers), got 'two'"),
    ("trainer.ray_job", ["--set", "devices=[/cpu:0]"], "on Ray every worker trains on its GPUs (--gpus_per_worker)"),
    # Elastic: Ray may go on with any number of workers in the range, and each must share the 8 input streams.
    ("trainer.ray_job", ["--workers=3:1"], "--workers 3:1 lets Ray go on with any number of workers from 1 to 3, and 3 "
     "workers cannot share this run's 8 input streams evenly (the order of its batches is defined over them, and each "
     "worker reads a whole number of them): every number in the range must be 1, 2, 4 or 8 (--workers 2:1 here); a "
     "new run may set input_streams to a multiple of 6"),
    ("trainer.ray_job", ["--workers=3"], "3 workers cannot share this run's 8 input streams evenly"),
    ("trainer.ray_job", ["--workers=2", "--gpus_per_worker=3"], "batch_size 32 does not split evenly over 6 replicas "
     "(2 workers)"),
    ("trainer.ray_job", ["--model_dir={root}/occupied"], "holds no trainer run"),
    ("trainer.ray_job", ["--set", "size=16"], "no moving_line/size_16 dataset"),
    ("trainer.ray_job", ["--address=localhost"], "--address localhost is not HOST:PORT"),
    ("trainer.ray_job", ["--address=127.0.0.1:{free_port}"], "--address 127.0.0.1:{free_port}: nothing answers"),
    ("trainer.ray_job", ["--dashboard"], "--dashboard applies to the Ray instance this command starts"),
    # Faults: damaged files (exit 1), a full disk (exit 1), signals (128 + the signal; a server stops with 0).
    ("trainer.evaluate", ["--model_dir={root}/garbage_model"], "cannot load the SavedModel in {root}/garbage_model",
     {"exit": 1, "process": True}),
    ("trainer.evaluate", ["--model_dir={root}/truncated_model"], "it is damaged or incomplete", {"exit": 1}),
    ("trainer.predict", ["--model={root}/garbage_model"], "cannot load the SavedModel", {"exit": 1, "process": True}),
    ("trainer.predict", ["--model={root}/truncated_model/export"], "cannot load the SavedModel", {"exit": 1}),
    ("trainer.export", ["--model_dir={root}/damaged_checkpoint_model"],
     "no checkpoint in {root}/damaged_checkpoint_model/checkpoints is usable", {"exit": 1, "process": True}),
    ("trainer.data_service", ["worker", "--dispatcher=localhost:{free_port}", "--dispatcher_timeout=0"],
     "no dispatcher answered at localhost:{free_port} in 0 s", {"exit": 1, "process": True}),
    ("trainer.evaluate", ["--model_dir={full}"], "no space left on the device writing {full}/metrics.json.partial",
     {"exit": 1, "full_disk": True, "process": True}),
    ("pipeline.show", ["--data_dir={data}", "--out={full}/x.png"], "no space left on the device",
     {"exit": 1, "full_disk": True, "process": True}),
    ("trainer.task", ["--model_dir={full}/model"], "no space left on the device",
     {"exit": 1, "full_disk": True, "process": True}),
    # generate knows the bytes a build needs and refuses before writing (filling midway: test_faults_generate.py).
    ("pipeline.generate", ["--data_dir={full}/data"], "the dataset needs about", {"exit": 2, "full_disk": True}),
    ("trainer.evaluate", ["--split=train", "--batch_size=2"], "interrupted by SIGTERM; run the same command again",
     {"exit": 143, "signal": signal.SIGTERM, "after": r"\[trainer.evaluate\] evaluating", "again": True}),
    ("trainer.evaluate", ["--split=train", "--batch_size=2"], "interrupted by SIGINT",
     {"exit": 130, "signal": signal.SIGINT, "after": r"\[trainer.evaluate\] evaluating"}),
    ("trainer.predict", ["--count=10000000", "--seed=1"], "interrupted by SIGTERM",
     {"exit": 143, "signal": signal.SIGTERM, "after": r"10,000,000 sequences of size 8"}),
    ("trainer.predict", ["--count=10000000", "--seed=1"], "interrupted by SIGINT",
     {"exit": 130, "signal": signal.SIGINT, "after": r"10,000,000 sequences of size 8"}),
    ("pipeline.show", ["--data_dir={data}", "--num=100", "--out={root}/many.png"], "interrupted by SIGTERM",
     {"exit": 143, "signal": signal.SIGTERM, "after": r"\[pipeline.show\] reading 100", "again": True}),
    ("trainer.export", ["--export_dir={root}/exported"], "interrupted by SIGTERM",
     {"exit": 143, "signal": signal.SIGTERM, "after": r"\[trainer.export\] exporting the checkpoint", "again": True}),
    ("trainer.data_service", ["dispatcher", "--port=0"], "[trainer.data_service] stopped by SIGTERM",
     {"exit": 0, "signal": signal.SIGTERM, "after": "dispatcher up, listening on port"}),
    ("trainer.data_service", ["dispatcher", "--port=0"], "[trainer.data_service] stopped by SIGINT",
     {"exit": 0, "signal": signal.SIGINT, "after": "dispatcher up, listening on port"}),
    # A worker waiting for its dispatcher stops as a running one does.
    ("trainer.data_service", ["worker", "--dispatcher=localhost:{free_port}", "--dispatcher_timeout=600"],
     "[trainer.data_service] stopped by SIGTERM",
     {"exit": 0, "signal": signal.SIGTERM, "after": "waiting up to 600 s for the dispatcher"}),
]  # fmt: skip
# What each command needs besides the case's own flags (a case's flag replaces the default one).
DEFAULT_FLAGS = {
    "pipeline.generate": [],
    "pipeline.show": [],
    "trainer.task": ["--config=configs/smoke.yaml", "--data_dir={data}", "--model_dir={root}/new_model"],
    "trainer.evaluate": ["--model_dir={model}", "--data_dir={data}"],
    "trainer.predict": ["--model={model}"],
    "trainer.export": ["--model_dir={model}"],
    "trainer.data_service": [],
    # Nothing listens at the address: a case that passes its own check is refused there, before Ray is imported.
    "trainer.ray_job": [
        "--config=configs/smoke.yaml",
        "--data_dir={data}",
        "--model_dir={root}/new_model",
        "--address=127.0.0.1:{free_port}",
    ],
}


def with_defaults(prog: str, flags: list[str]) -> list[str]:
    given = {flag.split("=")[0] for flag in flags if flag.startswith("--")}
    return [flag for flag in DEFAULT_FLAGS[prog] if flag.split("=")[0] not in given] + flags


def case_values(case) -> tuple[str, list[str], str, dict]:
    """(command, flags, message, options); options: exit (default 2), signal with after (a line) or after_file,
    again (the same command afterwards succeeds), full_disk, offline (needs no route to Google Cloud Storage)."""
    values = case.values[0] if hasattr(case, "values") else case  # a pytest.param
    prog, flags, message, *options = values
    return prog, flags, message, options[0] if options else {}


def case_id(case) -> str:
    prog, flags, _, options = case_values(case)
    how = f" ({signal.Signals(options['signal']).name})" if "signal" in options else ""
    return f"{prog.split('.')[1]}:{' '.join(flags)}{how}"


def test_there_are_at_least_25_bad_inputs_over_every_command():
    cases = [case_values(case) for case in BAD_INPUTS]
    assert len([case for case in cases if not case[3]]) >= 25
    assert {prog for prog, _, _, _ in cases} == set(DEFAULT_FLAGS)


def reaches_cloud_storage() -> bool:
    try:
        socket.getaddrinfo("www.googleapis.com", 443)
    except OSError:
        return False
    return True


def contents(work) -> dict:
    """What the cases' folders hold, less the note a command holding a model_dir writes into its .trainer.lock
    (trainer.model_dir_lock: who holds it, rewritten by each holder)."""
    return {
        path: seen for path, seen in snapshot(work["root"], work["data"]).items() if not path.endswith(".trainer.lock")
    }


def run_until_signalled(prog: str, arguments: list[str], options: dict, work: dict):
    """Runs the command, sends options['signal'] once its output shows `after`; fails saying what it waited for."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, "-m", prog, *arguments], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    seen = {"stdout": [], "stderr": []}
    readers = [
        threading.Thread(target=lambda name=name: seen[name].extend(iter(getattr(process, name).readline, "")))
        for name in seen
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, f"{prog} ended ({process.returncode}) before {options['after']!r}"
            assert time.monotonic() < deadline, f"{prog}: no line {options['after']!r} in 300 s"
            if any(re.search(options["after"], line) for line in seen["stdout"][-5000:] + seen["stderr"]):
                process.send_signal(options["signal"])
                break
            time.sleep(0.005)
        # A bound for a loaded machine: Kubernetes waits 30 s after SIGTERM before it kills.
        ended_within(process, 30, f"{prog} after {signal.Signals(options['signal']).name}")
    finally:
        process.kill()
        for reader in readers:
            reader.join()
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(seen["stdout"]),
                                       "".join(seen["stderr"]))  # fmt: skip


def as_param(case):
    """The case, marked slow where it runs the command as a process (make test-fast runs the others)."""
    options = case_values(case)[3]
    slow = "signal" in options or options.get("process")
    return pytest.param(case, id=case_id(case), marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("case", [as_param(case) for case in BAD_INPUTS])
def test_a_bad_input_or_a_fault_gets_one_line_its_exit_code_and_writes_nothing(work, case, capfd):
    prog, flags, message, options = case_values(case)
    if options.get("full_disk") and work["full_disk_missing"]:
        pytest.skip(work["full_disk_missing"])
    if options.get("offline") and reaches_cloud_storage():
        pytest.skip("needs a machine that cannot reach Google Cloud Storage (as CI's)")
    arguments = [flag.format(**work) for flag in with_defaults(prog, flags)]
    before = contents(work)
    if "signal" in options:
        result = run_until_signalled(prog, arguments, options, work)
    elif options.get("process"):
        result = run_command("-m", prog, *arguments, timeout=300)
    else:
        result = run_in_process(prog, arguments, capfd)
    assert result.returncode == options.get("exit", 2), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    if result.returncode == 0:  # a server stopped by a signal
        assert lines[-1] == message, result.stderr[-3000:]
    else:
        assert message.format(**work) in last_error_line(result, prog)
    # Nothing but the command's own lines: no library chatter, no second error line; bad input is the refusal alone
    # (nothing said about work that was never going to start).
    assert all(line.startswith(f"[{prog}] ") for line in lines[:-1]), result.stderr[-3000:]
    if result.returncode == 2:
        assert len(lines) == 1, result.stderr[-3000:]
    assert contents(work) == before
    if options.get("again"):
        again = run_command("-m", prog, *arguments, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        if prog == "pipeline.show":
            os.remove(arguments[-1].removeprefix("--out="))
        if prog == "trainer.export":
            shutil.rmtree(arguments[-1].removeprefix("--export_dir="))


def test_every_command_runs_as_a_process_for_each_kind_of_outcome():
    """Bad input, a fault and a signal: the process cases above, per command (a server's signal ends it with 0).
    pipeline.generate's faults and signals, and trainer.task's signals, come midway through their work:
    test_faults_generate.py and test_faults_training.py; trainer.ray_job's need a Ray cluster: test_scale_out_ray.py."""
    kinds = {}
    for case in BAD_INPUTS:
        prog, _, _, options = case_values(case)
        if "signal" in options:
            kinds.setdefault(prog, set()).add("signal")
        elif options.get("process"):
            kinds.setdefault(prog, set()).add("fault" if options.get("exit", 2) == 1 else "bad input")
    assert all("bad input" in kinds.get(prog, ()) for prog in DEFAULT_FLAGS), kinds
    for prog in set(DEFAULT_FLAGS) - {"pipeline.generate", "trainer.ray_job"}:
        assert "fault" in kinds[prog], prog
    for prog in set(DEFAULT_FLAGS) - {"pipeline.generate", "trainer.task", "trainer.ray_job"}:
        assert "signal" in kinds[prog], prog
