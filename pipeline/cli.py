"""What every command shares: one-line errors with exit code 2, and progress lines."""

from __future__ import annotations

import argparse
import os
import sys

USAGE_ERROR_EXIT = 2


class UsageError(ValueError):
    """Bad input the user can fix; the message says how."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line (no usage dump) and exits 2."""

    def error(self, message):
        fail(self.prog, message)


def fail(prog: str, message: str):
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR_EXIT)


def run_main(prog: str, main, argv=None):
    """Runs main(argv); a UsageError becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except UsageError as error:
        fail(prog, str(error))


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
