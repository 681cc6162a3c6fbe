"""Generation on Dataflow, proven offline: the job builds without running (a dry run), and the sdist its workers
install carries the builder, its card and the configs."""

from __future__ import annotations

import os
import tarfile

import pytest
from conftest import REPO, run_command, run_in_process

pytestmark = pytest.mark.slow


def test_the_dataflow_job_builds_offline_with_dry_run(tmp_path):
    result = run_command(
        "-m", "pipeline.generate", f"--data_dir={tmp_path}", "--size=8",
        "--num_train=64", "--num_validation=8", "--num_test=8",
        "--runner=DataflowRunner", "--project", "example-project", "--region", "us-central1",
        "--temp_location=gs://example-bucket/tmp", "--setup_file=./setup.py", "--dry_run=True",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dry run: DataflowRunner built the job" in result.stderr
    written = [os.path.join(folder, name) for folder, _, names in os.walk(tmp_path) for name in names]
    assert not [path for path in written if ".tfrecord" in path or "dataset_info" in path]


def test_the_sdist_that_dataflow_workers_install_carries_the_builder_its_card_and_configs(tmp_path):
    result = run_command("-m", "build", "--sdist", "--no-isolation", f"--outdir={tmp_path}", REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    # Older setuptools keep the hyphen of the distribution name; newer ones normalise it.
    (archive,) = list(tmp_path.glob("moving[-_]line-*.tar.gz"))
    with tarfile.open(archive) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for expected in [
        "setup.py",
        "pipeline/moving_line/moving_line_dataset_builder.py",
        "pipeline/moving_line/README.md",
        "pipeline/moving_line/CITATIONS.bib",
        "pipeline/moving_line/TAGS.txt",
        "pipeline/generator.py",
        "pipeline/video_codec.py",
        "pipeline/transforms.py",
        "configs/default.yaml",
        "configs/seed.yaml",
        "configs/smoke.yaml",
    ]:
        assert expected in names, f"{expected} missing from {archive.name}"


def test_a_dataflow_dry_run_builds_the_job_offline_for_a_gs_data_dir(tmp_path, capfd):
    flags = [
        "--runner=DataflowRunner", "--project=my-project", "--region=us-central1", "--temp_location=gs://bucket/tmp",
        "--dry_run=True", "--num_train=2000000000",
    ]  # fmt: skip
    # Billions of sequences: the plan is one element per split, expanded into shards by the workers.
    result = run_in_process("pipeline.generate", ["--data_dir=gs://moving-line-no-such-bucket/data", *flags], capfd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "train 2,000,000,000 in" in result.stderr and "DataflowRunner built the job without running it" in result.stderr
    )
