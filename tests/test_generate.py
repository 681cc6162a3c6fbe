"""pipeline.generate's flags and checks, decided before any work starts: run in this process as `python -m` would."""

from __future__ import annotations

import os

import pytest
from built_data import assert_one_line_error
from conftest import run_in_process

from pipeline import contract

VERSION = contract.VERSION


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
def test_bad_generate_flags_get_one_line_and_exit_2(tmp_path, flags, message, capfd):
    data_dir = tmp_path / "data"
    result = run_in_process("pipeline.generate", [f"--data_dir={data_dir}", *flags], capfd)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not data_dir.exists()


def test_unusable_data_dirs_are_refused(tmp_path, capfd):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for data_dir, message in [(a_file, "is a file"), (a_file / "below", "cannot be created")]:
        result = run_in_process("pipeline.generate", [f"--data_dir={data_dir}", "--size=4"], capfd)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


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
        # A runner typo, and a runner that needs a download it cannot get (offline: no network; online: no such file).
        (["--runner=DaskRunnr"], "--runner DaskRunnr is not a Beam runner; did you mean DaskRunner?"),
        (
            [
                "--runner=PrismRunner",
                "--prism_location=https://github.com/apache/beam/releases/download/v0.0.0/none.zip",
            ],
            "--runner=PrismRunner needs Beam's Prism binary, which it could not get (Unable to fetch remote prism",
        ),
        (["--dry_run=yes"], "--dry_run takes True or False, got 'yes'"),
        # The shard limit, before the free-space check (a trillion examples fit no disk either).
        (
            ["--size=16", "--num_train=1000000000000"],
            "1,000,000,000,000 train examples would take 2,449,612 shards, more than the 1,000,000 TFDS's metadata",
        ),
    ],
)
def test_unknown_flags_and_flags_that_cannot_take_effect_are_refused_before_anything_is_written(
    tmp_path, flags, message, capfd
):
    data_dir = tmp_path / "data"
    result = run_in_process("pipeline.generate", [f"--data_dir={data_dir}", *flags], capfd)
    assert_one_line_error(result, "pipeline.generate", 2, message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not data_dir.exists()


def test_beam_options_runner_specific_ones_included_still_pass(tmp_path, capfd):
    # Dataflow's, the direct runner's and the setup options are Beam's: a dry run takes them all.
    flags = [
        "--runner=FnApiRunner", "--direct_num_workers=1", "--project", "my-project", "--region=us-central1",
        "--temp_location=gs://bucket/tmp", "--setup_file=./setup.py", "--experiments=use_runner_v2", "--dry_run=True",
    ]  # fmt: skip
    result = run_in_process("pipeline.generate", [f"--data_dir={tmp_path / 'data'}", "--size=8", *flags], capfd)
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing written" in result.stderr


@pytest.mark.parametrize("data_dir", ["{tmp}/data", "gs://moving-line-no-such-bucket/data"])
def test_a_dry_run_writes_nothing_and_needs_no_network(tmp_path, data_dir, capfd):
    data_dir = data_dir.format(tmp=tmp_path)
    result = run_in_process(
        "pipeline.generate", [f"--data_dir={data_dir}", "--num_train=1000000", "--dry_run=True"], capfd
    )
    assert result.returncode == 0, result.stderr
    assert "train 1,000,000 in" in result.stderr and "nothing written" in result.stderr
    assert os.listdir(tmp_path) == []
