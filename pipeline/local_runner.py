"""Beam's local runner as pipeline.generate runs it: workers forked warm, that leave Ctrl-C to it, and how they stop.

    python -m pipeline.local_runner                 # what the runner starts: one Beam SDK worker
    python -m pipeline.local_runner --warm ADDRESS  # the warm process on its own (pipeline.generate forks it)

A Beam worker spends more CPU time importing Beam than a small job spends on its work, and the runner
starts its workers only once the command has imported Beam itself and planned the job: one core
busy, the others idle. So pipeline.generate first forks one process (warm_workers) that imports
the worker's modules while the command starts, on another core; each worker the runner asks for
is then forked from it, ready at once. The runner's worker command hands its endpoints to that
process and waits for the forked worker's exit status; without it (it failed to start) the command
runs the worker itself, as Beam does.

Ctrl-C reaches every process of the terminal's foreground group: Beam's own workers would each
print a traceback. These workers ignore it, and pipeline.generate stops them itself
(signals_stop_workers). Their stderr goes nowhere: an error in a worker reaches pipeline.generate
through Beam's runner, which fails with the worker's traceback, so the terminal shows one line per
failure, not one per worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import shlex
import signal
import socket
import struct
import sys
import threading
import time

# The abstract Unix socket (Linux: no file to leave behind) where the warm process takes requests.
WARM_ADDRESS_ENV = "MOVING_LINE_WARM_WORKERS"
# What a worker imports, for the warm process to import before it forks any.
WORKER_MODULES = ("apache_beam.runners.worker.sdk_worker_main", "pipeline.transforms")
# How often a worker's state sampler wakes (sample_states_often): a bundle's end waits for it.
SAMPLING_PERIOD_MS = 10
# Libraries that Beam imports whenever they are installed, for dataframes and for connectors that a
# job run here never uses in the command's own process: a third of its import time, on the way to
# the first worker (BENCHMARKS.md). The workers, warm on the other core, still import them.
UNUSED_BY_THE_COMMAND = ("pandas", "pyarrow", "pymongo", "google.cloud.bigquery")


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
    and the warm process's workers outlive it as zombies where PID 1 reaps no orphans (a container's)."""
    status = process_status(pid)
    return status is not None and status[0] not in ("Z", "X")


def kill(pids):
    """SIGKILL to each of pids; one that has already gone is no error."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def signals_stop_workers():
    """SIGINT and SIGTERM stop the Beam workers first, then unwind this process as usual.

    Beam's local worker processes share the terminal's process group, so Ctrl-C would reach each
    of them and each would print its own traceback. The signals are blocked in this thread while the
    job runs: the worker processes and threads started meanwhile inherit the block, so the watcher
    below takes them. Threads that libraries started earlier (OpenBLAS's, at numpy's import) do not
    block them; a signal the kernel hands to one of those runs Python's handler there, which only
    notes it for the main thread, stuck in the runner until the job ends: the watcher sees it on the
    wakeup fd. It kills the workers (their half-written files are in TFDS's incomplete folder, which
    the unwinding deletes), then raises the signal in the main thread.
    """
    watched = {signal.SIGINT, signal.SIGTERM}
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
            workers = descendants(os.getpid())
            kill(workers)
            deadline = time.monotonic() + 10
            while any(map(running, workers)) and time.monotonic() < deadline:
                for pid in workers:
                    with contextlib.suppress(ChildProcessError, OSError):
                        os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
            import _thread

            _thread.interrupt_main(signal_number)
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
        os.close(noted)
        os.close(note)


def will_start_local_workers(argv: list[str]) -> bool:
    """Whether pipeline.generate with these arguments runs Beam's worker processes here: the default
    runner (beam_options.make_options), and neither a dry run nor --help."""
    flags = {arg.split("=", 1)[0] for arg in argv}
    return sys.platform == "linux" and not flags & {"--runner", "--direct_running_mode", "--dry_run", "-h", "--help"}


def skip_unused_imports():
    """What this process would import and never use is not imported (UNUSED_BY_THE_COMMAND); Beam's
    connectors see them as not installed."""
    for name in UNUSED_BY_THE_COMMAND:
        sys.modules.setdefault(name, None)  # None: `import name` raises ImportError, which Beam expects
    # Beam's MongoDB connector warns that it found no bson package, which it needs only to run.
    logging.getLogger("apache_beam.io.mongodbio").setLevel(logging.ERROR)


@contextlib.contextmanager
def warm_workers(argv: list[str]):
    """Forks the process that forks Beam's workers (serve_warm) for the runner's worker command to use,
    when this command will start local workers; stops it and anything it forked at the end. This process,
    which then only plans and runs the job, skips what it would never use (skip_unused_imports).

    Forked, not started: it begins importing at once, with no interpreter to start and nothing of this
    command to import again. So it is forked first of all, before this process has threads or Beam."""
    if not will_start_local_workers(argv):
        yield
        return
    address = f"moving-line-{os.getpid()}-{secrets.token_hex(8)}"
    parent_alive, parent_gone = os.pipe()  # the read end sees its end when this process ends, however it ends
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:  # no process to spare: the workers start cold, as Beam starts them
        pid = None
    if pid == 0:
        try:
            os.close(parent_gone)
            become_warm(address, parent_alive)
        finally:
            os._exit(1)  # never back into the command
    skip_unused_imports()  # here only: a worker runs what Beam hands it, and imports Beam as Beam does
    os.close(parent_alive)
    if pid is None:
        os.close(parent_gone)
        yield
        return
    os.environ[WARM_ADDRESS_ENV] = address
    try:
        yield
    finally:
        os.environ.pop(WARM_ADDRESS_ENV, None)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # it stops its workers, reaps them and ends, whatever it was doing
        if not reaped(pid, timeout=2):  # still importing, or stuck: nothing of it is worth keeping
            kill([pid, *descendants(pid)])
            reaped(pid, timeout=None)
        os.close(parent_gone)


def reaped(pid: int, timeout: float | None) -> bool:
    """Waits for child pid to end (at most timeout seconds); whether it has ended and been reaped."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.002)
    except ChildProcessError:  # reaped already, by signals_stop_workers
        pass
    return True


