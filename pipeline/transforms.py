"""The Beam job that writes the moving_line dataset: split plans in, shard files out.

Every shard is one element: the worker that takes it generates the shard's index range
chunk by chunk, serializes each example once and streams the records into the shard's
file in every requested format. No example ever travels through a shuffle, so memory
stays flat however many examples there are, and shard i of a given plan always holds the
same examples in the same order, whatever the runner or the number of workers. The shards of a
split are expanded from one small element by the workers, so a plan of millions of shards
never sits in the launching process's memory.

The workers import neither TensorFlow nor TFDS (pipeline.records writes the files), which
keeps their start-up short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import apache_beam as beam

from pipeline import contract, records

# Examples serialized by one numpy pass: big enough to amortise Python, small enough to keep a
# worker's memory flat (the videos are never drawn, a chunk is a few MB).
CHUNK_EXAMPLES = 1024


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """A split of `count` examples in `num_shards` shards, written into `folder` in each of `file_formats`."""

    split: str
    count: int
    num_shards: int
    folder: str
    file_formats: tuple[str, ...]

    def shards(self):
        """Its ShardPlans, one at a time."""
        for index in range(self.num_shards):
            start, count = shard_range(self.count, self.num_shards, index)
            yield ShardPlan(self.split, index, start, count, self.num_shards, self.folder, self.file_formats)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Examples start..start+count-1 of a split: shard `index` of `num_shards`, in each format."""

    split: str
    index: int
    start: int
    count: int
    num_shards: int
    folder: str
    file_formats: tuple[str, ...]

    def file_name(self, file_format: str) -> str:
        return contract.shard_file_name(self.split, file_format, self.index, self.num_shards)


def chunk_ranges(count: int, chunk: int = CHUNK_EXAMPLES, start: int = 0) -> list[tuple[int, int]]:
    """[(start, count), ...] covering start..start+count-1 in order."""
    return [(begin, min(chunk, start + count - begin)) for begin in range(start, start + count, chunk)]


def shard_range(count: int, num_shards: int, index: int) -> tuple[int, int]:
    """(start, count) of shard `index` of num_shards nearly equal, consecutive index ranges."""
    begin, end = count * index // num_shards, count * (index + 1) // num_shards
    return begin, end - begin


def shard_bounds(count: int, num_shards: int) -> list[tuple[int, int]]:
    """[(start, count), ...] of every shard (see shard_range)."""
    return [shard_range(count, num_shards, index) for index in range(num_shards)]


def temporary_name(path: str) -> str:
    """Where a shard is written before it is complete (TFDS's readers never list this name)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.incomplete-{os.getpid()}")


class WriteShard(beam.DoFn):
    """ShardPlan -> writes its files -> (split, index, examples, serialized bytes, {file name: file bytes})."""

    def __init__(self, seed: int, size: int, progress_folder: str | None = None):
        self._seed, self._size, self._progress_folder = seed, size, progress_folder

    def setup(self):
        records.keep_freed_memory()

    def process(self, plan: ShardPlan):
        from etils import epath

        final = {name: os.path.join(plan.folder, plan.file_name(name)) for name in plan.file_formats}
        # Written beside its final name and renamed when complete: a retried or killed worker never
        # leaves a half-written shard under the real name.
        temporary = {file_format: temporary_name(path) for file_format, path in final.items()}
        writers = {}
        serialized_bytes = 0
        try:
            for file_format in plan.file_formats:
                writers[file_format] = records.open_writer(file_format, temporary[file_format])
            for start, count in chunk_ranges(plan.count, start=plan.start):
                chunk = records.serialize_examples(self._seed, plan.split, start, count, self._size)
                for writer in writers.values():
                    for record in chunk:
                        writer.write(record)
                serialized_bytes += sum(map(len, chunk))
                if self._progress_folder:
                    open(os.path.join(self._progress_folder, f"{plan.split}-{start}-{count}"), "w").close()
            while writers:
                writers.popitem()[1].close()
            file_bytes = {}
            for file_format, path in final.items():
                epath.Path(temporary[file_format]).rename(path)
                file_bytes[os.path.basename(path)] = epath.Path(path).stat().length
        finally:
            for writer in writers.values():
                with contextlib.suppress(Exception):  # already failing: the first error is the one to report
                    writer.close()
            for path in temporary.values():
                epath.Path(path).unlink(missing_ok=True)
        beam.metrics.Metrics.counter(contract.NAME, f"{plan.split}_examples").inc(plan.count)
        beam.metrics.Metrics.counter(contract.NAME, "shards_written").inc()
        yield plan.split, plan.index, plan.count, serialized_bytes, file_bytes


def record_shards(keyed_shards: tuple, path: str):
    """Writes what every shard holds (all under one key) as JSON, for the builder to read after the run."""
    from etils import epath

    _, shards = keyed_shards
    epath.Path(path).write_text(json.dumps(sorted(shards)))


class WriteShards(beam.PTransform):
    """Writes every shard of the planned splits; then what they hold (see record_shards) to shards_path."""

    def __init__(self, splits: list[SplitPlan], seed: int, size: int, shards_path: str, progress_folder=None):
        super().__init__()
        self._splits, self._shards_path = splits, shards_path
        self._write = WriteShard(seed, size, progress_folder)

    def expand(self, pbegin):
        return (
            pbegin
            # A handful of elements: Create's own Reshuffle would only add a stage.
            | "Splits" >> beam.Create(self._splits, reshuffle=False)
            | "Shards" >> beam.FlatMap(SplitPlan.shards)
            # Without a fusion break every shard would be written by the worker that expanded the split.
            | "Distribute" >> beam.Reshuffle()
            | "WriteShard" >> beam.ParDo(self._write)
            # One group rather than CombineGlobally(ToList), whose default for an empty input costs two
            # more stages; every plan has shards.
            | "Key" >> beam.WithKeys(0)
            | "Collect" >> beam.GroupByKey()
            | "RecordShards" >> beam.Map(record_shards, path=self._shards_path)
        )
