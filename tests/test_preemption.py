"""trainer.preemption's own pieces, each in a real process."""

import os
import signal
import subprocess
import sys

from conftest import REPO

CHILD = """
import sys, time
from trainer import preemption
preemption.end_with_supervisor()
print("watching", flush=True)
time.sleep(60)
"""


def test_the_training_child_ends_when_its_supervisor_is_gone_even_by_sigkill():
    alive_read, alive_write = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True, pass_fds=(alive_read,),
        env={**os.environ, "MOVING_LINE_SUPERVISOR_FD": str(alive_read)},
    )  # fmt: skip
    os.close(alive_read)
    try:
        assert child.stdout.readline() == "watching\n"
        assert child.poll() is None
        os.close(alive_write)  # what the kernel does for a supervisor that dies, SIGKILL included
        assert child.wait(timeout=20) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