def become_warm(address: str, parent_alive: int):
    """The warm process (warm_workers' forked child, or `--warm`): quiet, deaf to Ctrl-C, one malloc arena,
    a worker's imports, then serve_warm."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    one_malloc_arena()
    serve_warm(address, parent_alive)


def one_malloc_arena():
    """One malloc arena for all threads: records.keep_freed_memory holds only for the main arena, and a
    worker's bundles run in a thread of its own, which would otherwise map and unmap its numpy temporaries
    for each chunk (BENCHMARKS.md). Set before any thread here asks for an arena; the forked workers keep it."""
    import ctypes

    m_arena_max = -8  # glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its malloc has no such arenas
        ctypes.CDLL("libc.so.6").mallopt(m_arena_max, 1)


def serve_warm(address: str, parent_alive: int):
    """The warm process: imports what a worker needs, then forks one worker per request and reports its exit.

    It listens before it imports, so that requests made meanwhile wait in the socket's queue. A request
    is the worker's environment (Beam's endpoints in it); the answer is the worker's exit code. A requester
    that goes away takes its worker with it; SIGTERM, or the end of the parent_alive pipe (the command has
    ended, however it ended), ends all.
    """
    workers: dict[int, socket.socket | None] = {}  # None: its requester has gone

    def stop(*_):
        kill(workers)
        for pid in workers:  # reaped, so that their CPU time counts in this process's children's
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address)
    listener.listen(64)
    import importlib

    for name in WORKER_MODULES:
        importlib.import_module(name)
    while True:
        requesters = [connection for connection in workers.values() if connection is not None]
        readable, _, _ = select.select([parent_alive, listener, *requesters], [], [], 0.2)
        if parent_alive in readable and not os.read(parent_alive, 1):
            stop()
        if listener in readable:
            connection, _ = listener.accept()
            connection.settimeout(10)
            try:
                if not same_user(connection):  # an abstract socket has no permissions: anyone may connect
                    raise PermissionError
                environment = json.loads(receive_line(connection))
            except (OSError, ValueError):
                connection.close()
                continue
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                listener.close()
                for other in workers.values():
                    if other is not None:
                        other.close()
                run_worker(environment, connection)
            workers[pid] = connection
        for pid, connection in list(workers.items()):
            if connection in readable:  # the requester has gone (done, or killed): so does its worker
                kill([pid])
                connection.close()
                workers[pid] = None
        while workers:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = workers.pop(pid)
            if connection is not None:  # a worker that was killed said nothing: its requester reads the end
                connection.close()


def same_user(connection: socket.socket) -> bool:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", credentials)
    return uid == os.getuid()


def receive_line(connection: socket.socket) -> bytes:
    chunks = []
    while (chunk := connection.recv(1 << 16)) and not chunk.endswith(b"\n"):
        chunks.append(chunk)
    return b"".join(chunks) + chunk


def sample_states_often():
    """A worker's state sampler wakes every SAMPLING_PERIOD_MS rather than Beam's 200 ms.

    Each bundle ends by waiting for the sampler's current sleep to end: at the end of the job, every worker
    idle for up to 200 ms (BENCHMARKS.md). Beam has no option for it; its bundle processors take the default.
    """
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    if init.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):  # the Beam this was written for
        init.__defaults__ = (SAMPLING_PERIOD_MS,)


def run_worker(environment: dict | None, requester: socket.socket | None = None):
    """One Beam SDK worker in this process, with the environment the runner gave it; ends the process,
    telling the requester its exit code first (the requester answers the runner at once)."""
    if environment is not None:
        os.environ.clear()
        os.environ.update(environment)
    from apache_beam.runners.worker import sdk_worker_main

    sample_states_often()
    code = 0
    try:
        sdk_worker_main.main(sys.argv)
    except BaseException:  # noqa: BLE001 - the runner learns of it through its control channel
        code = 1
    # The runner waits for its workers to exit before the job ends: a worker whose work is done ends at once.
    from pipeline import cli

    if requester is not None:
        with contextlib.suppress(OSError):
            requester.sendall(bytes([code]))
    cli.exit_at_once(code)


def request_worker(address: str) -> int | None:
    """Has the warm process fork this worker; its exit code, or None when there is no warm process."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect("\0" + address)
    except OSError:
        return None
    # One line (JSON escapes newlines); the connection stays open: closing it stops the worker.
    connection.sendall(json.dumps(dict(os.environ)).encode() + b"\n")
    answer = connection.recv(1)
    return answer[0] if answer else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    if sys.argv[1:2] == ["--warm"]:
        become_warm(sys.argv[2], parent_alive=sys.stdin.fileno())
    code = request_worker(os.environ[WARM_ADDRESS_ENV]) if WARM_ADDRESS_ENV in os.environ else None
    if code is not None:
        os._exit(code)
    run_worker(None)
