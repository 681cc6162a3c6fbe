"""Every benchmark runs at its smallest setting, as `python -m bench NAME`, and leaves nothing behind.

A change that breaks a benchmark (a renamed function, a moved folder, a new dataset version) fails
here instead of the next time someone runs `make bench`.
"""

import json
import os

import pytest
from conftest import SMALL, run_command

from bench.__main__ import BENCHMARKS

# name -> its smallest setting; "{data}" is a built size-8 dataset. Every benchmark needs one here.
SMALLEST = {
    "generate": ["--num=1000", "--size=8", "--baseline=HEAD"],
    "formats": ["--size=8", "--num=200", "--reads=50", "--batch_size=16"],
    "input": ["--data_dir={data}", f"--size={SMALL['size']}", "--batch_size=8", "--batches=2", "--pipelines=1,2"],
    "feed": [
        "--data_dir={data}",
        f"--size={SMALL['size']}",
        "--batch_sizes=8",
        "--steps=1",
        "--repeats=1",
        "--candidates=path",
    ],  # fmt: skip
    "accuracy": ["--configs=smoke", "--target=0"],
    "loop": [
        "--data_dir={data}",
        f"--size={SMALL['size']}",
        "--batch_sizes=8",
        "--steps=1",
        "--repeats=1",
        "--models=incremental",
    ],
    "step": ["--size=8", "--batch_sizes=8", "--rounds=1", "--round_seconds=0.2"],
    "resume": ["--data_dir={data}", f"--size={SMALL['size']}", "--repeats=1", "--end_to_end_epochs=10.5"],
}


def test_every_benchmark_has_a_smallest_setting():
    assert sorted(SMALLEST) == sorted(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_the_benchmark_runs_and_ends_with_its_json_figures(name, small_data_dir, tmp_path):
    if name not in SMALLEST:
        pytest.fail(f"give bench {name} a smallest setting in SMALLEST")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    args = [arg.format(data=small_data_dir) for arg in SMALLEST[name]]
    result = run_command("-m", "bench", name, *args, env={"TMPDIR": str(temporary)}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == name
    assert os.listdir(temporary) == []  # temporary folders removed


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_bad_flag_gets_one_line_and_exit_2(name, capsys):
    from bench.__main__ import main

    with pytest.raises(SystemExit) as leaving:
        main([name, "--no_such_flag=1"])
    assert leaving.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"bench {name}: error: unrecognized arguments: --no_such_flag=1"]


def test_the_command_refuses_a_bad_flag_and_an_unknown_benchmark_in_one_line():
    result = run_command("-m", "bench", "generate", "--no_such_flag=1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == ["bench generate: error: unrecognized arguments: --no_such_flag=1"]
    unknown = run_command("-m", "bench", "gnerate")
    assert unknown.returncode == 2 and unknown.stderr.startswith("bench: error: unknown benchmark 'gnerate'")
