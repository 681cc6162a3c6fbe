"""Test harness: faults injected into trainer processes started with FAULT_AT=<point>:<n>[:<signal>].

Python imports this module at start-up when this folder is on PYTHONPATH (tests/test_faults_training.py puts
it there). When trainer.train is imported, the process is made to signal itself (SIGKILL by default:
no clean-up, as when a machine is lost) right after its n-th
  train_step        train step (mid-epoch),
  validation_step   validation step (mid-validation),
  checkpoint_write  checkpoint write, after cutting the data file it wrote in half (mid-write: the
                    manifest that would make it a finished checkpoint is never written).
When pipeline.transforms is imported (a Beam or Dask worker of pipeline.generate), before its n-th
  write_shard       shard written (a worker that dies on a shard: out of memory, say).
In place of a signal, "hang" makes the process stop there without dying: its main thread sleeps, while TensorFlow's
own threads go on answering the other workers' health checks.
"""

import functools
import importlib.abc
import importlib.util
import os
import signal
import sys
import time

FAULT = os.environ.get("FAULT_AT")


def inject(module):
    point, count, *name = FAULT.split(":")
    hang = name == ["hang"]
    count, number = int(count), None if hang else signal.Signals[name[0] if name else "SIGKILL"]

    def fault():
        if hang:
            time.sleep(10**6)
        os.kill(os.getpid(), number)

    if (module.__name__ == "pipeline.transforms") != (point == "write_shard"):
        return  # a point of the other module
    calls = [0]

    def counted(function, before_signal=lambda *args: None):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            calls[0] += 1
            if calls[0] == count:
                before_signal(*args)
                fault()
            return result

        return wrapper

    if point == "write_shard":
        process = module.WriteShard.process

        @functools.wraps(process)  # Beam finds (and pickles) the method by its name
        def dying_process(self, plan):
            calls[0] += 1
            if calls[0] == count:
                fault()
            yield from process(self, plan)

        module.WriteShard.process = dying_process
        return
    if point == "checkpoint_write":
        import tensorflow as tf

        def cut_data_file(checkpoint, prefix, *args):
            data = f"{prefix}.data-00000-of-00001"
            os.truncate(data, os.path.getsize(data) // 2)

        tf.train.Checkpoint.write = counted(tf.train.Checkpoint.write, cut_data_file)
        return
    build_steps = module.Loop._build_steps

    def build_counted_steps(loop):
        build_steps(loop)
        setattr(loop, point, counted(getattr(loop, point)))

    module.Loop._build_steps = build_counted_steps


class InjectOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self):
        self.finding, self.loader = False, None

    def find_spec(self, name, path, target=None):
        if name not in ("trainer.train", "pipeline.transforms") or self.finding:
            return None
        self.finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.finding = False
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        inject(module)


if FAULT:
    sys.meta_path.insert(0, InjectOnImport())
