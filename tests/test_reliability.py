"""Faults and bad input: damaged shards, determinism on built data, a battery of bad inputs, safety.

Killing generation and training midway is tested in test_pipeline.py and test_trainer.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
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
from conftest import REPO, SMALL, generate_args, run_command

from pipeline import contract, generator

VERSION = contract.VERSION
SHARD = f"moving_line/size_8/{VERSION}/moving_line-{{split}}.tfrecord-00000-of-00001"
# One short run: enough to have a SavedModel and a finished model_dir to misuse.
QUICK_TRAIN = ["--config", "configs/smoke.yaml", "--set", "epochs=1", "--set", "steps_per_epoch=2",
               "--set", "validation_steps=1", "--set", "test_after_training=false"]  # fmt: skip


def last_error_line(result, prog: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"{prog}: error: "), result.stderr[-3000:]
    return lines[-1]


def snapshot(*roots) -> dict:
    """Every file (with size and modification time) and folder under roots: anything written changes it."""
    seen = {}
    for root in roots:
        for folder, folders, files in os.walk(root):
            seen.update({os.path.join(folder, name): "folder" for name in folders})
            for name in files:
                status = os.lstat(os.path.join(folder, name))
                seen[os.path.join(folder, name)] = (status.st_size, status.st_mtime_ns)
    return seen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def mount_full_disk(folder) -> str | None:
    """A tmpfs at folder, filled up: None when mounted, else why not (mounting needs root)."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "a full disk is a small tmpfs, which only root can mount"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        return f"mount -t tmpfs failed: {mounted.stderr.decode().strip()}"
    return None


def fill(folder):
    """Fills the file system of folder to its last byte."""
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass


