"""trainer.predict: batch by batch in flat memory, labels kept with their videos, from generated sequences or files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, SMALL, run_command

from pipeline import generator

# trainer.predict in a process that reports its peak memory (kB) on its last stderr line.
PREDICT_REPORTING_PEAK_MEMORY = """
import resource, sys
from pipeline import cli
from trainer import predict
code = cli.run_main(predict.PROG, predict.main, sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_predict_goes_batch_by_batch_in_flat_memory_with_labels_kept_with_their_videos(quick_model_dir, tmp_path):
    from trainer import predict

    peaks = {}
    for count in (predict.BATCH, 25_000):
        result = run_command("-c", PREDICT_REPORTING_PEAK_MEMORY, f"--model={quick_model_dir}", f"--count={count}",
                             "--seed=4", check=True)  # fmt: skip
        lines = result.stdout.splitlines()
        assert len(lines) == count
        peaks[count] = int(result.stderr.strip().splitlines()[-1])
    labels = generator.generate(4, "test", 0, 25_000, SMALL["size"])["label"]
    assert [line.split(",")[0] for line in lines[-600:]] == [
        f"Expected: {('Left', 'Right')[label]}" for label in labels[-600:]
    ]
    # Batch by batch the peak barely moves; holding 25,000 videos at once would add about a quarter of a gigabyte.
    assert peaks[25_000] - peaks[predict.BATCH] < 50_000, peaks

    made = generator.generate(6, "test", 0, 2 * predict.BATCH + 7, SMALL["size"])
    np.savez_compressed(tmp_path / "videos.npz", video=made["video"], label=made["label"])
    np.save(tmp_path / "videos.npy", made["video"])
    for name in ("videos.npz", "videos.npy"):
        result = run_command("-m", "trainer.predict", f"--model={quick_model_dir}", f"--input={tmp_path / name}",
                             check=True)  # fmt: skip
        lines = result.stdout.splitlines()
        assert len(lines) == len(made["label"])
        if name.endswith(".npz"):
            assert [line.split(",")[0] for line in lines] == [
                f"Expected: {('Left', 'Right')[label]}" for label in made["label"]
            ]
        assert f"[trainer.predict] {len(made['label'])} sequences from {tmp_path / name}" in result.stderr


@pytest.mark.parametrize("name", ["videos.npy", "videos.npz", "labelled.npz"])
def test_an_input_file_is_read_batch_by_batch_with_its_labels_in_this_process(tmp_path, name):
    from trainer import predict

    made = generator.generate(6, "test", 0, predict.BATCH + 5, SMALL["size"])
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, made["video"])
    else:
        np.savez_compressed(path, video=made["video"], label=made["label"])
    videos = predict.read_videos(str(path))
    assert videos.count == len(made["video"])
    batches = list(predict.input_batches(videos))
    assert [len(batch) for batch, _ in batches] == [predict.BATCH, 5]
    assert (np.concatenate([batch for batch, _ in batches]) == made["video"]).all()
    if name.endswith(".npz"):
        assert (np.concatenate([labels for _, labels in batches]) == made["label"]).all()
    assert predict.describe("right", 0.9, "left") == "Expected: Left, Predicted: Right  (probability of right 0.9000)"


@pytest.mark.slow
def test_predict_whose_reader_goes_away_exits_141_quietly_as_the_shells_tools_do(quick_model_dir):
    """`trainer.predict ... | head -1`: the first line reaches head, then predict ends with 128 + SIGPIPE."""
    pipeline = (
        f"set -o pipefail; {sys.executable} -m trainer.predict --model={quick_model_dir} --count=100000 --seed=4 "
        "| head -1"
    )
    result = subprocess.run(["bash", "-c", pipeline], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 141, result.stderr[-3000:]
    assert result.stdout.startswith("Expected: ") and len(result.stdout.splitlines()) == 1
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("[trainer.predict] ") for line in lines), result.stderr[-3000:]
