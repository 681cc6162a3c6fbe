"""The generate and show commands end to end, on Beam's FnApiRunner, read back as another project would."""

import contextlib
import hashlib
import json
import os
import pathlib
import sys

import pytest
from conftest import REPO, SMALL, generate_args, run_command

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
    for example in tfds.as_numpy(dataset):
        hasher.update(bytes([int(example["label"])]) + example["video"].tobytes() + example["path"].tobytes())
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


def read_info(data_dir):
    with open(os.path.join(dataset_folder(data_dir, 8), "dataset_info.json")) as file:
        return json.load(file)


def snapshot(folder):
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in sorted(os.listdir(folder))}


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


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size=1"], "--size: size must be between 2 and 255"),
        (["--size=abc"], "argument --size: expected a whole number"),
        (["--size=256"], "--size: size must be between 2 and 255"),
        (["--num_train=-3"], "argument --num_train: expected a number >= 1"),
        (["--num_train=2.5"], "argument --num_train: expected a whole number"),
        (["--num_test=0"], "argument --num_test: expected a number >= 1"),
        (["--seed=-1"], "argument --seed: expected a number >= 0"),
        (["--num_shards=0"], "argument --num_shards: expected a number >= 1"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_generate_flags_get_one_line_and_exit_2(tmp_path, flags, message):
    data_dir = tmp_path / "data"
    result = run_command("-m", "pipeline.generate", f"--data_dir={data_dir}", *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not data_dir.exists()


def test_unusable_data_dirs_are_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for data_dir, message in [(a_file, "is a file"), (a_file / "below", "cannot be created")]:
        result = run_command("-m", "pipeline.generate", f"--data_dir={data_dir}", "--size=4")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_show_draws_png_strips_and_gif_animations(small_data_dir, tmp_path):
    from PIL import Image

    png, gif = tmp_path / "strips.png", tmp_path / "moving.gif"
    for out in (png, gif):
        result = run_command("-m", "pipeline.show", f"--data_dir={small_data_dir}", "--num=3", f"--out={out}")
        assert result.returncode == 0, result.stderr
        assert "drew 3 train sequences" in result.stderr
    with Image.open(png) as image:
        assert image.width > 3 * image.height / 2  # strips of frames are wide
    with Image.open(gif) as image:
        assert image.n_frames == SMALL["size"]  # one GIF frame per video frame
    assert sorted(os.listdir(tmp_path)) == ["moving.gif", "strips.png"]  # no leftovers


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out={tmp}/x.jpg"], "--out must end in .png or .gif"),
        (["--out={tmp}/missing/x.png"], "does not exist"),
        (["--out={tmp}/x.png", "--split=dev"], "--split 'dev' not in the dataset"),
        (["--out={tmp}/x.png", "--size=9"], "no moving_line/size_9"),
        (["--out={tmp}/x.png", "--num=0"], "expected a number >= 1"),
    ],
)
def test_bad_show_flags_get_one_line_and_exit_2(small_data_dir, tmp_path, flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    result = run_command("-m", "pipeline.show", f"--data_dir={small_data_dir}", *flags)
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1], result.stderr
    assert os.listdir(tmp_path) == []


def test_show_on_an_empty_data_dir_says_to_generate_first(tmp_path):
    result = run_command("-m", "pipeline.show", f"--data_dir={tmp_path}", f"--out={tmp_path}/x.png")
    assert result.returncode == 2 and "run `python -m pipeline.generate` first" in result.stderr


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


def test_a_killed_run_leaves_no_dataset_and_the_same_command_then_completes_it(tmp_path):
    import glob

    settings = {"size": 16, "num_train": 40_000, "num_validation": 300, "num_test": 300, "seed": 2}
    config_folder = tmp_path / "moving_line" / "size_16"
    process, signal = run_until_writing(generate_args(tmp_path, settings), config_folder)
    os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up
    process.wait()

    assert glob.glob(str(config_folder / "incomplete.*")) and not (config_folder / VERSION).exists()
    load = "import sys, tensorflow_datasets as tfds; tfds.load('moving_line/size_16', data_dir=sys.argv[1])"
    assert run_command("-c", load, str(tmp_path)).returncode != 0

    again = run_command(*generate_args(tmp_path, settings), check=True)
    assert "left by an interrupted run" in again.stderr
    assert not glob.glob(str(config_folder / "incomplete.*"))
    read = read_without_project(tmp_path, "moving_line/size_16", 16)
    assert read["load"] == expected_digests(settings)  # every example once, none missing, none changed


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