def npz_member_offset(path, name: str) -> tuple[int, int]:
    """Where the stored (compressed) bytes of a .npz member start, and how many there are."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(file.read(4), "<u2")
    return info.header_offset + 30 + int(name_length) + int(extra_length), info.compress_size


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
    (root / "twice.yaml").write_text("size: 8\nbatch_size: 32\nbatch_size: 64\n")
    (root / "garbage.yaml").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    (root / "nul.yaml").write_text("size: 8\n\0\n")
    (root / "notes.txt").write_text("not numpy")
    (root / "not_a_zip.npz").write_text("not numpy either")
    videos = generator.generate(3, "test", 0, 2, SMALL["size"])["video"]
    np.savez(root / "no_video.npz", videos=videos)
    np.savez(root / "empty.npz")
    np.save(root / "size_9.npy", generator.generate(3, "test", 0, 2, 9)["video"])
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

    busy = socket.socket()
    busy.bind(("", 0))
    busy.listen()
    full = root / "full"
    full_disk_missing = mount_full_disk(full)
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
            subprocess.run(["umount", str(full)], check=True)


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
    ("trainer.task", ["--set", "batch_size=big"], "--set batch_size: batch_size must be a whole number, got 'big'"),
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
    ("trainer.task", ["--set", "data_seed=5"], "was generated with seed 0, but the config says data_seed 5"),
    ("trainer.evaluate", ["--model_dir={root}/missing"], "no SavedModel in {root}/missing"),
    ("trainer.evaluate", ["--split=dev"], "argument --split: invalid choice: 'dev'"),
    ("trainer.evaluate", ["--batch_size=0"], "--batch_size: expected a number >= 1"),
    ("trainer.evaluate", ["--data_dir={root}/missing"], "no moving_line/size_8 dataset in --data_dir"),
    ("trainer.evaluate", ["--data_dir={no_validation}", "--split=validation"], "has no validation split"),
    ("trainer.export", ["--model_dir={root}/missing"], "--model_dir {root}/missing: no such folder"),
    ("trainer.export", ["--model_dir={root}/occupied"], "holds no checkpoint to export"),
    ("trainer.export", ["--export_dir={root}/a_file"], "--export_dir {root}/a_file is a file"),
    ("trainer.export", ["--export_dir={root}/missing/export"], "its folder {root}/missing does not exist"),
    ("trainer.predict", ["--input={root}/missing.npy"], "--input {root}/missing.npy: no such file"),
    ("trainer.predict", ["--input={root}/notes.txt"], "not a .npy or .npz file"),
    ("trainer.predict", ["--input={root}/no_video.npz"], "it needs an array named 'video'"),
    ("trainer.predict", ["--input={root}/size_9.npy"], "this model takes [N, 8, 8, 8, 1]"),
    ("trainer.predict", ["--input={root}/float.npy"], "pixels must be 0 or 1"),
    ("trainer.predict", ["--input={root}/empty.npy"], "holds no videos"),
    ("trainer.predict", ["--input={root}/float.npy", "--seed=3"], "--seed only applies to generated sequences"),
    ("trainer.predict", ["--count=0"], "--count: expected a number >= 1"),
    ("trainer.predict", [f"--count={10**20}"], "--count: expected at most 1,000,000,000,000"),
    ("trainer.evaluate", [f"--batch_size={10**20}"], "--batch_size: expected at most 65,536"),
    ("trainer.predict", ["--model={root}/missing"], "no SavedModel in {root}/missing"),
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
    ("pipeline.show", ["--data_dir={data}", "--num=1000", "--out={root}/x.gif"], "pixels, more than an image viewer"),
    # The tf.data service.
    ("trainer.data_service", ["launcher"], "invalid choice: 'launcher'"),
    ("trainer.data_service", ["dispatcher", "--port=65536"], "expected a port from 0 to 65535, got 65536"),
    ("trainer.data_service", ["dispatcher", "--port={busy_port}"], "--port {busy_port} is already in use"),
    ("trainer.data_service", ["worker", "--dispatcher=localhost"], "--dispatcher localhost: expected HOST:PORT"),
    ("trainer.data_service", ["worker", "--dispatcher=localhost:1", "--port={busy_port}"], "is already in use"),
    # Faults: damaged files (exit 1), a full disk (exit 1), signals (128 + the signal; a server stops with 0).
    ("trainer.evaluate", ["--model_dir={root}/garbage_model"], "cannot load the SavedModel in {root}/garbage_model",
     {"exit": 1}),
    ("trainer.evaluate", ["--model_dir={root}/truncated_model"], "it is damaged or incomplete", {"exit": 1}),
    ("trainer.predict", ["--model={root}/garbage_model"], "cannot load the SavedModel", {"exit": 1}),
    ("trainer.predict", ["--model={root}/truncated_model/export"], "cannot load the SavedModel", {"exit": 1}),
    ("trainer.data_service", ["worker", "--dispatcher=localhost:{free_port}", "--dispatcher_timeout=0"],
     "no dispatcher answered at localhost:{free_port} in 0 s", {"exit": 1}),
    ("trainer.evaluate", ["--model_dir={full}"], "no space left on the device writing {full}/metrics.json.partial",
     {"exit": 1, "full_disk": True}),
    ("pipeline.show", ["--data_dir={data}", "--out={full}/x.png"], "no space left on the device",
     {"exit": 1, "full_disk": True}),
    ("trainer.task", ["--model_dir={full}/model"], "no space left on the device", {"exit": 1, "full_disk": True}),
    # generate knows the bytes a build needs: it refuses before writing (a disk filling up midway: test_pipeline.py).
    ("pipeline.generate", ["--data_dir={full}/data"], "the dataset needs about", {"exit": 2, "full_disk": True}),
    ("trainer.evaluate", ["--split=train", "--batch_size=2"], "interrupted by SIGTERM; run the same command again",
     {"exit": 143, "signal": signal.SIGTERM, "after": r"\[trainer.evaluate\] evaluating", "again": True}),
    ("trainer.evaluate", ["--split=train", "--batch_size=2"], "interrupted by SIGINT",
     {"exit": 130, "signal": signal.SIGINT, "after": r"\[trainer.evaluate\] evaluating"}),
    ("trainer.predict", ["--count=10000000", "--seed=1"], "interrupted by SIGTERM",
     {"exit": 143, "signal": signal.SIGTERM, "after": r"10,000,000 sequences of size 8"}),
    ("trainer.predict", ["--count=10000000", "--seed=1"], "interrupted by SIGINT",
     {"exit": 130, "signal": signal.SIGINT, "after": r"10,000,000 sequences of size 8"}),
    ("pipeline.show", ["--data_dir={data}", "--num=1000", "--out={root}/many.png"], "interrupted by SIGTERM",
     {"exit": 143, "signal": signal.SIGTERM, "after_file": "{root}/many.png.partial.png", "again": True}),
    ("trainer.data_service", ["dispatcher", "--port=0"], "[trainer.data_service] stopped by SIGTERM",
     {"exit": 0, "signal": signal.SIGTERM, "after": "dispatcher up, listening on port"}),
    ("trainer.data_service", ["dispatcher", "--port=0"], "[trainer.data_service] stopped by SIGINT",
     {"exit": 0, "signal": signal.SIGINT, "after": "dispatcher up, listening on port"}),
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
}


def with_defaults(prog: str, flags: list[str]) -> list[str]:
    given = {flag.split("=")[0] for flag in flags if flag.startswith("--")}
    return [flag for flag in DEFAULT_FLAGS[prog] if flag.split("=")[0] not in given] + flags


def case_values(case) -> tuple[str, list[str], str, dict]:
    """(command, flags, message, options); options: exit (default 2), signal with after (a line) or after_file,
    again (the same command afterwards succeeds), full_disk."""
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


def run_until_signalled(prog: str, arguments: list[str], options: dict, work: dict):
    """Runs the command, sends options['signal'] once its output shows `after` (or `after_file` exists)."""
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
    deadline = time.monotonic() + 180
    after_file = options.get("after_file", "").format(**work)
    while process.poll() is None and time.monotonic() < deadline:
        lines = seen["stdout"][-5000:] + seen["stderr"]
        if (after_file and os.path.exists(after_file)) or (
            "after" in options and any(re.search(options["after"], line) for line in lines)
        ):
            process.send_signal(options["signal"])
            break
        time.sleep(0.005)
    try:
        process.wait(timeout=120)
    finally:
        process.kill()
        for reader in readers:
            reader.join()
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(seen["stdout"]),
                                       "".join(seen["stderr"]))  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case_id(case) for case in BAD_INPUTS])
def test_a_bad_input_or_a_fault_gets_one_line_its_exit_code_and_writes_nothing(work, case):
    prog, flags, message, options = case_values(case)
    if options.get("full_disk") and work["full_disk_missing"]:
        pytest.skip(work["full_disk_missing"])
    arguments = [flag.format(**work) for flag in with_defaults(prog, flags)]
    before = snapshot(work["root"], work["data"])
    if "signal" in options:
        result = run_until_signalled(prog, arguments, options, work)
    else:
        result = run_command("-m", prog, *arguments)
    assert result.returncode == options.get("exit", 2), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    if result.returncode == 0:  # a server stopped by a signal
        assert lines[-1] == message, result.stderr[-3000:]
    else:
        assert message.format(**work) in last_error_line(result, prog)
    # Nothing but the command's own lines: no library chatter, no second error line.
    assert all(line.startswith(f"[{prog}] ") for line in lines[:-1]), result.stderr[-3000:]
    assert snapshot(work["root"], work["data"]) == before
    if options.get("again"):
        again = run_command("-m", prog, *arguments)
        assert again.returncode == 0, again.stderr[-3000:]
        if prog == "pipeline.show":
            os.remove(arguments[-1].removeprefix("--out="))


# The trainer's refusals, with TF_CONFIG naming two workers on localhost: each worker refuses alike.
TWO_WORKER_CASES = [case for case in BAD_INPUTS if case_values(case)[0] == "trainer.task" and not case_values(case)[3]]
# Devices are chosen per machine; with TF_CONFIG the refusal says so instead.
TWO_WORKER_MESSAGES = {"devices: /gpu:3 is not a visible device": "choose devices on one machine"}


def run_two_workers(arguments: list[str], timeout: float = 180) -> list[subprocess.CompletedProcess]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)}
        processes.append(subprocess.Popen([sys.executable, "-m", "trainer.task", *arguments], cwd=REPO, env=env,
                                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            process.kill()
    return results


@pytest.mark.parametrize("case", TWO_WORKER_CASES, ids=[case_id(case) for case in TWO_WORKER_CASES])
def test_two_workers_refuse_the_trainers_bad_input_alike_in_one_line_and_write_nothing(work, case):
    prog, flags, message, _ = case_values(case)
    arguments = [flag.format(**work) for flag in with_defaults(prog, flags)]
    before = snapshot(work["root"], work["data"])
    for result in run_two_workers(arguments):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        line = last_error_line(result, prog)
        assert TWO_WORKER_MESSAGES.get(message, message).format(**work) in line, line
        assert all(line.startswith(f"[{prog}] ") for line in result.stderr.strip().splitlines()[:-1])
    assert snapshot(work["root"], work["data"]) == before


def test_two_workers_name_a_damaged_shard_alike_and_skip_it_when_asked(tmp_path):
    # Two training shards: each worker reads its own, so only one of them meets the damage itself.
    data_dir = tmp_path / "data"
    run_command(*generate_args(data_dir, {**SMALL, "num_train": 512}, extra=["--num_shards=2"]), check=True)
    shard = next((data_dir / f"moving_line/size_8/{VERSION}").glob("moving_line-train.tfrecord-00001-of-00002"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    model_dir = tmp_path / "model"
    arguments = [*QUICK_TRAIN, "--set", "steps_per_epoch=12", "--data_dir", str(data_dir), "--model_dir",
                 str(model_dir)]  # fmt: skip
    for result in run_two_workers(arguments):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        line = last_error_line(result, "trainer.task")
        assert f"corrupt data in {shard} (" in line and "--set skip_corrupt_records=true" in line, line
    for result in run_two_workers([*arguments, "--set", "skip_corrupt_records=true"]):
        assert result.returncode == 0, result.stderr[-3000:]
        assert re.search(rf"skipped [\d,]+ of 512 train records \({re.escape(str(shard))}", result.stderr)
    assert (model_dir / "export" / "saved_model.pb").exists()


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
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]  # a fault
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
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
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


# Lines of today's trainer.task that are Keras's own (model.summary's table, model.fit's epoch lines). The training
# loop of issue 10 prints its progress as [trainer.task] lines: delete this allowance when it lands.
COMMANDS = ("run_default.sh", "pipeline.generate", "trainer.task", "trainer.evaluate", "trainer.predict")
PREDICTION = re.compile(r"^(Expected: (Left|Right), )?Predicted: (Left|Right)  \(probability of right [\d.]+\)$")


def test_a_whole_run_prints_only_the_commands_own_lines_and_writes_only_into_its_folder(tmp_path):
    """scripts/run_default.sh (make run) on the smoke config: generate, train, evaluate, predict.

    Counts what is not the commands' own: lines of `[command] ` or `command: `, evaluate's metrics table and
    predict's lines. No TF_CPP_MIN_LOG_LEVEL in the environment: the commands quiet TensorFlow themselves.
    """
    from trainer import evaluate

    work = tmp_path / "a run"  # a space: the script must keep it one folder
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHON=sys.executable, CONFIG="configs/smoke.yaml")
    result = subprocess.run(["bash", "scripts/run_default.sh", str(work)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    assert sorted(os.listdir(tmp_path)) == ["a run"]
    assert sorted(os.listdir(work)) == [".moving-line-work", "data", "model"]

    metrics = json.loads((work / "model" / "metrics.json").read_text())
    results = set(evaluate.describe(metrics))
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    others = [
        line
        for line in lines
        if not line.startswith(tuple(f"[{command}] " for command in COMMANDS) + tuple(f"{c}: " for c in COMMANDS))
        and line not in results
        and not PREDICTION.match(line)
    ]
    print(f"{len(others)} of {len(lines)} lines are not the commands' own")
    assert others == [], "\n".join(others)
    # The TensorBoard hint is a command that works when pasted, spaces and all.
    (hint,) = [line for line in lines if "(tensorboard --logdir " in line]
    assert shlex.split(hint.split("(", 1)[1].rstrip(")")) == ["tensorboard", "--logdir", str(work / "model" / "logs")]
    assert sum(bool(PREDICTION.match(line)) for line in result.stdout.splitlines()) == 5


def make(scratch, *arguments, env=None):
    """`make -f Makefile -C scratch ...`: the repository's Makefile, run in a scratch folder."""
    return subprocess.run(["make", "-s", "-f", os.path.join(REPO, "Makefile"), "-C", str(scratch), *arguments],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)  # fmt: skip


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_deletes_the_folder_make_run_made_and_nothing_else_even_named_with_spaces(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "run").write_text("mine")
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "notes.txt").write_text("mine")
    made = tmp_path / "my run"
    (made / "data").mkdir(parents=True)
    (made / ".moving-line-work").write_text("made by make run")

    cleaned = make(scratch, "clean", f"WORK={made}")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not made.exists()
    assert (tmp_path / "my" / "notes.txt").read_text() == "mine" and (scratch / "run").read_text() == "mine"

    refused = make(scratch, "clean", f"WORK={tmp_path / 'my'}")
    assert refused.returncode == 2
    assert f"make clean: error: {tmp_path / 'my'} was not made by make run" in refused.stderr
    assert (tmp_path / "my" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_hands_work_to_the_script_as_one_argument(tmp_path):
    scratch = tmp_path / "scratch"
    (scratch / "scripts").mkdir(parents=True)
    # The script make run calls, replaced by one that records its arguments; an installed environment's stamp.
    (scratch / "scripts" / "run_default.sh").write_text('printf "%s\\n" "$#" "$@" > arguments.txt\n')
    (scratch / "setup.py").write_text("")
    (scratch / "installed").write_text("")
    os.utime(scratch / "setup.py", (0, 0))
    work = str(tmp_path / "my run's -x folder")
    ran = make(scratch, "run", f"WORK={work}", "STAMP=installed")
    assert ran.returncode == 0, ran.stderr
    assert (scratch / "arguments.txt").read_text().splitlines() == ["1", work]


def test_run_default_refuses_a_work_folder_holding_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run(["bash", "scripts/run_default.sh", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"run_default.sh: error: WORK {tmp_path} holds other files ({tmp_path}/notes.txt); "
        "give a new or empty folder (make run WORK=...)"
    ]
    assert os.listdir(tmp_path) == ["notes.txt"]


# trainer.predict in a process that reports its peak memory (kB) on its last stderr line.
PREDICT_REPORTING_PEAK_MEMORY = """
import resource, sys
from pipeline import cli
from trainer import predict
code = cli.run_main(predict.PROG, predict.main, sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def test_predict_goes_batch_by_batch_in_flat_memory_with_labels_kept_with_their_videos(work, tmp_path):
    from trainer import predict

    peaks = {}
    for count in (predict.BATCH, 100_000):
        result = run_command("-c", PREDICT_REPORTING_PEAK_MEMORY, f"--model={work['model']}", f"--count={count}",
                             "--seed=4", check=True)  # fmt: skip
        lines = result.stdout.splitlines()
        assert len(lines) == count
        peaks[count] = int(result.stderr.strip().splitlines()[-1])
    labels = generator.generate(4, "test", 0, 100_000, SMALL["size"])["label"]
    assert [line.split(",")[0] for line in lines[-600:]] == [
        f"Expected: {('Left', 'Right')[label]}" for label in labels[-600:]
    ]
    # Measured here: 5 MB more for 100,000 sequences than for 256; holding them all at once costs 1 GB more.
    assert peaks[100_000] - peaks[predict.BATCH] < 50_000, peaks

    made = generator.generate(6, "test", 0, 2 * predict.BATCH + 7, SMALL["size"])
    np.savez_compressed(tmp_path / "videos.npz", video=made["video"], label=made["label"])
    np.save(tmp_path / "videos.npy", made["video"])
    for name in ("videos.npz", "videos.npy"):
        result = run_command("-m", "trainer.predict", f"--model={work['model']}", f"--input={tmp_path / name}",
                             check=True)  # fmt: skip
        lines = result.stdout.splitlines()
        assert len(lines) == len(made["label"])
        if name.endswith(".npz"):
            assert [line.split(",")[0] for line in lines] == [
                f"Expected: {('Left', 'Right')[label]}" for label in made["label"]
            ]
        assert f"[trainer.predict] {len(made['label'])} sequences from {tmp_path / name}" in result.stderr


TENSORFLOW_LOADING = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795612601.511359    6033 port.cc:153] oneDNN custom operations are on. You may see slightly different
I0000 00:00:1795612601.511825    6033 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not
I0000 00:00:1795612379.871199    4693 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate
/site-packages/somewhere.py:12: UserWarning: a real warning
W0000 00:00:1795612601.600000    6033 loader.cc:10] a real C++ warning
E0000 00:00:1795612604.524336    6033 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: UNKNOWN (303)
E0000 00:00:1795612604.600000    6033 something.cc:99] a real C++ error
"""


def test_tensorflows_start_up_lines_are_dropped_and_real_warnings_and_errors_kept():
    from pipeline import cli

    assert cli.lines_worth_showing(TENSORFLOW_LOADING, "2") == [
        "/site-packages/somewhere.py:12: UserWarning: a real warning",
        "E0000 00:00:1795612604.600000    6033 something.cc:99] a real C++ error",
    ]
    at_one = cli.lines_worth_showing(TENSORFLOW_LOADING, "1")
    assert any("a real C++ warning" in line for line in at_one) and not any("oneDNN" in line for line in at_one)
    assert len(cli.lines_worth_showing(TENSORFLOW_LOADING, "0")) == 7  # all but absl's notice and cuInit's
    # With a driver installed, cuInit's failure is a real error.
    with_driver = TENSORFLOW_LOADING.replace("Could not find cuda drivers on your machine", "Loaded the driver")
    assert any("failed call to cuInit" in line for line in cli.lines_worth_showing(with_driver, "2"))


# Python drops an exception raised inside a finalizer: a signal handled while garbage collection runs one
# (the predict test above lost its SIGTERM this way now and then) must still stop the command.
SIGNAL_INSIDE_A_FINALIZER = """
import gc, os, signal, sys
from pipeline import cli

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # handled here, where Python drops the exception
        for _ in range(1000):
            pass

def main(argv):
    cycle = Finalized()
    cycle.itself = cycle
    del cycle
    gc.collect()
    print("went on", flush=True)
    with cli.interrupts_deferred():
        pass
    print("not stopped", flush=True)

raise SystemExit(cli.run_main("demo", main))
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_whose_exception_python_dropped_still_stops_the_command_at_the_next_batch(name):
    result = subprocess.run([sys.executable, "-c", SIGNAL_INSIDE_A_FINALIZER, name], cwd=REPO, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.stdout.splitlines() == ["went on"]
    assert result.returncode == 128 + getattr(signal, name), result.stderr
    assert result.stderr.splitlines() == [f"demo: error: interrupted by {name}; run the same command again"]
