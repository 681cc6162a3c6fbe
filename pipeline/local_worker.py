"""A Beam SDK worker process for the local runner that leaves SIGINT and the terminal to pipeline.generate.

Ctrl-C reaches every process of the terminal's foreground group: Beam's own workers would each
print a traceback. These ignore it; pipeline.generate stops them itself (see signals_stop_workers).
Their stderr goes nowhere: an error in a worker reaches pipeline.generate through Beam's runner,
which fails with the worker's traceback, so the terminal shows one line per failure, not one per worker.
"""

import os
import runpy
import signal

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    runpy.run_module("apache_beam.runners.worker.sdk_worker_main", run_name="__main__", alter_sys=True)
