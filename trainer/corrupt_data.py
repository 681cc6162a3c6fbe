"""Corrupt or truncated shards: named in a one-line error, or skipped and counted when the user asks.

TensorFlow reports a damaged TFRecord as "truncated record at 12261" or "corrupted record at
12273", without the file; TFDS reports a shard cut at a record boundary as a dataset holding
fewer elements than expected. Either way the user needs the file and what to do, so on such an
error the split's shards are read once more, record by record, to find the damaged ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re

import tensorflow as tf

from pipeline import cli

# What TensorFlow raises for a damaged shard: DataLoss (bad length or checksum, cut mid-record),
# FailedPrecondition (TFDS's count check: cut at a record boundary), NotFound (a shard deleted).
READ_ERRORS = (tf.errors.DataLossError, tf.errors.FailedPreconditionError, tf.errors.NotFoundError)


@dataclasses.dataclass(frozen=True)
class DamagedShard:
    path: str
    expected: int  # records the dataset's metadata says the shard holds
    readable: int  # records read before the first error (TensorFlow drops the rest of the shard)
    problem: str

    def describe(self) -> str:
        return f"{self.path} ({self.problem}; {self.readable} of {self.expected} records readable)"


def scan_split(builder, split: str) -> list[DamagedShard]:
    """The shards of a split that cannot be read in full, found by reading every record once."""
    info = builder.info.splits[split]
    damaged = []
    for path, expected in zip(info.filepaths, info.shard_lengths, strict=True):
        path = os.fspath(path)
        if not tf.io.gfile.exists(path):
            damaged.append(DamagedShard(path, expected, 0, "file missing"))
            continue
        records = tf.data.TFRecordDataset(path)
        # In the graph, so that counting a big shard does not loop in Python.
        readable = int(records.ignore_errors().reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
        problem = first_error(records.skip(readable))
        if problem is None and readable != expected:
            problem = "fewer records than the dataset's metadata says" if readable < expected else "extra records"
        if problem is not None:
            damaged.append(DamagedShard(path, expected, readable, problem))
    return damaged


def first_error(records: tf.data.Dataset) -> str | None:
    """TensorFlow's message for the first record that cannot be read ("corrupted record at 12273"), if any."""
    try:
        for _ in records.take(1):
            pass
    except tf.errors.OpError as error:
        found = re.search(r"(truncated|corrupted) record at \d+", error.message)
        return found.group(0) if found else type(error).__name__
    return None


class PeerReadError(Exception):
    """Another worker could not read its share of the data (every worker stops at the same step)."""


@contextlib.contextmanager
def named_in_errors(builder, splits, skip_hint: str):
    """Turns a read error from damaged shards of these splits (here or on another worker) into a one-line
    FaultError (exit code 1) naming the files."""
    try:
        yield
    except (*READ_ERRORS, PeerReadError) as error:
        damaged = [shard for split in splits for shard in scan_split(builder, split)]
        if not damaged and isinstance(error, PeerReadError):
            raise cli.FaultError(
                "another worker could not read its data; its log says what it could not read"
            ) from None
        if not damaged:
            raise  # not a damaged shard: TensorFlow's own error is the best description
        raise cli.FaultError(
            f"corrupt data in {'; '.join(shard.describe() for shard in damaged)}: regenerate the dataset "
            f"(delete {builder.data_dir} and run pipeline.generate again) or skip the bad records with {skip_hint}"
        ) from error


@contextlib.contextmanager
def reading(prog: str, builder, splits, skip: bool, skip_hint: str):
    """All a run does about damaged shards of the splits it reads, in one place: with skip (skip_corrupt_records)
    it logs first how many records each split loses; then a read error inside is named in one line
    (named_in_errors). Enter it after the strategy: scanning the shards runs TensorFlow."""
    if skip:
        for split in splits:
            log_skipped(prog, builder, split)
    with named_in_errors(builder, splits, skip_hint):
        yield


def log_skipped(prog: str, builder, split: str, read: int | None = None) -> int:
    """Logs how many records of a split are skipped as unreadable (read: records a full pass got, if known)."""
    expected = builder.info.splits[split].num_examples
    damaged = scan_split(builder, split)
    skipped = expected - read if read is not None else sum(shard.expected - shard.readable for shard in damaged)
    if skipped:
        files = "; ".join(shard.describe() for shard in damaged) or "no damaged shard found"
        cli.log(prog, f"skip_corrupt_records: skipped {skipped:,} of {expected:,} {split} records ({files})")
    if expected - skipped < 1:
        raise cli.FaultError(f"no readable {split} records in {builder.data_dir}; regenerate the dataset")
    return skipped
