"""The Beam job that writes the moving_line dataset: split plans in, shard files out.

Every shard is one element: the worker that takes it generates the shard's index range
chunk by chunk, serializes each example once and streams the records into the shard's
file in every requested format. No example ever travels through a shuffle, so memory
stays flat however many examples there are, and shard i of a given plan always holds the
same examples in the same order, whatever the runner or the number of workers.

The job starts from groups of consecutive shards (one shard a group unless there are more than
MAX_GROUPS): on Dask each group is a task of its own, and a plan of millions of shards never sits
in the launching process's memory. Every runner may run a shard twice (Dataflow retries bundles;
Dask runs again what a lost worker had done): each run writes a temporary file of its own and
replaces the final one, so a shard always ends as exactly one whole file.

The workers import neither TensorFlow nor TFDS (pipeline.records writes the files), which
keeps their start-up short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid

import apache_beam as beam

from pipeline import contract, records

# Examples serialized by one numpy pass: big enough to amortise Python, small enough to keep a
# worker's memory flat (the videos are never drawn, a chunk is a few MB).
CHUNK_EXAMPLES = 1024
# Elements the job starts from: one per shard up to this, groups of consecutive shards beyond.
MAX_GROUPS = 10_000


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """A split of `count` examples in `num_shards` shards, written into `folder` in each of `file_formats`."""

    split: str
    count: int
    num_shards: int
    folder: str
    file_formats: tuple[str, ...]

    def shard(self, index: int) -> ShardPlan:
        start, count = shard_range(self.count, self.num_shards, index)
        return ShardPlan(self.split, index, start, count, self.num_shards, self.folder, self.file_formats)

    def shards(self):
        """Its ShardPlans, one at a time."""
        for index in range(self.num_shards):
            yield self.shard(index)


@dataclasses.dataclass(frozen=True)
class ShardGroup:
    """Shards first..first+count-1 of a split."""

    split: SplitPlan
    first: int
    count: int

    def shards(self):
        for index in range(self.first, self.first + self.count):
            yield self.split.shard(index)


def shard_groups(splits: list[SplitPlan], max_groups: int = MAX_GROUPS) -> list[ShardGroup]:
    """The splits' shards in at most about max_groups groups of consecutive shards (one shard each when they fit)."""
    per_group = max(1, -(-sum(split.num_shards for split in splits) // max_groups))
    return [
        ShardGroup(split, first, min(per_group, split.num_shards - first))
        for split in splits
        for first in range(0, split.num_shards, per_group)
    ]


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
    """Where one run of a shard writes it before it is complete: a name of its own, so that two runs of the
    same shard (a retry, or a copy on another worker) never write into each other's file."""
    folder, name = os.path.split(path)
    return os.path.join(folder, contract.temporary_file_name(name, uuid.uuid4().hex))


def remove_temporaries(folder: str) -> list[str]:
    """Deletes what killed runs of shards left in folder (a worker that died mid-shard); their names."""
    from etils import epath

    left = [path for path in epath.Path(folder).iterdir() if contract.is_temporary(path.name)]
    for path in left:
        path.unlink(missing_ok=True)
    return [path.name for path in left]


def written_shard_name(split: str, index: int) -> str:
    return f"{split}-{index}.json"


def read_written_shards(folder: str) -> list[list]:
    """What every shard written into folder holds (WriteShard's notes), sorted by split and index."""
    from etils import epath

    notes = [json.loads(path.read_text()) for path in epath.Path(folder).iterdir() if path.suffix == ".json"]
    return sorted(notes, key=lambda note: (note[0], note[1]))


class WriteShard(beam.DoFn):
    """ShardPlan -> writes its files, then a note of what it holds into written_folder (written_shard_name):
    [split, index, examples, serialized bytes, {file name: file bytes}]; yields that note too.

    The notes are files, not the job's output, so that the builder needs nothing back from the runner:
    on a runner that runs a shard twice, the second note replaces the first's identical one."""

    def __init__(self, seed: int, size: int, written_folder: str, progress_folder: str | None = None):
        self._seed, self._size = seed, size
        self._written_folder, self._progress_folder = written_folder, progress_folder

    def process(self, plan: ShardPlan):
        from etils import epath

        final = {name: os.path.join(plan.folder, plan.file_name(name)) for name in plan.file_formats}
        # Written beside its final name and moved there when complete: a killed run never leaves a half-written
        # shard under the real name, and a second run of the shard replaces the first's identical file.
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
                epath.Path(temporary[file_format]).replace(path)
                file_bytes[os.path.basename(path)] = epath.Path(path).stat().length
        finally:
            for writer in writers.values():
                with contextlib.suppress(Exception):  # already failing: the first error is the one to report
                    writer.close()
            for path in temporary.values():
                epath.Path(path).unlink(missing_ok=True)
        note = [plan.split, plan.index, plan.count, serialized_bytes, file_bytes]
        path = os.path.join(self._written_folder, written_shard_name(plan.split, plan.index))
        temporary_note = epath.Path(temporary_name(path))
        try:
            temporary_note.write_text(json.dumps(note))
            temporary_note.replace(path)
        finally:
            temporary_note.unlink(missing_ok=True)
        beam.metrics.Metrics.counter(contract.NAME, f"{plan.split}_examples").inc(plan.count)
        beam.metrics.Metrics.counter(contract.NAME, "shards_written").inc()
        yield note


class WriteShards(beam.PTransform):
    """Writes every shard of the planned splits, and a note of what each holds into written_folder, which must
    exist (see WriteShard; read them with read_written_shards)."""

    def __init__(self, splits: list[SplitPlan], seed: int, size: int, written_folder: str, progress_folder=None):
        super().__init__()
        self._splits = splits
        self._write = WriteShard(seed, size, written_folder, progress_folder)

    def expand(self, pbegin):
        return (
            pbegin
            # Create's own Reshuffle would only add a stage: the one below spreads the shards.
            | "ShardGroups" >> beam.Create(shard_groups(self._splits), reshuffle=False)
            | "Shards" >> beam.FlatMap(ShardGroup.shards)
            # Without a fusion break every shard would be written by the worker that expanded the groups.
            # (Dask has no such break and ignores it: there each group is a task of its own.)
            | "Distribute" >> beam.Reshuffle()
            | "WriteShard" >> beam.ParDo(self._write)
        )