def assert_one_line_error(result, exit_code, *fragments):
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith(f"{result.args[2]}: error:"), line
    for fragment in fragments:
        assert fragment in line, line


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--num_trian", "300"],
            "unknown flag --num_trian (neither this command's nor a Beam pipeline option); did you mean --num_train?",
        ),
        (["--file_format", "x"], "argument --file_format: expected tfrecord or array_record"),
        (["--file_fromat=tfrecord"], "did you mean --file_format?"),
        (["--direct_num_worker=2"], "did you mean --direct_num_workers?"),
        (
            ["--runner=FnApiRunner", "--direct_num_workers=many"],
            "Beam option: argument --direct_num_workers: invalid int value",
        ),
        (
            ["--num_train=16", "--num_validation=16", "--num_test=4", "--num_shards=5"],
            "--num_shards 5 is more than the 4 test examples",
        ),
        (["--data_dir=gs://bucket/data", "--file_format=tfrecord,array_record"], "needs a local --data_dir"),
        (["--size=16", "--num_train=1000000000000"], "but"),
    ],
)
def test_unknown_flags_and_flags_that_cannot_take_effect_are_refused_before_anything_is_written(
    tmp_path, flags, message
):
    data_dir = tmp_path / "data"
    result = run_command("-m", "pipeline.generate", f"--data_dir={data_dir}", *flags)
    assert_one_line_error(result, 2, message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not data_dir.exists()


def test_beam_options_runner_specific_ones_included_still_pass(tmp_path):
    # Dataflow's, the direct runner's and the setup options are Beam's: a dry run takes them all.
    flags = [
        "--runner=FnApiRunner", "--direct_num_workers=1", "--project", "my-project", "--region=us-central1",
        "--temp_location=gs://bucket/tmp", "--setup_file=./setup.py", "--experiments=use_runner_v2", "--dry_run=True",
    ]  # fmt: skip
    result = run_command("-m", "pipeline.generate", f"--data_dir={tmp_path / 'data'}", "--size=8", *flags)
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing written" in result.stderr


@pytest.mark.parametrize("data_dir", ["{tmp}/data", "gs://moving-line-no-such-bucket/data"])
def test_a_dry_run_writes_nothing_and_needs_no_network(tmp_path, data_dir):
    data_dir = data_dir.format(tmp=tmp_path)
    result = run_command("-m", "pipeline.generate", f"--data_dir={data_dir}", "--num_train=1000000", "--dry_run=True")
    assert result.returncode == 0, result.stderr
    assert "train 1,000,000 in" in result.stderr and "nothing written" in result.stderr
    assert os.listdir(tmp_path) == []


def test_a_dataflow_dry_run_builds_the_job_offline_for_a_gs_data_dir(tmp_path):
    flags = [
        "--runner=DataflowRunner", "--project=my-project", "--region=us-central1", "--temp_location=gs://bucket/tmp",
        "--dry_run=True", "--num_train=2000000000",
    ]  # fmt: skip
    # Billions of sequences: the plan is one element per split, expanded into shards by the workers.
    result = run_command("-m", "pipeline.generate", "--data_dir=gs://moving-line-no-such-bucket/data", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "train 2,000,000,000 in" in result.stderr and "DataflowRunner built the job without running it" in result.stderr
    )


DAMAGES = {
    "metadata deleted": lambda folder: os.remove(os.path.join(folder, contract.INFO_FILE)),
    "metadata unreadable": lambda folder: pathlib.Path(folder, contract.INFO_FILE).write_text("{"),
    "shard deleted": lambda folder: os.remove(shard(folder, "validation")),
    "shard truncated": lambda folder: os.truncate(shard(folder, "train"), 100),
    # What a worker killed mid-shard leaves, if the run still finished (a copy of the folder taken meanwhile).
    "a shard file never finished": lambda folder: pathlib.Path(
        folder, contract.temporary_file_name(contract.shard_file_name("train", "tfrecord", 0, 1), "killed")
    ).write_bytes(b"half"),
}


def shard(folder, split):
    return os.path.join(folder, contract.shard_file_name(split, "tfrecord", 0, 1))


READERS = {
    "pipeline.show": lambda data_dir, tmp: ["-m", "pipeline.show", f"--data_dir={data_dir}", f"--out={tmp}/x.png"],
    "trainer": lambda data_dir, tmp: [
        "-c",
        "import sys; from pipeline import cli; from trainer import input_pipeline; "
        "sys.exit(cli.run_main('trainer', lambda argv: input_pipeline.load_builder(sys.argv[1], 8)))",
        str(data_dir),
    ],
}


@pytest.fixture
def tiny_data_dir(tmp_path):
    settings = {"size": 8, "num_train": 40, "num_validation": 8, "num_test": 8, "seed": 1}
    run_command(*generate_args(tmp_path / "data", settings), check=True)
    return tmp_path / "data", settings


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_build_is_refused_by_readers_and_rebuilt_by_generate(tiny_data_dir, tmp_path, damage):
    data_dir, settings = tiny_data_dir
    folder = dataset_folder(data_dir, 8)
    DAMAGES[damage](folder)
    for name, reader in READERS.items():
        if name == "trainer" and damage == "shard truncated":
            continue  # the trainer finds it when reading, names the bad record and can skip (test_reliability.py)
        result = run_command(*reader(data_dir, tmp_path))
        assert result.returncode == 1, (name, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert f"the dataset in {folder} is damaged" in last_line(result), (name, last_line(result))
    # Other settings: the damage is reported, nothing is touched.
    other = run_command(*generate_args(data_dir, {**settings, "num_train": 41}))
    assert_one_line_error(other, 1, "is damaged", "rebuild it")
    again = run_command(*generate_args(data_dir, settings), check=True)
    if damage != "metadata unreadable":
        assert "rebuilding it with the same settings" in again.stderr
    read = read_without_project(data_dir, "moving_line/size_8", 8)
    assert read["load"] == expected_digests(settings)


def test_settings_of_a_damaged_build_that_cannot_be_read_are_not_guessed(tiny_data_dir):
    data_dir, settings = tiny_data_dir
    folder = dataset_folder(data_dir, 8)
    os.remove(os.path.join(folder, contract.INFO_FILE))
    os.remove(os.path.join(folder, contract.METADATA_FILE))
    result = run_command(*generate_args(data_dir, settings))
    assert_one_line_error(result, 1, "dataset_info.json is missing", f"or delete {folder}")


def test_same_settings_with_flags_that_cannot_change_a_built_dataset_are_refused(tiny_data_dir):
    data_dir, settings = tiny_data_dir
    before = snapshot(dataset_folder(data_dir, 8))
    reshard = run_command(*generate_args(data_dir, settings, extra=["--num_shards=2"]))
    assert_one_line_error(reshard, 2, "--num_shards 2 cannot change a finished build")
    other_format = run_command(*generate_args(data_dir, settings, extra=["--file_format=array_record"]))
    assert_one_line_error(other_format, 2, "without array_record", "tfds convert_format")
    assert snapshot(dataset_folder(data_dir, 8)) == before


def run_until_writing(command, config_folder):
    import glob
    import signal
    import subprocess
    import time

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [sys.executable, *command], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    # Until a worker is writing a shard.
    while not glob.glob(str(config_folder / "incomplete.*" / ".*.incomplete-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be stopped; make it bigger"
    return process, signal


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_midway_leave_one_line_no_dataset_and_the_same_command_then_builds_it(tmp_path, signal_name):
    import subprocess
    import time

    settings = {"size": 16, "num_train": 40_000, "num_validation": 300, "num_test": 300, "seed": 3}
    config_folder = tmp_path / "moving_line" / "size_16"
    process, signal = run_until_writing(generate_args(tmp_path, settings), config_folder)
    signal_number = getattr(signal, signal_name)
    if signal_number == signal.SIGINT:
        os.killpg(process.pid, signal_number)  # Ctrl-C reaches the whole foreground process group
    else:
        process.send_signal(signal_number)  # a scheduler signals the command alone
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal_number, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == (
        f"pipeline.generate: error: interrupted by {signal_name}; run the same command again"
    )
    assert sorted(os.listdir(config_folder)) == [".generate.lock"]  # no incomplete folder, no dataset
    time.sleep(0.5)
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"{tmp_path}" not in processes  # no worker left either
    again = run_command(*generate_args(tmp_path, settings), check=True)  # the lock was released
    assert "done: 40,600 examples" in again.stderr
    assert not list(config_folder.glob("incomplete.*"))


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs (needs root to mount)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_dataset_too_big_for_the_disk_is_refused_before_writing(small_disk):
    settings = {"size": 16, "num_train": 300_000, "num_validation": 300, "num_test": 300, "seed": 0}
    result = run_command(*generate_args(small_disk / "data", settings))
    assert_one_line_error(result, 2, "the dataset needs about 51.", "MiB free")
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(small_disk) == []


def test_a_disk_that_fills_up_midway_ends_in_one_line_with_nothing_kept_and_then_builds(small_disk):
    settings = {"size": 16, "num_train": 150_000, "num_validation": 300, "num_test": 300, "seed": 0}
    config_folder = small_disk / "data" / "moving_line" / "size_16"
    process, _ = run_until_writing(generate_args(small_disk / "data", settings), config_folder)
    filler = small_disk / "filler"
    # Another program takes the space the estimate counted on.
    with open(filler, "wb") as file, contextlib.suppress(OSError):
        file.write(b"\0" * (40 << 20))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"pipeline.generate: error: no space left on the device writing {config_folder / VERSION}; nothing was kept: "
        "free some space and run the same command again"
    )
    assert sorted(os.listdir(config_folder)) == [".generate.lock"]
    filler.unlink()
    again = run_command(*generate_args(small_disk / "data", settings), check=True)
    assert "done: 150,600 examples" in again.stderr


SIGNAL_TO_ANOTHER_THREAD = """
import signal, subprocess, threading, time
from pipeline import cli, local_runner

cli.install_interrupt_handlers()
# Started before the job, as numpy's OpenBLAS threads are: it does not block the signals.
library_thread = threading.Thread(target=time.sleep, args=(60,), daemon=True)
library_thread.start()
try:
    with local_runner.signals_stop_workers():
        worker = subprocess.Popen(["sleep", "60"])
        signal.pthread_kill(library_thread.ident, signal.SIGTERM)  # the kernel may pick any such thread
        worker.wait()  # the main thread waits in C, as in Beam's runner: Python's handler cannot run here
except cli.Interrupted as interrupt:
    print(interrupt, local_runner.running(worker.pid))
"""


def test_a_signal_taken_by_a_library_thread_still_stops_the_workers_at_once():
    # Left to the main thread, the signal would wait for the worker's 60 s: past the timeout.
    result = run_command("-c", SIGNAL_TO_ANOTHER_THREAD, timeout=30, check=True)
    assert result.stdout.split() == ["SIGTERM", "False"]  # the worker killed, then the signal raised


def test_a_zombie_worker_counts_as_stopped():
    # Where PID 1 reaps no orphans (a container's), a worker whose parent died stays a zombie.
    import subprocess
    import time

    from pipeline import local_runner

    live = subprocess.Popen(["sleep", "30"])
    ended = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while local_runner.running(ended.pid) and time.monotonic() < deadline:  # exited, not yet reaped
            time.sleep(0.01)
        assert os.path.exists(f"/proc/{ended.pid}")  # still listed by the kernel
        assert not local_runner.running(ended.pid)
        assert local_runner.running(live.pid)
    finally:
        live.kill()
        live.wait()
        ended.wait()
