"""What every command shares: one-line errors with documented exit codes, and progress lines.

Exit codes: 0 done; 1 a fault (full disk, damaged file, lost peer: the line says what happened and
what to do, and running the same command again does the right thing); 2 bad input (nothing was
written); 128 + the signal's number when SIGINT (130) or SIGTERM (143) stopped a command.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import importlib.abc
import importlib.util
import logging
import os
import re
import signal
import sys
import tempfile
import threading

USAGE_ERROR_EXIT = 2
FAULT_EXIT = 1
NO_SPACE = "No space left on device"


def interrupted_exit(signal_number: int) -> int:
    """The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + signal_number


class UsageError(ValueError):
    """Bad input the user can fix; the message says how."""


class FaultError(RuntimeError):
    """A failure that is not the user's input (full disk, damaged file, lost peer); the message says what to do."""

    def __init__(self, message: str, exit_code: int = FAULT_EXIT):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; like KeyboardInterrupt, not caught by `except Exception`."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


# The signals raise_interrupted has raised. Python drops an exception raised inside a finalizer (a __del__
# that garbage collection happens to run at that moment) or inside a library's catch-all, and the command
# would go on as if never signalled; interrupts_deferred raises such a signal again at its end.
_raised: list[int] = []


def raise_interrupted(signal_number, frame):
    _raised.append(signal_number)
    if signal_number == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signal_number)


def raised_signal() -> int | None:
    """The first signal raise_interrupted has raised, if any (the command may have dropped its exception)."""
    return _raised[0] if _raised else None


def install_interrupt_handlers():
    """SIGTERM and SIGINT end the command at once, unwinding like Ctrl-C so that `finally` blocks clean up."""
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, raise_interrupted)
    if sys.unraisablehook is not _quiet_about_dropped_interrupts:
        _quiet_about_dropped_interrupts.previous = sys.unraisablehook
        sys.unraisablehook = _quiet_about_dropped_interrupts


def _quiet_about_dropped_interrupts(unraisable):
    """Python prints a dropped exception with its traceback ("Exception ignored in"); a dropped interrupt is
    raised again later (see _raised), so it is not worth a traceback."""
    if isinstance(unraisable.exc_value, (Interrupted, KeyboardInterrupt)) and _raised:
        return
    _quiet_about_dropped_interrupts.previous(unraisable)


@contextlib.contextmanager
def interrupts_deferred():
    """SIGTERM and SIGINT arriving inside are raised (as Interrupted) once it ends.

    For calls into TensorFlow: an exception raised by a signal handler in the middle of one can come out
    as another error (a failed function call, with a traceback) instead of the interrupt. Its end also
    raises a signal whose exception was raised before and dropped (see _raised): a loop that enters it
    once per batch stops within a batch of any signal. Off the main thread (a Ray worker's training thread) it does
    nothing: Python runs signal handlers on the main thread only, so none interrupts this one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {number: signal.signal(number, lambda number, frame: pending.append(number))
                for number in (signal.SIGTERM, signal.SIGINT)}  # fmt: skip
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if pending or _raised:
            raise Interrupted(pending[0] if pending else raised_signal())


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line (no usage dump) and exits 2."""

    def error(self, message):
        fail(self.prog, message)


def flags_in_usage(parser: argparse.ArgumentParser) -> list[str]:
    """The --flags a parser takes, as its usage line lists them."""
    return sorted(set(re.findall(r"--[A-Za-z0-9][\w-]*", parser.format_usage())))


def fail(prog: str, message: str, exit_code: int = USAGE_ERROR_EXIT):
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


# How long a command may take to stop after SIGTERM or Ctrl-C before it is ended without its own clean-up: within the
# 30 s Kubernetes waits before it kills, with room for the slowest clean-up (a batch finished, workers ended).
STUCK_SECONDS = 20.0


