"""The Beam job that writes the moving_line dataset: shard plans in, TFRecord shards out.

Every shard is one element: the worker that takes it generates the shard's index range
chunk by chunk, encodes and serializes each example, and streams the records into the
shard's file. No example ever travels through a shuffle, so memory stays flat however
many examples there are, and shard i of a split always holds the same examples in the
same order, whatever the runner or the number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import os

import apache_beam as beam

from pipeline import cli, generator

# Beam's worker processes import this module before TensorFlow: keep its start-up lines out of their output
# (and, in the launching process, Beam's INFO lines about its workers).
cli.quiet_tensorflow()

# Examples made by one numpy call: big enough to amortise Python, small enough that a
# chunk of size-50 videos (125 kB each) stays around 32 MB in a worker.
CHUNK_EXAMPLES = 256


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Examples start..start+count-1 of a split, written to path (shard `index`)."""

    split: str
    index: int
    start: int
    count: int
    path: str


def chunk_ranges(count: int, chunk: int = CHUNK_EXAMPLES, start: int = 0) -> list[tuple[int, int]]:
    """[(start, count), ...] covering start..start+count-1 in order."""
    return [(begin, min(chunk, start + count - begin)) for begin in range(start, start + count, chunk)]


def shard_bounds(count: int, num_shards: int) -> list[tuple[int, int]]:
    """[(start, count), ...] of num_shards nearly equal, consecutive index ranges."""
    edges = [count * index // num_shards for index in range(num_shards + 1)]
    return [(edges[index], edges[index + 1] - edges[index]) for index in range(num_shards)]


class WriteShard(beam.DoFn):
    """ShardPlan -> writes its TFRecord file -> (split, index, examples, bytes)."""

    def __init__(self, seed: int, size: int, features, progress_folder: str | None = None):
        self._seed, self._size, self._features = seed, size, features
        self._progress_folder = progress_folder

    def setup(self):
        # TFDS's own serializer and record writer: the files are what TFDS itself would write.
        from tensorflow_datasets.core import example_serializer, file_adapters, writer

        self._serializer = example_serializer.ExampleSerializer(self._features.get_serialized_info())
        self._writer = writer.ExampleWriter(file_format=file_adapters.FileFormat.TFRECORD)

    def process(self, plan: ShardPlan):
        from etils import epath
        from tensorflow_datasets.core import utils

        written = {"examples": 0, "bytes": 0, "right": 0}

        def records():
            for start, count in chunk_ranges(plan.count, start=plan.start):
                arrays = generator.generate(self._seed, plan.split, start, count, self._size)
                for offset in range(count):
                    example = {name: arrays[name][offset] for name in ("video", "label", "path")}
                    record = self._serializer.serialize_example(self._features.encode_example(example))
                    written["bytes"] += len(record)
                    yield start + offset, record
                written["examples"] += count
                written["right"] += int(arrays["label"].sum())
                if self._progress_folder:
                    open(os.path.join(self._progress_folder, f"{plan.split}-{start}-{count}"), "w").close()

        # Written beside its final name and renamed when complete: a retried or killed worker
        # never leaves a half-written shard under the real name.
        with utils.incomplete_files(epath.Path(plan.path)) as temporary_path:
            self._writer.write(temporary_path, records())
        beam.metrics.Metrics.counter("moving_line", f"{plan.split}_examples").inc(written["examples"])
        beam.metrics.Metrics.counter("moving_line", f"{plan.split}_right").inc(written["right"])
        beam.metrics.Metrics.counter("moving_line", "shards_written").inc()
        yield plan.split, plan.index, written["examples"], written["bytes"]


def record_shards(shards: list, path: str):
    """Writes what every shard holds as JSON, for the builder to read after the run."""
    from etils import epath

    epath.Path(path).write_text(json.dumps(sorted(shards)))


class WriteShards(beam.PTransform):
    """Writes every planned shard; then what they hold (see record_shards) to shards_path."""

    def __init__(self, plans: list[ShardPlan], seed: int, size: int, features, shards_path: str, progress_folder=None):
        super().__init__()
        self._plans, self._shards_path = plans, shards_path
        self._write = WriteShard(seed, size, features, progress_folder)

    def expand(self, pbegin):
        return (
            pbegin
            | "Plans" >> beam.Create(self._plans)
            # Without a fusion break every shard would be written by the worker that made the list.
            | "Distribute" >> beam.Reshuffle()
            | "WriteShard" >> beam.ParDo(self._write)
            | "Collect" >> beam.combiners.ToList()
            | "RecordShards" >> beam.Map(record_shards, path=self._shards_path)
        )
