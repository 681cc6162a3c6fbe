"""What every command shares: one-line errors with documented exit codes, and progress lines.

Exit codes: 0 done; 1 a fault (full disk, damaged file, lost peer: the line says what happened and
what to do, and running the same command again does the right thing); 2 bad input (nothing was
written); 128 + the signal's number when SIGINT (130) or SIGTERM (143) stopped a command.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

USAGE_ERROR_EXIT = 2
FAULT_EXIT = 1


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


def raise_interrupted(signal_number, frame):
    raise Interrupted(signal_number)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line (no usage dump) and exits 2."""

    def error(self, message):
        fail(self.prog, message)


def fail(prog: str, message: str, exit_code: int = USAGE_ERROR_EXIT):
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def run_main(prog: str, main, argv=None):
    """Runs main(argv); a UsageError, FaultError, full disk, Ctrl-C or SIGTERM becomes one line and its exit code."""
    # SIGTERM (what schedulers send before killing) unwinds like Ctrl-C, so `finally` blocks clean up.
    signal.signal(signal.SIGTERM, raise_interrupted)
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
    except KeyboardInterrupt:
        fail(prog, "interrupted by SIGINT; run the same command again", interrupted_exit(signal.SIGINT))
    except Interrupted as interrupt:
        name = signal.Signals(interrupt.signal_number).name
        fail(prog, f"interrupted by {name}; run the same command again", interrupted_exit(interrupt.signal_number))


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


def quiet_tensorflow():
    """Keeps TensorFlow's C++ start-up chatter out of the commands' output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def log(prog: str, message: str):
    print(f"[{prog}] {message}", file=sys.stderr, flush=True)