@contextlib.contextmanager
def stuck_waits_end(prog: str):
    """Ends the process in one line when a stop signal has not ended it within STUCK_SECONDS.

    Python runs a signal handler (raise_interrupted) only when the main thread runs Python: a main thread blocked
    inside a library (TensorFlow waiting on a server or an object store that does not answer) would never see it.
    The C handler also writes each signal to Python's wakeup file descriptor, whatever the main thread does: a
    thread reads it here. A part of a command that handles signals its own way (trainer.preemption, the Beam
    workers' watcher in pipeline.local_runner) sets its own descriptor meanwhile and restores this one after.
    """
    try:
        read, write = os.pipe()
    except OSError:
        yield
        return
    os.set_blocking(write, False)
    try:
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:  # not the main thread (a command's main called from a thread): nothing to watch
        os.close(read)
        os.close(write)
        yield
        return
    done = threading.Event()

    def watch():
        with contextlib.suppress(OSError):
            while numbers := os.read(read, 64):
                number = next((number for number in numbers if number in (signal.SIGTERM, signal.SIGINT)), None)
                if number is not None and not done.wait(STUCK_SECONDS):
                    print(
                        f"{prog}: error: interrupted by {signal.Signals(number).name}, which it did not take within "
                        f"{STUCK_SECONDS:g} s (a wait inside a library); run the same command again",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(interrupted_exit(number))
        os.close(read)

    threading.Thread(target=watch, name="stuck-wait-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(previous)
        os.close(write)  # the watcher reads end-of-file and ends


def run_main(prog: str, main, argv=None):
    """Runs main(argv); a UsageError, FaultError, full disk, Ctrl-C or SIGTERM becomes one line and its exit code."""
    install_interrupt_handlers()
    with stuck_waits_end(prog):
        return _run(prog, main, argv)


def _run(prog: str, main, argv):
    try:
        return main(argv)
    except UsageError as error:
        fail(prog, str(error))
    except FaultError as error:
        fail(prog, str(error), error.exit_code)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = f" writing {error.filename}" if error.filename else ""
        fail(prog, f"no space left on the device{where}; free some space and run the same command again", FAULT_EXIT)
    except Exception as error:
        # tf.io.gfile reports a full disk as ResourceExhaustedError("PATH; No space left on device").
        if type(error).__name__ != "ResourceExhaustedError" or NO_SPACE not in str(error):
            raise
        where = f" writing {str(error).split(';')[0]}" if ";" in str(error) else ""
        fail(prog, f"no space left on the device{where}; free some space and run the same command again", FAULT_EXIT)
    except KeyboardInterrupt:
        fail(prog, "interrupted by SIGINT; run the same command again", interrupted_exit(signal.SIGINT))
    except Interrupted as interrupt:
        name = signal.Signals(interrupt.signal_number).name
        fail(prog, f"interrupted by {name}; run the same command again", interrupted_exit(interrupt.signal_number))


def check_reachable(path: str | None, flag: str):
    """A UsageError when path lies on an object store (gs://...) that cannot be reached (no network, no credentials,
    a bucket this account may not read), found before anything is written: TensorFlow's file systems report it with
    a traceback, wherever a library first touches the path. A local path: nothing to check."""
    if not path or "://" not in path:
        return
    quiet_tensorflow()
    import tensorflow as tf

    try:
        tf.io.gfile.exists(path)
    except tf.errors.OpError as error:
        reason = " ".join(error.message.split()).split(" when ")[0][:300]
        raise UsageError(
            f"{flag} {path} cannot be reached ({reason}); check the address, the network and the credentials"
        ) from None


def run_and_exit(prog: str, main):
    """A command's `python -m` entry: run_main, then exit with its code. After a stop signal the process ends without
    Python's teardown: TensorFlow's threads may still be inside the interrupted work, and freeing the interpreter
    under them can abort the process (`free(): invalid next size`) instead of exiting with the signal's code. By
    then the command's line is printed and what it wrote is closed or removed."""
    try:
        code = run_main(prog, main)
    except SystemExit as leaving:
        code = leaving.code
    if code in (interrupted_exit(signal.SIGINT), interrupted_exit(signal.SIGTERM)):
        exit_at_once(code)
    leave(code)


def leave(code):
    """Exits with code, with Python's teardown (atexit handlers, TensorFlow's own clean-up) but without its last
    garbage collection: that pass walks every object TensorFlow and Keras created, which are freed just after
    whether or not it ran, and costs about a second of CPU at every exit (BENCHMARKS.md, the test suite)."""
    gc.freeze()
    raise SystemExit(code)


def exit_at_once(code: int):
    """Ends the process without Python's teardown: for a process whose work is done, written and closed.

    Freeing the many objects of Beam, gRPC and protobuf one by one at exit does nothing for a finished
    job, and takes longer than a small job's work (BENCHMARKS.md, generation).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


# What TensorFlow's C++ code prints while it loads, before its log level applies (absl's logging
# writes every line to stderr until it is initialised, and TF_CPP_MIN_LOG_LEVEL is read later):
# absl's notice about that, oneDNN's and the CUDA stub's notices (twice: two libraries each print
# them), CPU-feature advice, and cuInit's failure on a machine without a GPU driver.
CPP_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ (\S+):\d+\] (.*)$")
ABSL_BEFORE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
CPU_FEATURE_ADVICE = re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate")
SEVERITIES = "IWEF"
# TFDS's own Tensor feature reads its deprecated `dtype` field when decoding, and logs a warning about it.
LIBRARY_NOTICES = re.compile(r"`\w+\.dtype` is deprecated\. Please change your code to use NumPy")


def quiet_tensorflow():
    """Keeps the libraries' start-up chatter out of the commands' output; call it before TensorFlow loads.

    TF_CPP_MIN_LOG_LEVEL (default 2: errors only) applies to what TensorFlow's C++ code logs once it has
    loaded; what it prints while loading (CPP_LOG_LINE and the rest above) is caught, filtered by the same
    level and by what is known to be chatter, and the rest printed. Real warnings and errors still show.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Beam's local runners log their workers' start-up and shutdown through the launching process's loggers:
    # INFO lines, and a warning from each worker about a missing semi-persistent folder. Errors still show.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(existing, _DropLibraryNotices) for existing in absl_logger.filters):
        absl_logger.addFilter(_DropLibraryNotices())
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


class _DropLibraryNotices(logging.Filter):
    def filter(self, record):
        return not LIBRARY_NOTICES.search(str(record.msg))


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` for a loader that imports it (and finds its devices) with stderr caught.

    Stays in sys.meta_path until TensorFlow is imported: libraries ask for its spec to see whether it
    is installed (TFDS does) before they import it.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or name in sys.modules:
            return None
        sys.meta_path.remove(self)  # the real spec, from the finders after this one
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, finder):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        module.__loader__ = module.__spec__.loader = self.loader  # the real loader from here on
        with start_up_lines_filtered():
            self.loader.exec_module(module)
            # Finding the devices initialises CUDA: on a machine without a driver, cuInit's failure is logged here.
            module.config.list_physical_devices()


@contextlib.contextmanager
def start_up_lines_filtered():
    """Catches what is written to file descriptor 2 inside the block; prints it again less the start-up chatter."""
    sys.stderr.flush()
    try:
        caught = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, once descriptor 2 is restored
    except OSError:  # no temporary folder: let the chatter through rather than fail
        yield
        return
    with caught:
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", errors="replace")
            for line in lines_worth_showing(text, os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")):
                print(line, file=sys.stderr, flush=True)


def lines_worth_showing(text: str, min_log_level: str) -> list[str]:
    """The lines of text that are not TensorFlow's start-up chatter, nor C++ log lines below min_log_level."""
    minimum = int(min_log_level) if min_log_level.strip().isdigit() else 0
    no_driver = "Could not find cuda drivers on your machine" in text
    kept = []
    for line in text.splitlines():
        if line == ABSL_BEFORE_INIT or (minimum > 0 and CPU_FEATURE_ADVICE.match(line)):
            continue
        log_line = CPP_LOG_LINE.match(line)
        if log_line:
            severity, source, message = log_line.groups()
            if SEVERITIES.index(severity) < minimum:
                continue
            if no_driver and source == "cuda_platform.cc" and "failed call to cuInit" in message:
                continue  # no driver installed, so no GPU to use: expected, not an error
        kept.append(line)
    return kept


def log(prog: str, message: str):
    print(f"[{prog}] {message}", file=sys.stderr, flush=True)
