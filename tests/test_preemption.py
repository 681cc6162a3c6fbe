"""trainer.preemption's own pieces, each in a real process."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, ended_within

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
        assert ended_within(child, 30, "the training child once its supervisor's pipe closed") == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


LOST_PEER_OUTPUT = (
    "[trainer.task] epoch 1/3: 150 steps in 28.3 s\n"
    "E0000 00:00:1796236194.062990   17685 base_collective_executor.cc:252] BaseCollectiveExecutor::StartAbort "
    "UNAVAILABLE: Error reported from /job:worker/task:1: The following tasks are unhealthy:\n"
    "/job:worker/replica:0/task:1\n"
    "The tasks have crashed. Check the task logs for an earlier error.\n"
    "E0000 00:00:1796236194.063332   17685 ring_alg.cc:291] Aborting RingReduce with UNAVAILABLE\n"
    "W0000 00:00:1796236194.063332   17685 some_kernel.cc:12] a real warning\n"
    "\r[trainer.task] epoch 2/3: step 5/150"
    "\rtrainer.task: error: lost contact with worker 1 (127.0.0.1:1) (UnavailableError) at step 150\n"
)


@pytest.mark.parametrize("level", ["2", "0"])
def test_the_supervisor_relays_its_workers_lines_less_the_distributed_runtimes_errors(level, monkeypatch):
    import io

    from trainer import preemption

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    read_end, write_end = os.pipe()
    os.write(write_end, LOST_PEER_OUTPUT.encode())
    os.close(write_end)
    relayed = io.StringIO()
    with os.fdopen(read_end, "rb") as source:
        preemption.relay_stderr(source, relayed, "trainer.task")
    if level == "0":  # TF_CPP_MIN_LOG_LEVEL=0 shows every line
        assert relayed.getvalue() == LOST_PEER_OUTPUT
    else:
        kept = [line for line in LOST_PEER_OUTPUT.split("\n") if line.startswith(("[", "W0000", "\r"))]
        assert relayed.getvalue() == "\n".join(kept) + "\n"
        assert "E0000" not in relayed.getvalue() and "The tasks have crashed" not in relayed.getvalue()


# A stop requested while the main thread waits inside TensorFlow for something that never comes (as for a batch of a
# tf.data service with no worker): Python's own handler would never run there.
BLOCKED_IN_TENSORFLOW = """
import sys
import tensorflow as tf
from trainer import preemption
stop = preemption.StopRequest("trainer.task")
stop.install()
queue = tf.queue.FIFOQueue(1, tf.int32)
print("waiting", flush=True)
with stop.waiting("an element of an empty queue", at_once=sys.argv[1] == "at_once"):
    queue.dequeue()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("number", "at_once"), [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_stop_signal_ends_a_wait_inside_tensorflow_in_one_line_within_the_grace_period(number, at_once):
    """A run with steps to save waits the grace period for its step to finish (SIGTERM here); one that has taken
    none ends at once (Ctrl-C here), and a second signal changes nothing: the first is the one named."""
    from trainer import preemption

    command = [sys.executable, "-c", BLOCKED_IN_TENSORFLOW, "at_once" if at_once else "grace"]
    waiting = subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert waiting.stdout.readline() == "waiting\n", waiting.stderr.read()
        waiting.send_signal(number)
        sent = time.monotonic()
        if number == signal.SIGINT:
            time.sleep(0.2)  # later (two signals sent at once reach their handlers in either order)
            waiting.send_signal(signal.SIGTERM)  # does nothing if it has ended already
        code = ended_within(waiting, preemption.GRACE_SECONDS + 20, "a process waiting inside TensorFlow")
        seconds = time.monotonic() - sent
        assert code == 128 + number
        if at_once:
            assert seconds < preemption.GRACE_SECONDS / 2, f"ended {seconds:.1f} s after the signal"
        else:
            assert seconds >= preemption.GRACE_SECONDS, f"ended {seconds:.1f} s after the signal, before its grace"
        assert waiting.stderr.read().strip().splitlines()[-1] == (
            f"trainer.task: error: stopped by {signal.Signals(number).name} while waiting for an element of an empty "
            "queue; nothing was saved yet; run the same command again to resume"
        )
    finally:
        waiting.kill()
        waiting.wait()
