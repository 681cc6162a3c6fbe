"""tf.data input from the moving_line TFDS dataset, read the way another project would.

The dataset is opened from its folder (tfds.builder with data_dir, no builder code
needed). Training reads each example's `path` (100 bytes at S = 50, the pixel each frame
lights), from which the model computes the CNN-LSTM on the device (trainer.model.build_path_model):
inflating the stored 125 kB videos on the host is far slower than what one GPU trains on
(BENCHMARKS.md). Records stay serialized (about 500 bytes) through interleaving and the shuffle
buffer and are parsed a batch at a time, so memory does not grow with the dataset.
Evaluation of exported models reads the stored `video`, as any other project would.
"""

from __future__ import annotations

import json
import os
import shlex

import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline import contract
from pipeline.cli import UsageError
from trainer import config as config_lib

AUTOTUNE = tf.data.AUTOTUNE
# The functions handed to tf.data here are marked do_not_convert: they hold no Python control flow for
# autograph to convert, and its converted code would be left in temporary files by a process that is killed.
# Counter-based and the same on every platform: the input order depends on the seed alone.
RANDOM_ALGORITHM = "philox"
# TFRecordDataset's own default read buffer, the most a segment's takes; the least; how much more than a segment's
# estimated bytes (records differ in size).
READ_BUFFER_BYTES = 256 * 1024
MIN_READ_BUFFER_BYTES = 4 * 1024
BUFFER_MARGIN = 1.1


def load_builder(data_dir: str, size: int):
    """The moving_line/size_<size> builder found in data_dir; a UsageError saying how to make it otherwise.

    A damaged build (metadata missing or unreadable, a shard missing) raises contract.DamagedDatasetError
    (one line, exit code 1) before TFDS reads anything. Shards cut short or corrupt inside are found
    when read (trainer.corrupt_data names them; skip_corrupt_records reads what is left).
    """
    name = contract.full_name(size)
    folder = contract.dataset_folder(data_dir, size)
    if tf.io.gfile.exists(folder):
        info = contract.check_complete(folder, check_sizes=False)
        if info.get("fileFormat", "tfrecord") != "tfrecord":
            raise UsageError(
                f"{folder} holds no TFRecord files (only {info['fileFormat']}), which tf.data reads; `tfds "
                "convert_format` cannot make them (TFDS reads ArrayRecord only as a data source, not with tf.data): "
                f"delete {shlex.quote(folder)} and build it again with both formats: "
                f"`{regenerate_command(data_dir, size, folder, info)}`"
            )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.DatasetNotFoundError, FileNotFoundError, ValueError):
        builder = None
    if builder is None or not tf.io.gfile.exists(f"{builder.data_dir}/dataset_info.json"):
        raise UsageError(
            f"no {name} dataset in --data_dir {data_dir}; make it with "
            f"`python -m pipeline.generate --data_dir {data_dir} --size {size}` or give the data_dir that holds it"
        )
    stored_size = builder.info.features["video"].shape[1]
    if stored_size != size:
        raise UsageError(f"{builder.data_dir} holds size {stored_size} videos, but the config says size {size}")
    # What the files hold (features.json), whatever builder code this process may have imported.
    if "path" not in tfds.builder_from_directory(builder.data_dir).info.features:
        raise UsageError(
            f"{builder.data_dir} was made by an older version ({builder.info.version}) without the path feature "
            f"the trainer reads; make the current version with `python -m pipeline.generate --data_dir {data_dir} "
            f"--size {size}`"
        )
    return builder


def regenerate_command(data_dir: str, size: int, folder: str, info: dict) -> str:
    """The pipeline.generate command that builds again what folder holds (same counts and seed), as TFRecord
    and ArrayRecord."""
    counts = {split["name"]: sum(int(length) for length in split.get("shardLengths", [])) for split in info["splits"]}
    try:
        with tf.io.gfile.GFile(os.path.join(folder, contract.METADATA_FILE)) as file:
            seed = json.loads(file.read()).get("seed")
    except (tf.errors.OpError, ValueError):
        seed = None
    flags = [f"--num_{split} {counts[split]}" for split in contract.SPLITS if split in counts]
    flags += [f"--seed {seed}"] if seed is not None else []
    return (
        f"python -m pipeline.generate --data_dir {shlex.quote(data_dir)} --size {size} {' '.join(flags)} "
        "--file_format tfrecord,array_record"
    )


