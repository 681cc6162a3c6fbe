"""Stopping cleanly when asked: SIGTERM (what Kubernetes, Vertex AI and spot VMs send before they kill) or SIGINT.

In the training process, StopRequest only notes the signal: the loop finishes the step in progress,
saves a checkpoint, says where it stopped and exits with 128 + the signal's number (143 for SIGTERM,
130 for Ctrl-C); the same command then resumes exactly. Should the loop not get there within
GRACE_SECONDS (a first step still being compiled, a wait inside TensorFlow for a batch that does not come:
a tf.data service with no worker, a dispatcher gone), a watchdog thread says so, naming what the loop was
waiting for, and exits; the run resumes from its last checkpoint. Python runs a signal handler only when
the main thread runs Python, which a thread blocked inside TensorFlow never does: so the signal is also
read from Python's wakeup file descriptor (written by the C handler whatever the main thread does) by a
thread of its own, which starts the watchdog.

Across machines, MultiWorkerMirroredStrategy waits for every worker inside TensorFlow, holding Python's
lock, where no signal handler and no timeout can run; TensorFlow's coordination service also takes
SIGTERM for itself. So with TF_CONFIG, trainer.task runs the training in a child process and watches it
(supervise): until the child reports that every worker has joined, a signal or peer_wait_seconds ends the
child at once (nothing is written before that); afterwards signals are passed on to the child, which
stops as above, and the child is ended if it is not gone within the grace period. The supervisor
relays the child's stderr, less the C++ error lines in which TensorFlow's distributed runtime reports a
lost peer, and says so when the child is killed by a signal it did not pass on (the out-of-memory killer's
SIGKILL): every worker ends with one line of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from pipeline import cli

GRACE_SECONDS = 8.0
# The supervisor allows the child its grace period and a little more to save and exit.
SUPERVISOR_GRACE_SECONDS = GRACE_SECONDS + 1.5
READY_FD_VARIABLE = "MOVING_LINE_TRAINER_READY_FD"
# The read end of a pipe whose write end only the supervisor holds: it reads end-of-file once the supervisor is gone.
SUPERVISOR_FD_VARIABLE = "MOVING_LINE_SUPERVISOR_FD"
# The training child's stderr is a pipe to its supervisor: this says whether the supervisor's is a terminal.
TERMINAL_VARIABLE = "MOVING_LINE_TRAINER_STDERR_IS_A_TERMINAL"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Whether this process is the training child of supervise() (read at start: the variable is then removed).
SUPERVISED = READY_FD_VARIABLE in os.environ
# How long the chief waits for the other workers to be gone before it exits.
LEAVE_SECONDS = 10.0


class Stop:
    """What trainer.train's Loop reads of a request to stop: whether one came (before each step), and the signal
    that asked (its name for the last line, its exit code)."""

    def __init__(self):
        self.signal_number: int | None = None
        self.resume_hint = "nothing was saved yet"

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def exit_code(self) -> int:
        return cli.interrupted_exit(self.signal_number)

    def name(self) -> str:
        return signal.Signals(self.signal_number).name

    @contextlib.contextmanager
    def waiting(self, what: str, at_once: bool = False):
        """Marks a wait that may not end by itself; a stop with no watchdog has nothing to do with it."""
        yield


class StopRequest(Stop):
    """The first SIGTERM or SIGINT, noted for the training loop; a watchdog exits if the loop is too slow."""

    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog
        # What the loop is waiting for, when it waits for something that may never come (said if the watchdog ends it),
        # and whether a stop then ends the command at once (no step of this run to finish or save).
        self.waiting_for: str | None = None
        self.waiting_ends_at_once = False
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        # Taken by the first to end the command, never released: the watchdog and a wait marked at_once can both get
        # there when the signal comes as the wait begins, and only one line may be said.
        self._ending = threading.Lock()
        self._wakeup: tuple[int, int] | None = None
        self._previous_wakeup = -1

    def install(self):
        for number in STOP_SIGNALS:
            signal.signal(number, self._note)
        self._watch_wakeup_fd()
        if cli.raised_signal() is not None:  # raised before and dropped on the way (see cli._raised)
            self._note(cli.raised_signal(), None)

    def uninstall(self):
        """Back to ending the command at once (cli.run_main's handling) once there is no step to finish."""
        self.stopped()
        cli.install_interrupt_handlers()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._wakeup[1])  # the watcher reads end-of-file and ends
            self._wakeup = None

    def _watch_wakeup_fd(self):
        """Notes a stop signal from a thread of its own: Python's handler (self._note) waits for the main thread."""
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._wakeup = (read, write)

        def watch():
            with contextlib.suppress(OSError):
                while numbers := os.read(read, 64):
                    for number in numbers:
                        if number in STOP_SIGNALS:
                            self._note(number, None)
            os.close(read)

        threading.Thread(target=watch, name="stop-signal-watch", daemon=True).start()

    def stopped(self):
        """The loop has stopped and saved: the watchdog has nothing to do."""
        self._stopped.set()

    @contextlib.contextmanager
    def waiting(self, what: str, at_once: bool = False):
        """Marks a wait that may not end by itself (what: "a batch from the tf.data service at ..."), for the watchdog's
        line. at_once: a stop signal meanwhile ends the command without the grace period (the run has taken no step
        that a checkpoint would keep)."""
        self.waiting_for, self.waiting_ends_at_once = what, at_once
        try:
            if at_once and self.requested:
                self._end()  # the signal came before the wait began
            yield
        finally:
            self.waiting_for, self.waiting_ends_at_once = None, False

    def _note(self, signal_number, frame):
        with self._lock:
            if self.signal_number is not None:
                return  # already stopping; schedulers and terminals often send more than one
            self.signal_number = signal_number
        threading.Thread(target=self._watchdog, daemon=True).start()

    def _watchdog(self):
        if self._stopped.wait(0 if self.waiting_ends_at_once else GRACE_SECONDS):
            return
        self._end()

    def _end(self):
        self._ending.acquire()  # a second caller waits here for the first one's os._exit
        doing = f"while waiting for {self.waiting_for}" if self.waiting_for else "before the step in progress finished"
        print(
            f"{self.prog}: error: stopped by {self.name()} {doing}; "
            f"{self.resume_hint}; run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        os._exit(self.exit_code)


def supervised() -> bool:
    """Whether this process is the training child of supervise()."""
    return SUPERVISED


def leave_cluster(chief: bool, peer_addresses, exit_code: int):
    """Ends a worker's process, the chief last.

    The chief hosts TensorFlow's coordination service: a worker still running when it is gone logs errors
    about it after its own last line. So the others exit at once, and the chief waits (at most LEAVE_SECONDS)
    until no other worker answers before it exits. os._exit skips TensorFlow's own shutdown, which waits for
    every worker to reach it and so can hang once one has ended another way.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if chief:
        deadline = time.monotonic() + LEAVE_SECONDS
        while time.monotonic() < deadline and any(listening(address) for address in peer_addresses):
            time.sleep(0.1)
    os._exit(exit_code)


def tell_supervisor_ready():
    """Tells supervise() that every worker has joined and this process now handles signals itself."""
    descriptor = os.environ.pop(READY_FD_VARIABLE, None)
    if descriptor is not None:
        os.write(int(descriptor), b"1")
        os.close(int(descriptor))


def end_with_supervisor():
    """In the training child: ends it when its supervisor is gone, however it went (SIGKILL included), so that no
    training process is left behind holding the model_dir and the cluster's ports.

    A thread waits on the supervisor's pipe. It runs as soon as TensorFlow lets Python's threads run: while the
    workers join, MultiWorkerMirroredStrategy may hold Python's lock until they have (the supervisor's own
    peer_wait_seconds bounds that wait)."""
    descriptor = os.environ.pop(SUPERVISOR_FD_VARIABLE, None)
    if descriptor is None:
        return

    def wait():
        with contextlib.suppress(OSError):
            while os.read(int(descriptor), 1):
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="supervisor-watch", daemon=True).start()


def supervise(prog: str, argv: list[str], peer_wait_seconds: float, peers: dict[str, str], describe_self: str) -> int:
    """Runs `python -m trainer.task argv` as a child and watches it (see the module's docstring); its exit code.

    peers: the other workers' addresses by name ("worker 1" -> "host:port"), to say which did not join.
    """
    received: list[int] = []
    for number in STOP_SIGNALS:
        signal.signal(number, lambda signal_number, frame: received.append(signal_number))
    ready_read, ready_write = os.pipe()
    alive_read, alive_write = os.pipe()  # alive_write stays here alone (os.pipe's ends are not inherited)
    terminal = {TERMINAL_VARIABLE: "1"} if sys.stderr.isatty() else {}
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer.task", *argv],
        env={**os.environ, READY_FD_VARIABLE: str(ready_write), SUPERVISOR_FD_VARIABLE: str(alive_read), **terminal},
        pass_fds=(ready_write, alive_read),
        stderr=subprocess.PIPE,
    )
    os.close(ready_write)
    os.close(alive_read)
    relay = threading.Thread(target=relay_stderr, args=(child.stderr, sys.stderr, prog), daemon=True)
    relay.start()

    def say(message: str):
        """This worker's last line, after every line of its (ended) training process."""
        relay.join(timeout=5)
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)

    deadline = time.monotonic() + peer_wait_seconds
    ready, forwarded, stop_deadline = False, 0, None
    while True:
        code = child.poll()
        if code is not None and code < 0 and not received:
            # Killed from outside (the out-of-memory killer sends SIGKILL): the child could say nothing itself.
            name = signal.Signals(-code).name
            say(
                f"the training process of {describe_self} (pid {child.pid}) was killed by {name}"
                f"{' (as the out-of-memory killer does)' if -code == signal.SIGKILL else ''}; start every worker "
                "again with the same command to resume from the last checkpoint"
            )
            return cli.interrupted_exit(-code)
        if code is not None:
            relay.join(timeout=5)
            return code if code >= 0 else cli.interrupted_exit(-code)
        if not ready:
            readable, _, _ = select.select([ready_read], [], [], 0.2)
            ready = bool(readable) and os.read(ready_read, 1) == b"1"
            if received and not ready:
                _end(child)
                name = signal.Signals(received[0]).name
                say(
                    f"stopped by {name} while waiting for the other workers; nothing was written; "
                    "run the same command again"
                )
                return cli.interrupted_exit(received[0])
            if not ready and time.monotonic() > deadline:
                _end(child)
                missing = [f"{name} ({address})" for name, address in peers.items() if not listening(address)]
                say(
                    f"{describe_self} waited {peer_wait_seconds:g} s for the other workers of TF_CONFIG; "
                    f"{'no answer from ' + ', '.join(missing) if missing else 'they did not all join'}; "
                    "start the same command on every worker (each with its own TF_CONFIG), or raise peer_wait_seconds"
                )
                return cli.FAULT_EXIT
            continue
        if len(received) > forwarded:
            for number in received[forwarded:]:
                child.send_signal(number)
            forwarded = len(received)
            stop_deadline = stop_deadline or time.monotonic() + SUPERVISOR_GRACE_SECONDS
        if stop_deadline and time.monotonic() > stop_deadline:
            _end(child)
            name = signal.Signals(received[0]).name
            say(
                f"stopped by {name}; the training process did not stop in time and was ended; "
                "run the same command again to resume from its last checkpoint"
            )
            return cli.interrupted_exit(received[0])
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.2)


