"""Beam's local runner as pipeline.generate runs it: worker processes that leave Ctrl-C to it, and how they stop.

    python -m pipeline.local_runner   # what the runner starts: one Beam SDK worker process

Ctrl-C reaches every process of the terminal's foreground group: Beam's own workers would each
print a traceback. These workers ignore it, and pipeline.generate stops them itself
(signals_stop_workers). Their stderr goes nowhere: an error in a worker reaches pipeline.generate
through Beam's runner, which fails with the worker's traceback, so the terminal shows one line per
failure, not one per worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import runpy
import shlex
import signal
import sys
import threading
import time


def runner_for(options):
    """For the FnApiRunner with worker processes, a runner whose workers leave Ctrl-C to this command
    (this module); None for any other runner (Beam makes it from the options)."""
    from apache_beam.options.pipeline_options import DirectOptions

    direct = options.view_as(DirectOptions)
    if options.get_all_options().get("runner") != "FnApiRunner" or direct.direct_running_mode != "multi_processing":
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms import environments

    # Beam runs it through a shell: `exec` leaves no shell behind to die of Ctrl-C.
    command = f"exec {shlex.quote(sys.executable)} -m pipeline.local_runner"
    # Beam would replace this environment with its own worker command in multi_processing mode; the
    # worker count still comes from direct_num_workers, and Beam's warning about the mode does not apply.
    direct.direct_running_mode = "in_memory"
    logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").setLevel(logging.ERROR)
    return FnApiRunner(default_environment=environments.SubprocessSDKEnvironment.from_command_string(command))


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as file:
                    parent = int(file.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def signals_stop_workers():
    """SIGINT and SIGTERM stop the Beam workers first, then unwind this process as usual.

    Beam's local worker processes share the terminal's process group, so Ctrl-C would reach each
    of them and each would print its own traceback. The signals are blocked in this thread while the
    job runs: the worker processes and threads started meanwhile inherit the block, so only the
    watcher below takes them. It kills the workers (their half-written files are in TFDS's
    incomplete folder, which the unwinding deletes), then raises the signal in the main thread.
    """
    watched = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    done = threading.Event()

    def watch():
        while not done.is_set():
            signal_number = signal.sigtimedwait(watched, 0.2)
            if signal_number is None:
                continue
            # The runner's threads in this process fail one after the other once the workers stop: their
            # complaints are not news.
            logging.disable(logging.CRITICAL)
            threading.excepthook = lambda arguments: None
            workers = descendants(os.getpid())
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
                for pid in workers:
                    with contextlib.suppress(ChildProcessError, OSError):
                        os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
            import _thread

            _thread.interrupt_main(signal_number.si_signo)
            return

    watcher = threading.Thread(target=watch, name="signal-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    runpy.run_module("apache_beam.runners.worker.sdk_worker_main", run_name="__main__", alter_sys=True)
    # The runner waits for its workers to exit before the job ends: a worker whose work is done ends at once.
    from pipeline import cli

    cli.exit_at_once(0)