def check_data_seed(builder, data_seed: int):
    """A UsageError when the dataset was generated with another seed than the config's data_seed."""
    stored = builder.info.metadata.get("seed") if builder.info.metadata else None
    if stored is not None and int(stored) != data_seed:
        raise UsageError(
            f"{builder.data_dir} was generated with seed {stored}, but the config says data_seed {data_seed}; "
            f"set data_seed to {stored}, or generate the data with --seed {data_seed} into another --data_dir"
        )


def decode_video(encoded: tf.Tensor, video_feature) -> tf.Tensor:
    """One stored video (zlib-compressed bytes) -> uint8 [T, S, S, 1], with the dataset's own decoder."""
    return video_feature.decode_example(encoded)


def to_model_inputs(example: dict, video_feature) -> tuple[tf.Tensor, tf.Tensor]:
    """A stored example {video: bytes, label: int64} -> (uint8 video, float32 label) for model.fit."""
    return decode_video(example["video"], video_feature), tf.cast(example["label"], tf.float32)


def read_options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # No auto-sharding by file: a single-worker mirror splits each global batch across replicas.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def read_records(
    builder, split: str, *, shuffle_files: bool, seed: int, cycle_length: int, deterministic: bool, skip_corrupt=False
):
    """The split's examples with the video still compressed (SkipDecoding), shards read interleaved.

    skip_corrupt drops unreadable records (TensorFlow then skips the rest of that shard) instead of failing;
    trainer.corrupt_data counts them.
    """
    read_config = tfds.ReadConfig(
        # TFDS's check that every record was read fails again on each retry: ignore_errors would never end.
        assert_cardinality=not skip_corrupt,
        interleave_cycle_length=cycle_length,
        shuffle_seed=seed,
        # Caching would hold the whole split in memory; the stream must not grow with the dataset.
        try_autocache=False,
        # The dataset is written in order (disable_shuffling); training reads it out of order on purpose.
        enable_ordering_guard=False,
        options=read_options(deterministic),
    )
    records = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_files,
        decoders={"video": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    return records.ignore_errors() if skip_corrupt else records


def training_dataset(
    builder,
    config: dict,
    *,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
    start_step: int = 0,
    input_context=None,
    log=None,
) -> tf.data.Dataset:
    """The run's training batches from start_step on: (path, label) batches of the per-replica size, endless.

    The order is defined over `input_streams` canonical streams, whatever the topology: each pass over the
    training split lists the shard files in an order drawn from (seed, epoch, pass) and cuts the records so
    listed into input_streams ranges of (almost) equal length; stream k reads range k and shuffles it within
    windows (shuffle_buffer / input_streams records), seeded by (seed, epoch, pass, k). The global batch of
    step s is batch_size / input_streams records from every stream, so it is a function of (seed, s) alone.
    Epoch e starts every stream at pass 0 of (seed, e); a run resumed at step s starts the streams of epoch
    s // steps_per_epoch and skips the batches already taken (at most one epoch is read again).

    input_context (tf.distribute) makes it one input pipeline's share: the pipelines (workers) divide the
    streams into equal blocks, each reads its own block (its share of the bytes), and its batches, split over
    its replicas, hold exactly the records of its streams in the global batch. steps_per_epoch defaults to one
    pass over the split; epochs to no end.
    """
    info = builder.info.splits["train"]
    streams, batch_size = config["input_streams"], config["batch_size"]
    config_lib.check_input_streams(streams, batch_size)
    steps_per_epoch = steps_per_epoch or max(1, info.num_examples // batch_size)
    epochs = epochs or 2**62
    pipelines, pipeline_id, replicas = pipeline_of(input_context)
    config_lib.check_input_pipelines(streams, pipelines, "input pipelines")
    per_replica = batch_size // replicas
    # Each pipeline feeds its local replicas one batch each per step.
    batches_per_step = replicas // pipelines
    own = stream_block(streams, pipelines, pipeline_id)
    if log and pipelines > 1:
        log(
            f"input pipeline {pipeline_id} of {pipelines} reads input streams {own.start}-{own.stop - 1} of "
            f"{streams} ({1 / pipelines:.0%} of the training split each pass)"
        )
    read = StreamReader(info, config, builder.data_dir)

    def epoch_batches(epoch):
        records = read.step_records(epoch, own, batch_size // streams, steps_per_epoch)
        return records.rebatch(per_replica, drop_remainder=True).take(steps_per_epoch * batches_per_step)

    batches = from_step(epoch_batches, start_step, steps_per_epoch, epochs, batches_per_step)
    batches = parse_paths(batches, builder, per_replica, config["deterministic"])
    return endless(batches.with_options(read_options(config["deterministic"])))


def from_step(epoch_elements, start_step: int, steps_per_epoch: int, epochs: int, per_step: int) -> tf.data.Dataset:
    """Epoch after epoch of epoch_elements(epoch) (per_step elements a step), from start_step on: the stream of
    start_step's epoch, started again, without the elements of the steps already taken."""
    first_epoch, steps_done = divmod(start_step, steps_per_epoch)
    skip = tf.constant(steps_done * per_step, tf.int64)

    @tf.autograph.experimental.do_not_convert
    def epoch_from_its_position(epoch):
        return epoch_elements(epoch).skip(tf.where(epoch == first_epoch, skip, tf.constant(0, tf.int64)))

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_from_its_position)


def pipeline_of(input_context) -> tuple[int, int, int]:
    """(input pipelines, this pipeline's id, replicas in all) of an InputContext, or of one device."""
    if input_context is None:
        return 1, 0, 1
    return input_context.num_input_pipelines, input_context.input_pipeline_id, input_context.num_replicas_in_sync


def stream_block(streams: int, pipelines: int, pipeline_id: int) -> range:
    """The input streams pipeline_id reads: the pipeline_id-th of `pipelines` equal, consecutive blocks."""
    share = streams // pipelines
    return range(pipeline_id * share, (pipeline_id + 1) * share)


def is_local(data_dir: str) -> bool:
    return "://" not in os.fspath(data_dir)


class StreamReader:
    """The training split's canonical input streams (see training_dataset): stream k of a pass is the k-th of
    input_streams ranges of the records, the shard files listed in the pass's order."""

    def __init__(self, info, config: dict, data_dir: str):
        self.paths = tf.constant([os.fspath(path) for path in info.filepaths])
        self.lengths = tf.constant(info.shard_lengths, tf.int64)
        self.num_shards, self.examples = info.num_shards, info.num_examples
        self.streams, self.seed = config["input_streams"], config["seed"]
        self.window = max(1, config["shuffle_buffer"] // self.streams)
        self.cycle_length, self.deterministic = config["interleave_cycle_length"], config["deterministic"]
        self.segments = SegmentReader(info, data_dir, config.get("skip_corrupt_records", False))

    def step_records(self, epoch, stream_ids, per_stream: int, steps: int) -> tf.data.Dataset:
        """The records of these streams (int64 ids) in an epoch of `steps` steps, per_stream from each stream in
        turn, step after step: as batches of per_stream records (rebatch them to any size), which cost a
        fraction of handing the records one by one between the streams."""
        stream_ids = tf.constant(list(stream_ids), tf.int64) if isinstance(stream_ids, range | list) else stream_ids
        # Passes enough for the epoch's share of every stream (each holds at least examples // streams a pass).
        passes = -(-steps * per_stream // max(1, self.examples // self.streams))

        @tf.autograph.experimental.do_not_convert
        def epoch_of_stream(stream):
            records = self.stream(epoch, stream, passes)
            if self.segments.skip_corrupt:
                # A stream may lose records to a damaged shard, all of them even: the others fill its place (the
                # epoch then holds fewer steps, the next epoch's follow).
                return records.batch(per_stream)
            # No more than the epoch takes: reading ahead would fill the next pass's first window.
            return records.take(steps * per_stream).batch(per_stream)

        return tf.data.Dataset.from_tensor_slices(stream_ids).interleave(
            epoch_of_stream,
            cycle_length=tf.size(stream_ids, out_type=tf.int64),
            num_parallel_calls=AUTOTUNE,
            deterministic=self.deterministic,
        )

    def stream(self, epoch, stream, passes: int) -> tf.data.Dataset:
        """Stream `stream` of an epoch: its range of pass 0, of pass 1, ... of pass passes - 1."""
        return tf.data.Dataset.range(passes).flat_map(
            tf.autograph.experimental.do_not_convert(lambda number: self.stream_pass(epoch, number, stream))
        )

    def stream_pass(self, epoch, number, stream) -> tf.data.Dataset:
        """The stream's range of records in pass `number` of an epoch, shuffled within windows."""
        pass_seed = fold_in(epoch_seed(self.seed, epoch), number)
        order = tf.random.experimental.stateless_shuffle(tf.range(self.num_shards), seed=pass_seed,
                                                         alg=RANDOM_ALGORITHM)  # fmt: skip
        lengths = tf.gather(self.lengths, order)
        starts = tf.cumsum(lengths, exclusive=True)
        # The stream's range in the pass's listing, then the part of it each shard file holds.
        low = stream * self.examples // self.streams
        high = (stream + 1) * self.examples // self.streams
        first = tf.clip_by_value(low - starts, 0, lengths)
        last = tf.clip_by_value(high - starts, 0, lengths)
        segments = tf.data.Dataset.from_tensor_slices((tf.gather(self.paths, order), first, last - first))
        segments = segments.filter(lambda path, skip, take: take > 0)
        records = segments.interleave(
            tf.autograph.experimental.do_not_convert(self.segments.read),
            # One thread: the streams are read in parallel, and handing records between threads here costs more
            # than reading them (python -m bench input).
            cycle_length=self.cycle_length,
        )
        return window_shuffle(records, self.window, fold_in(pass_seed, stream))


class SegmentReader:
    """Reads a segment of a shard file (records skip .. skip + take) with no more bytes than it needs.

    TFRecordDataset skips a record by reading its header and seeking past its data, but a read buffer fills
    with all the data it seeks past: a segment that starts inside a local file is read unbuffered (skipping
    costs about 13 bytes a record). On object stores the buffer stays (a request per record header would cost
    more than the bytes). The buffer holds no more than the segment's estimated bytes, so a segment that ends
    inside a file does not read far past its end.
    """

    def __init__(self, info, data_dir: str, skip_corrupt: bool):
        self.local, self.skip_corrupt = is_local(data_dir), skip_corrupt
        # Bytes a record takes in a file: the example, and TFRecord's 16 bytes of length and checksums.
        self.record_bytes = info.num_bytes / info.num_examples + 16 if info.num_bytes and info.num_examples else None

    def read(self, path, skip, take) -> tf.data.Dataset:
        """The records; an error if the file holds fewer (a shard cut short)."""
        buffer_size = tf.constant(READ_BUFFER_BYTES, tf.int64)
        if self.record_bytes:
            estimate = tf.cast(tf.cast(take, tf.float64) * self.record_bytes * BUFFER_MARGIN, tf.int64)
            buffer_size = tf.clip_by_value(estimate, MIN_READ_BUFFER_BYTES, READ_BUFFER_BYTES)
        if self.local:
            buffer_size = tf.where(skip > 0, tf.constant(0, tf.int64), buffer_size)
        records = tf.data.TFRecordDataset(path, buffer_size=buffer_size).skip(skip).take(take)
        if self.skip_corrupt:
            return records.ignore_errors()
        return records.apply(tf.data.experimental.assert_cardinality(take))


def epoch_seed(seed: int, epoch) -> tf.Tensor:
    """The seed of an epoch's order, [2] int64: a pure function of (seed, epoch)."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])


def fold_in(seed: tf.Tensor, number) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(number, tf.int64), alg=RANDOM_ALGORITHM)


def window_shuffle(records: tf.data.Dataset, window: int, seed: tf.Tensor) -> tf.data.Dataset:
    """Records shuffled within consecutive windows of `window`, each by a permutation drawn from (seed, window's
    number): each record moves within its window, about as far as a shuffle buffer of that size moves it, and
    the order is a pure function of the seed (tf.data's shuffle draws each epoch's seed from a generator that
    only replaying every earlier epoch reproduces)."""

    @tf.autograph.experimental.do_not_convert
    def permute(number, window_records):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(window_records, out_type=tf.int64)[0]), seed=fold_in(seed, number), alg=RANDOM_ALGORITHM
        )
        return tf.data.Dataset.from_tensor_slices(tf.gather(window_records, order))

    return records.batch(window).enumerate().flat_map(permute)


def endless(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Repeated and stated endless: tf.distribute then fetches a batch without asking the other workers
    whether theirs still have one (a collective on every batch, and one that hangs when a worker's read fails)."""
    return dataset.repeat().apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


def validation_dataset(builder, config: dict, steps: int, input_context=None) -> tf.data.Dataset:
    """The first steps x batch_size records of the validation split in their stored order, the same every epoch:
    (path, label) batches of the per-replica size, endless. input_context makes it one input pipeline's share
    (an equal, consecutive part), so the records validated are the same on any topology."""
    info = builder.info.splits["validation"]
    pipelines, pipeline_id, replicas = pipeline_of(input_context)
    per_replica = config["batch_size"] // replicas
    share = steps * config["batch_size"] // pipelines
    reader = SegmentReader(info, builder.data_dir, config.get("skip_corrupt_records", False))
    records = read_range(info, pipeline_id * share, (pipeline_id + 1) * share, reader)
    batches = batch_and_parse_paths(records, builder, per_replica, True, drop_remainder=True)
    return endless(batches.take(steps * replicas // pipelines))


def read_range(info, low: int, high: int, reader: SegmentReader) -> tf.data.Dataset:
    """Records low .. high of a split in its stored order (shard after shard)."""
    segments, start = [], 0
    for path, length in zip(info.filepaths, info.shard_lengths, strict=True):
        first, last = max(low, start), min(high, start + length)
        if first < last:
            segments.append((os.fspath(path), first - start, last - first))
        start += length
    paths, skips, takes = zip(*segments, strict=True) if segments else ((), (), ())
    listed = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(skips, tf.int64), tf.constant(takes, tf.int64))
    )
    return listed.flat_map(tf.autograph.experimental.do_not_convert(reader.read))


def interleave_shards(files: tf.data.Dataset, cycle_length: int, deterministic: bool, skip_corrupt: bool):
    """The records of (path, record count) shard files, read interleaved; each shard's count is checked
    (TFDS's own check: a shard cut at a record boundary is an error) unless skip_corrupt drops bad records."""

    @tf.autograph.experimental.do_not_convert
    def shard_records(path, length):
        records = tf.data.TFRecordDataset(path)
        return records if skip_corrupt else records.apply(tf.data.experimental.assert_cardinality(length))

    parallel = {"num_parallel_calls": AUTOTUNE, "deterministic": deterministic} if cycle_length > 1 else {}
    records = files.interleave(shard_records, cycle_length=cycle_length, **parallel)
    return records.ignore_errors() if skip_corrupt else records


def read_serialized(
    builder, split: str, *, shuffle_files: bool, seed, cycle_length: int, deterministic: bool, skip_corrupt=False
) -> tf.data.Dataset:
    """The split's records, still serialized, from the shard files that the dataset's metadata lists.

    Read without TFDS's per-example decoding: a batch of records is parsed at once (tf.io.parse_example),
    which costs a fraction of parsing them one by one.
    """
    info = builder.info.splits[split]
    files = shard_files(info)
    if shuffle_files:
        files = files.shuffle(len(info.shard_lengths), seed=seed)
    records = interleave_shards(files, cycle_length, deterministic, skip_corrupt)
    return records.with_options(read_options(deterministic))


def shard_files(info) -> tf.data.Dataset:
    """(path, record count) of each shard file of a split, in order."""
    return tf.data.Dataset.from_tensor_slices(
        ([os.fspath(path) for path in info.filepaths], tf.constant(info.shard_lengths, tf.int64))
    )


def parse_batch(serialized, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of serialized records -> (path uint8 [batch, S, 2], label float32 [batch])."""
    examples = tf.io.parse_example(serialized, PATH_FEATURES)
    path = tf.reshape(tf.io.decode_raw(examples["path"], tf.uint8), [-1, size, 2])
    return path, tf.cast(examples["label"], tf.float32)


PATH_FEATURES = {"path": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


def parse_paths(batches, builder, batch_size: int, deterministic: bool) -> tf.data.Dataset:
    """Batches of serialized records -> (path uint8 [batch, S, 2], label float32 [batch]), prefetched."""
    size = builder.info.features["video"].shape[1]

    @tf.autograph.experimental.do_not_convert
    def parse(serialized):
        path, label = parse_batch(serialized, size)
        return tf.ensure_shape(path, [serialized.shape[0], size, 2]), label  # keeps a static batch size static

    # Under a tf.distribute strategy the distributed iterator prefetches each replica's batches onto its
    # device; this prefetch keeps the host side busy.
    return batches.map(parse, num_parallel_calls=AUTOTUNE, deterministic=deterministic).prefetch(AUTOTUNE)


def batch_and_parse_paths(records, builder, batch_size: int, deterministic: bool, drop_remainder: bool):
    return parse_paths(records.batch(batch_size, drop_remainder=drop_remainder), builder, batch_size, deterministic)


def evaluation_dataset(
    builder, split: str, config: dict, full_batches_only: bool = False, paths: bool = False
) -> tf.data.Dataset:
    """One pass over a split in its stored order: (video, label) batches, the last one possibly short.

    full_batches_only drops that short batch. paths gives (path, label) batches instead, for the training model.
    """
    batch_size = config["batch_size"]
    read = {
        "shuffle_files": False,
        "seed": config["seed"],
        "cycle_length": 1,  # shard after shard: the stored order
        "deterministic": True,
        "skip_corrupt": config.get("skip_corrupt_records", False),
    }
    if paths:
        records = read_serialized(builder, split, **read)
        return batch_and_parse_paths(records, builder, batch_size, True, drop_remainder=full_batches_only)
    records = read_records(builder, split, **read)
    return batch_and_decode(records, builder, batch_size, True, drop_remainder=full_batches_only)


def batch_and_decode(records, builder, batch_size: int, deterministic: bool, drop_remainder: bool):
    video_feature = builder.info.features["video"]
    examples = records.map(
        tf.autograph.experimental.do_not_convert(lambda example: to_model_inputs(example, video_feature)),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    # Under a tf.distribute strategy model.fit splits each global batch across the replicas and its
    # distributed iterator prefetches the pieces onto their devices; this prefetch keeps the host side busy.
    return examples.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def data_service_dataset(
    builder,
    config: dict,
    address: str,
    job_name: str,
    *,
    steps_per_epoch: int,
    epochs: int,
    start_step: int = 0,
    service_workers: int = 1,
    input_context=None,
) -> tf.data.Dataset:
    """Endless (path, label) batches of the per-replica size, made by the tf.data service at address.

    With `deterministic: true` they are the batches training_dataset makes: the same global batch at every step
    as on any topology, and a resumed run goes on exactly (job_name must be new for each start). The service's
    workers are a fixed list of `service_workers` (trainer.data_service dispatcher --workers), all up: each
    reads a whole number of the run's input streams (static sharding, ShardingPolicy.HINT) and makes its piece
    of every step for each trainer (coordinated reads give trainer i the i-th); each trainer puts its pieces of
    a step back together (in_step_order). With `deterministic: false` every service worker shuffles the whole
    split in its own random order and batches go to the trainers as they come: not reproducible with the seed.
    """
    pipelines, pipeline_id, replicas = pipeline_of(input_context)
    per_replica = config["batch_size"] // replicas
    size = builder.info.features["video"].shape[1]
    service = tf.data.experimental.service
    if not config["deterministic"]:
        records = read_serialized(builder, "train", shuffle_files=True, seed=None,
                                  cycle_length=config["interleave_cycle_length"], deterministic=False,
                                  skip_corrupt=config.get("skip_corrupt_records", False))  # fmt: skip
        batches = batch_and_parse_paths(records.repeat().shuffle(config["shuffle_buffer"]), builder, per_replica,
                                        False, drop_remainder=True)  # fmt: skip
        distribute = service.distribute(processing_mode=service.ShardingPolicy.OFF, service=address, job_name=job_name)
        return endless(batches.apply(distribute).prefetch(AUTOTUNE))
    # Endless on the workers too: the trainer's prefetch asks past the run's last step, and coordinated reads fail
    # on a worker whose stream ends.
    pieces = service_pieces(builder, config, steps_per_epoch, 2**62, start_step, consumers=pipelines)
    # One trainer takes every piece as it comes; several take turns (coordinated reads).
    turns = {"consumer_index": pipeline_id, "num_consumers": pipelines} if pipelines > 1 else {}
    pieces = pieces.apply(
        service.distribute(processing_mode=service.ShardingPolicy.HINT, service=address, job_name=job_name, **turns)
    )
    steps = in_step_order(pieces, service_workers, start_step)
    local_replicas = replicas // pipelines

    @tf.autograph.experimental.do_not_convert
    def per_replica_batches(path, label):
        return tf.data.Dataset.from_tensor_slices(
            (tf.reshape(path, [local_replicas, per_replica, size, 2]), tf.reshape(label, [local_replicas, per_replica]))
        )

    return endless(steps.flat_map(per_replica_batches).prefetch(AUTOTUNE))


def service_workers(address: str, job_name: str) -> tuple[int, int]:
    """(workers the dispatcher's fixed list names, how many of them are up) of the tf.data service at address:
    each worker up answers with its index and the list's length (the shard hint of static sharding). Blocks
    until at least one is up; a NotFoundError when the dispatcher has no fixed list (job_name: a new one)."""
    hint = tf.data.experimental.SHARD_HINT
    probe = tf.data.Dataset.range(2**62).shard(hint, hint).take(2).batch(2)
    service = tf.data.experimental.service
    probe = probe.apply(service.distribute(processing_mode=service.ShardingPolicy.HINT, service=address,
                                           job_name=job_name))  # fmt: skip
    answers = [(int(first), int(second)) for first, second in probe.as_numpy_iterator()]
    return answers[0][1] - answers[0][0], len(answers)


# The start of the errors a service worker's pieces fail with; the trainer shows them in one line.
SERVICE_TOPOLOGY_ERROR = "the tf.data service's workers cannot share the input streams"
SERVICE_STEP_ERROR = "out of step: tf.data service worker"
# How many steps one service worker may run ahead of another before the trainer stops saying so (a worker that
# stopped sending would otherwise stall the run while the others' pieces pile up).
MAX_SERVICE_LAG = 1024


def service_pieces(builder, config: dict, steps_per_epoch: int, epochs: int, start_step: int, consumers: int):
    """What each tf.data service worker makes (static sharding): for every step from start_step on, its piece of
    the global batch for each of `consumers` trainers in turn, as (step, worker, places in the global batch, path,
    label).

    The shard hint hands service worker w of W the input streams w, w + W, ...; W must divide input_streams and
    each worker's records of a step must split evenly over the consumers, else the worker fails with
    SERVICE_TOPOLOGY_ERROR (the trainer stops in one line).
    """
    streams, per_stream = config["input_streams"], config["batch_size"] // config["input_streams"]
    size = builder.info.features["video"].shape[1]
    read = StreamReader(builder.info.splits["train"], config, builder.data_dir)
    hint = tf.data.experimental.SHARD_HINT
    # This worker's stream ids, as one (possibly empty) vector.
    own = tf.data.Dataset.range(streams).shard(hint, hint).batch(streams)
    own = own.concatenate(tf.data.Dataset.from_tensors(tf.zeros([0], tf.int64))).take(1)
    fitting = [number for number in config_lib.divisors(streams) if config["batch_size"] // number % consumers == 0]
    message = (
        f"{SERVICE_TOPOLOGY_ERROR}: each service worker reads a whole number of the run's {streams} input streams "
        f"and splits its records of a step evenly over the {consumers} trainer(s); run "
        f"{config_lib.spoken_list(fitting)} service workers (the dispatcher's --workers)"
    )

    @tf.autograph.experimental.do_not_convert
    def worker_pieces(own):
        count = tf.size(own, out_type=tf.int64)
        workers = streams // tf.maximum(count, 1)
        evenly = tf.logical_and(count > 0, tf.equal(count * workers, streams))
        # Strided ids (w, w + W, ...) with W = streams / count: every worker has as many streams.
        strided = tf.reduce_all(tf.equal(own, own[:1] + tf.range(count) * workers))
        split = tf.equal((count * per_stream) % consumers, 0)
        fits = tf.reduce_all(tf.stack([evenly, strided, split]))
        with tf.control_dependencies([tf.debugging.Assert(fits, [message])]):
            piece = tf.identity(count * per_stream // consumers)

        def epoch_pieces(epoch):
            records = read.step_records(epoch, own, per_stream, steps_per_epoch)
            return records.rebatch(piece, drop_remainder=True).take(steps_per_epoch * consumers)

        pieces = from_step(epoch_pieces, start_step, steps_per_epoch, epochs, consumers)

        def tagged(index, serialized):
            # Where each record stands in the global batch (stream by stream, as one input pipeline has them),
            # so that a trainer can put its records in that order.
            record = index % consumers * piece + tf.range(piece)
            stream = own[0] + record // per_stream * workers
            places = stream * per_stream + record % per_stream
            return index // consumers, own[0], places, *parse_batch(serialized, size)

        return pieces.enumerate(start_step * consumers).map(tagged)

    return own.flat_map(worker_pieces)


def in_step_order(pieces: tf.data.Dataset, workers: int, start_step: int) -> tf.data.Dataset:
    """Each step's pieces, one from each of the service's `workers`, put together: (path, label) of the trainer's
    share of the step, its records in the order of their places in the global batch (one trainer: the very
    batch one input pipeline makes).

    Each worker's pieces come in order, but the workers' pieces come interleaved as they are ready (a worker
    not ready skips its turn), so a step is put together once the last of its pieces has come; steps then come
    in order. A worker's piece of another step than its next (a worker that restarted starts again from its
    first step), or a worker more than MAX_SERVICE_LAG steps behind the others, fails with SERVICE_STEP_ERROR.
    """
    initial = tf.fill([workers], tf.constant(start_step, tf.int64))

    @tf.autograph.experimental.do_not_convert
    def check(due, piece):
        step, worker, places, path, label = piece
        restarted = tf.strings.format(
            SERVICE_STEP_ERROR + " {} sent a piece of step {} where step {} was due: it restarted mid-run (a worker "
            "starts again from the run's first step)",
            (worker, step, due[worker]),
        )
        behind = tf.strings.format(
            SERVICE_STEP_ERROR + " {} is at step {}, {} steps behind the others: it stopped sending",
            (tf.argmin(due), tf.reduce_min(due), tf.reduce_max(due) - tf.reduce_min(due)),
        )
        checks = [
            tf.debugging.Assert(tf.equal(step, due[worker]), [restarted]),
            tf.debugging.Assert(tf.reduce_max(due) - tf.reduce_min(due) <= MAX_SERVICE_LAG, [behind]),
        ]
        with tf.control_dependencies(checks):
            due = tf.tensor_scatter_nd_add(due, [[worker]], [1])
        return due, piece

    def one_step(step, pieces):
        return pieces.batch(workers)

    @tf.autograph.experimental.do_not_convert
    def in_order(step, worker, places, path, label):
        places, label = tf.reshape(places, [-1]), tf.reshape(label, [-1])
        path = tf.reshape(path, [-1, *path.shape[2:]])
        order = tf.argsort(places)
        return tf.gather(path, order), tf.gather(label, order)

    steps = pieces.scan(initial, check).group_by_window(
        key_func=lambda step, *rest: step, reduce_func=one_step, window_size=workers
    )
    return steps.map(in_order)


def split_size(builder, split: str) -> int:
    if split not in builder.info.splits:
        raise UsageError(
            f"{builder.data_dir} has no {split} split (it has {', '.join(builder.info.splits)}); "
            "regenerate it with pipeline.generate"
        )
    return builder.info.splits[split].num_examples


def describe_dataset(builder) -> dict:
    """What a run trains on, as its checkpoints record it: a resume against another dataset is refused."""
    metadata = builder.info.metadata or {}
    return {
        "name": builder.info.name,
        "config": builder.builder_config.name if builder.builder_config else None,
        "version": str(builder.info.version),
        "splits": {name: split.num_examples for name, split in sorted(builder.info.splits.items())},
        "seed": int(metadata["seed"]) if metadata.get("seed") is not None else None,
        "file_format": builder.info.file_format.value if builder.info.file_format else "tfrecord",
    }


def dataset_differences(old: dict, new: dict) -> list[str]:
    """'what: old -> new' for each part of two describe_dataset records that differs."""
    changed = [
        f"{key.replace('_', ' ')} {old.get(key)} -> {new.get(key)}"
        for key in ("name", "config", "version", "seed", "file_format")
        if old.get(key) != new.get(key)
    ]
    old_splits, new_splits = old.get("splits", {}), new.get("splits", {})
    for split in sorted(set(old_splits) | set(new_splits)):
        if old_splits.get(split) != new_splits.get(split):
            count = [
                f"{value:,}" if isinstance(value, int) else "none"
                for value in (old_splits.get(split), new_splits.get(split))
            ]
            changed.append(f"{split} examples {count[0]} -> {count[1]}")
    return changed