# TensorFlow's distributed runtime (collectives, the coordination service, gRPC) logs each lost or stopped
# peer in C++ ERROR lines of several lines each; the worker's own last line says the same in words.
DISTRIBUTED_RUNTIME_SOURCES = re.compile(r"collective|ring_alg|coordination|grpc|rendezvous")


def relay_stderr(source, destination, prog: str):
    """Copies the training process's stderr to the supervisor's, less the distributed runtime's C++ log lines
    (each with the lines that continue it); TF_CPP_MIN_LOG_LEVEL=0 keeps them all. A progress line redrawn in
    place (it starts with a carriage return) is passed on at once."""
    keep_all = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0"
    own = (f"[{prog}]", f"{prog}: ", "Traceback")
    pending, dropping = b"", False
    while chunk := os.read(source.fileno(), 1 << 16):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            text = line.decode("utf-8", errors="replace")
            log_line = cli.CPP_LOG_LINE.match(text)
            if log_line:
                dropping = not keep_all and bool(DISTRIBUTED_RUNTIME_SOURCES.search(log_line.group(2)))
            elif text.lstrip("\r").startswith(own):
                dropping = False
            if not dropping:
                destination.write(text + "\n")
        if pending.startswith(b"\r"):
            destination.write(pending.decode("utf-8", errors="replace"))
            pending = b""
        destination.flush()
    if pending and not dropping:
        destination.write(pending.decode("utf-8", errors="replace"))
        destination.flush()


def _end(child: subprocess.Popen):
    child.kill()
    child.wait()


def listening(address: str) -> bool:
    """Whether something accepts a connection at host:port (a worker's server is up)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
    except (OSError, ValueError):
        return False
    return True
