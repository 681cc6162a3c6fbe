"""How pipeline.generate stops a Beam job on SIGINT and SIGTERM: the runner's worker processes first.

Beam's local runner starts its worker processes in the terminal's foreground group: Ctrl-C would
reach each of them, and each would print its own traceback. signals_stop_workers keeps the signals
from them and stops them itself; the command then unwinds as usual (TFDS deletes its incomplete
folder), prints one line and exits 130 or 143. A job on a cluster (Dask) is cancelled by the
builder as the interrupt unwinds through it. workers_stderr_aside keeps the workers' own
tracebacks off the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import tempfile
import threading
import time

from pipeline import cli

# Sent by the watcher of signals_stop_workers to the main thread, to raise there the signal it took.
WAKE_SIGNAL = signal.SIGUSR1


def process_status(pid) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, parent, ...); None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            # The command name may hold spaces and parentheses: the fields follow its last ")".
            return file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (status := process_status(name)):
            children.setdefault(int(status[1]), []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether process pid still runs. A zombie does not: its files are closed. Only its parent can reap it,
    and a worker whose parent died stays a zombie where PID 1 reaps no orphans (a container's)."""
    status = process_status(pid)
    return status is not None and status[0] not in ("Z", "X")


def kill(pids):
    """SIGKILL to each of pids; one that has already gone is no error."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def signals_stop_workers(kill_workers: bool = True):
    """SIGINT and SIGTERM stop the Beam workers first (kill_workers: a Dask cluster's are not killed: the job is
    cancelled as the interrupt unwinds, and the cluster closed), then unwind this process as usual.

    Beam's local worker processes share the terminal's process group, so Ctrl-C would reach each
    of them and each would print its own traceback. The signals are blocked in this thread while the
    job runs: the worker processes and threads started meanwhile inherit the block, so the watcher
    below takes them. Threads that libraries started earlier (OpenBLAS's, at numpy's import) do not
    block them; a signal the kernel hands to one of those runs Python's handler there, which only
    notes it for the main thread, stuck in the runner until the job ends: the watcher sees it on the
    wakeup fd. It kills the workers (their half-written files are in TFDS's incomplete folder, which
    the unwinding deletes), then raises the signal in the main thread.

    Raised by WAKE_SIGNAL, sent to the main thread alone: the runner's main thread waits without a
    timeout for the killed workers' answers, a wait that only a signal delivered to it can break
    (Beam's local runner never learns that its worker processes died).
    """
    watched = {signal.SIGINT, signal.SIGTERM}
    taken: list[int] = []
    main_thread = threading.get_ident()
    previous_wake = signal.signal(WAKE_SIGNAL, lambda number, frame: cli.raise_interrupted(taken[0], frame))
    noted, note = os.pipe()
    os.set_blocking(note, False)
    previous_wakeup = signal.set_wakeup_fd(note, warn_on_full_buffer=False)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    done = threading.Event()

    def next_signal() -> int | None:
        taken = signal.sigtimedwait(watched, 0.01)  # the job waits this long for the watcher at its end
        if taken is not None:
            return taken.si_signo
        readable, _, _ = select.select([noted], [], [], 0)
        numbers = os.read(noted, 64) if readable else b""
        return next((number for number in numbers if number in watched), None)

    def watch():
        while not done.is_set():
            signal_number = next_signal()
            if signal_number is None:
                continue
            # The runner's threads in this process fail one after the other once the workers stop: their
            # complaints are not news.
            logging.disable(logging.CRITICAL)
            threading.excepthook = lambda arguments: None
            workers = descendants(os.getpid()) if kill_workers else []
            kill(workers)
            deadline = time.monotonic() + 10
            while any(map(running, workers)) and time.monotonic() < deadline:
                for pid in workers:
                    with contextlib.suppress(ChildProcessError, OSError):
                        os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
            taken.append(signal_number)
            signal.pthread_kill(main_thread, WAKE_SIGNAL)
            return

    watcher = threading.Thread(target=watch, name="signal-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        signal.set_wakeup_fd(previous_wakeup)
        signal.signal(WAKE_SIGNAL, previous_wake)
        os.close(noted)
        os.close(note)


@contextlib.contextmanager
def workers_stderr_aside():
    """Beam's local worker processes write their stderr into a temporary file; this process's own lines still
    reach the terminal.

    A Beam SDK worker prints the traceback of every bundle that fails to the stderr it inherits from this
    process (one per worker, for a full disk), and Beam has no option against it. The runner raises the same
    error here, which the command reports in one line.
    """
    sys.stderr.flush()
    terminal = os.dup(2)
    previous = sys.stderr
    with tempfile.TemporaryFile() as aside:
        os.dup2(aside.fileno(), 2)
        sys.stderr = open(terminal, "w", buffering=1, closefd=False, encoding=previous.encoding, errors="replace")  # noqa: SIM115
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr = previous
            os.dup2(terminal, 2)
            os.close(terminal)
