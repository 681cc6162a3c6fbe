"""pipeline.local_runner: a signal stops Beam's local workers at once, whichever thread the kernel hands it to."""

from __future__ import annotations

import os
import subprocess
import time

from conftest import run_command

from pipeline import contract

VERSION = contract.VERSION


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
