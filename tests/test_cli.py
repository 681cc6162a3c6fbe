"""pipeline.cli: one-line errors and their exit codes, signals as exceptions, TensorFlow's start-up chatter kept out."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys

import pytest
from conftest import REPO

from pipeline import cli


def outcome(main, capsys) -> tuple[int, str]:
    try:
        code = cli.run_main("demo", main, [])
    except SystemExit as leaving:
        code = leaving.code
    return code, capsys.readouterr().err


def raising(error):
    def main(argv):
        raise error

    return main


@pytest.mark.parametrize(
    "error, code, line",
    [
        (cli.UsageError("--x must be 1"), 2, "demo: error: --x must be 1"),
        (cli.FaultError("lost peer; run it again"), 1, "demo: error: lost peer; run it again"),
        (cli.FaultError("stopped", exit_code=137), 137, "demo: error: stopped"),
        (OSError(errno.ENOSPC, "No space left on device", "/d/f"), 1,
         "demo: error: no space left on the device writing /d/f; free some space and run the same command again"),
        (KeyboardInterrupt(), 130, "demo: error: interrupted by SIGINT; run the same command again"),
        (cli.Interrupted(signal.SIGTERM), 143, "demo: error: interrupted by SIGTERM; run the same command again"),
    ],
)  # fmt: skip
def test_each_outcome_is_one_line_and_its_documented_exit_code(error, code, line, capsys):
    assert outcome(raising(error), capsys) == (code, line + "\n")


def test_tensorflows_full_disk_error_is_a_fault_naming_the_file(capsys):
    class ResourceExhaustedError(Exception):
        pass

    code, err = outcome(raising(ResourceExhaustedError("/d/ckpt.data; No space left on device")), capsys)
    assert (code, err) == (1, "demo: error: no space left on the device writing /d/ckpt.data; free some space "
                              "and run the same command again\n")  # fmt: skip


def test_other_errors_are_not_hidden():
    with pytest.raises(OSError):
        cli.run_main("demo", raising(OSError(errno.EACCES, "Permission denied")), [])
    with pytest.raises(ZeroDivisionError):
        cli.run_main("demo", raising(ZeroDivisionError()), [])


def test_a_bad_flag_is_one_line_exit_2_and_the_parser_lists_its_flags(capsys):
    parser = cli.ArgumentParser(prog="demo")
    parser.add_argument("--count", type=cli.positive_int, default=1)
    parser.add_argument("--start", type=cli.non_negative_int, default=0)
    assert cli.flags_in_usage(parser) == ["--count", "--start"]
    for argv, message in [
        (["--count=0"], "argument --count: expected a number >= 1, got 0"),
        (["--start=x"], "argument --start: expected a whole number, got 'x'"),
        (["--cuont=2"], "unrecognized arguments: --cuont=2"),
    ]:
        with pytest.raises(SystemExit) as leaving:
            parser.parse_args(argv)
        assert leaving.value.code == 2
        assert capsys.readouterr().err == f"demo: error: {message}\n"


def test_a_signal_inside_deferred_work_is_raised_once_the_work_ends():
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    finished = []
    with pytest.raises(cli.Interrupted) as raised, cli.interrupts_deferred():
        signal.raise_signal(signal.SIGTERM)
        finished.append(True)  # the work in the block goes on to its end
    assert finished == [True] and raised.value.signal_number == signal.SIGTERM
    assert {number: signal.getsignal(number) for number in handlers} == handlers  # put back


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


# A command whose main thread waits inside a library call that never returns (TensorFlow dequeuing from an empty
# queue, as it waits on a server or an object store that does not answer): Python's signal handler never runs there.
STUCK_COMMAND = """
import sys
from pipeline import cli
cli.STUCK_SECONDS = 3  # 20 s in the commands; shorter here, the mechanism is the same

def main(argv):
    import threading
    import tensorflow as tf
    queue = tf.queue.FIFOQueue(1, tf.int32)
    # Said once the main thread has long been inside the call: a signal sent before would find Python's handler.
    threading.Timer(2, print, ["waiting"], {"flush": True}).start()
    queue.dequeue()

sys.exit(cli.run_main("demo", main, []))
"""


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_command_stuck_inside_a_library_call_still_ends_on_a_stop_signal_in_one_line(number):
    from conftest import ended_within

    stuck = subprocess.Popen([sys.executable, "-c", STUCK_COMMAND], cwd=REPO, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert stuck.stdout.readline() == "waiting\n", stuck.stderr.read()
        stuck.send_signal(number)
        assert ended_within(stuck, 30, "a command stuck inside a library call") == 128 + number
        assert stuck.stderr.read().strip().splitlines()[-1] == (
            f"demo: error: interrupted by {signal.Signals(number).name}, which it did not take within 3 s (a wait "
            "inside a library); run the same command again"
        )
    finally:
        stuck.kill()
        stuck.wait()
