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

import functools
import json
import os
import shlex

import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline import contract
from pipeline.cli import UsageError

AUTOTUNE = tf.data.AUTOTUNE
# The functions handed to tf.data here are marked do_not_convert: they hold no Python control flow for
# autograph to convert, and its converted code would be left in temporary files by a process that is killed.
# Counter-based and the same on every platform: the input order depends on the seed alone.
RANDOM_ALGORITHM = "philox"


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
    """The run's training batches from start_step on: (path, label) batches, endless.

    Epoch e reads the training split in an order that is a pure function of (seed, e) when
    config["deterministic"] is true: the shard files shuffled, read interleaved and shuffled in a
    bounded buffer, both seeded by (seed, e), pass after pass until the epoch's steps are taken. A run
    resumed at step s starts the stream of epoch s // steps_per_epoch and skips the batches already
    taken: it reads at most one epoch again, never the run from its start, and sees exactly the
    batches an uninterrupted run sees. The model renders each path into its video
    (trainer.model.RenderVideo) on the training device.

    input_context (tf.distribute) makes it this input pipeline's share in batches of the per-replica
    size: its own shard files when the split has at least one per pipeline, else every k-th record.
    steps_per_epoch defaults to one pass over the split; epochs to no end.
    """
    info = builder.info.splits["train"]
    steps_per_epoch = steps_per_epoch or max(1, info.num_examples // config["batch_size"])
    epochs = epochs or 2**62
    pipelines, pipeline_id = (
        (1, 0) if input_context is None else (input_context.num_input_pipelines, input_context.input_pipeline_id)
    )
    batch_size = (
        config["batch_size"]
        if input_context is None
        else input_context.get_per_replica_batch_size(config["batch_size"])
    )
    # Under a strategy each pipeline feeds its local replicas one batch each per step.
    batches_per_step = 1 if input_context is None else input_context.num_replicas_in_sync // pipelines
    own_files = reads_own_files(info.num_shards, input_context)
    if log and pipelines > 1:
        share = (
            f"its own shard files, one in {pipelines} of the {info.num_shards} of each pass"
            if own_files
            else f"one record in {pipelines} of the {info.num_shards} shard file(s) (fewer files than pipelines)"
        )
        log(f"input pipeline {pipeline_id} of {pipelines} reads {share} of the training split")
    paths = tf.constant([os.fspath(path) for path in info.filepaths])
    lengths = tf.constant(info.shard_lengths, tf.int64)
    deterministic = config["deterministic"]
    skip_corrupt = config.get("skip_corrupt_records", False)

    @tf.autograph.experimental.do_not_convert
    def pass_files(epoch, number):
        """One pass's shard files (this pipeline's share of them), in an order drawn from (seed, epoch, pass)."""
        order = tf.random.experimental.stateless_shuffle(
            tf.range(info.num_shards), seed=fold_in(epoch_seed(config["seed"], epoch), number), alg=RANDOM_ALGORITHM
        )
        if own_files:
            # Every pipeline draws the same order, so their shares never overlap.
            order = order[pipeline_id::pipelines]
        return tf.data.Dataset.from_tensor_slices((tf.gather(paths, order), tf.gather(lengths, order)))

    @tf.autograph.experimental.do_not_convert
    def pass_records(epoch, number):
        """One pass over this pipeline's share of the split, shuffled: a permutation of it when the shuffle
        window holds the whole share, else shuffled within consecutive windows of that many records."""
        records = interleave_shards(pass_files(epoch, number), config["interleave_cycle_length"], deterministic,
                                    skip_corrupt)  # fmt: skip
        if pipelines > 1 and not own_files:
            records = records.shard(pipelines, pipeline_id)
        return window_shuffle(records, config["shuffle_buffer"], fold_in(epoch_seed(config["seed"], epoch), number))

    @tf.autograph.experimental.do_not_convert
    def epoch_batches(epoch):
        # Pass after pass, each read whole before the next begins.
        records = tf.data.Dataset.counter().flat_map(functools.partial(pass_records, epoch))
        return records.batch(batch_size, drop_remainder=True).take(steps_per_epoch * batches_per_step)

    first_epoch, steps_done = divmod(start_step, steps_per_epoch)
    skip = tf.constant(steps_done * batches_per_step, tf.int64)

    @tf.autograph.experimental.do_not_convert
    def epoch_from_its_position(epoch):
        return epoch_batches(epoch).skip(tf.where(epoch == first_epoch, skip, tf.constant(0, tf.int64)))

    batches = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_from_its_position)
    batches = parse_paths(batches, builder, batch_size, deterministic)
    return endless(batches.with_options(read_options(deterministic)))


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


def data_service_dataset(builder, config: dict, address: str, job_name: str, input_context=None) -> tf.data.Dataset:
    """Endless (path, label) batches made by the tf.data service at address (grpc://HOST:PORT).

    The service's workers each read, shuffle and parse the whole split in their own random order (with one
    fixed seed they would all send the same stream), so this stream cannot be replayed: a resumed run goes
    on at its saved step with a fresh order. Trainers giving the same job_name share one job.
    """
    batch_size = (
        config["batch_size"]
        if input_context is None
        else input_context.get_per_replica_batch_size(config["batch_size"])
    )
    records = read_serialized(
        builder,
        "train",
        shuffle_files=True,
        seed=None,
        cycle_length=config["interleave_cycle_length"],
        deterministic=False,
        skip_corrupt=config.get("skip_corrupt_records", False),
    )
    records = records.repeat().shuffle(config["shuffle_buffer"])
    batches = parse_paths(records.batch(batch_size, drop_remainder=True), builder, batch_size, False)
    return endless(on_data_service(batches, address, job_name))


def validation_dataset(builder, config: dict, steps: int, input_context=None) -> tf.data.Dataset:
    """The same first `steps` (path, label) batches of the validation split, again and again (one pass an epoch)."""
    batches_per_step = (
        1 if input_context is None else (input_context.num_replicas_in_sync // input_context.num_input_pipelines)
    )
    batches = evaluation_dataset(
        builder, "validation", config, full_batches_only=True, input_context=input_context, paths=True
    )
    return endless(batches.take(steps * batches_per_step))


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
    builder,
    split: str,
    *,
    shuffle_files: bool,
    seed,
    cycle_length: int,
    deterministic: bool,
    skip_corrupt=False,
    input_context=None,
) -> tf.data.Dataset:
    """The split's records, still serialized, from the shard files that the dataset's metadata lists.

    Read without TFDS's per-example decoding: a batch of records is parsed at once (tf.io.parse_example),
    which costs a fraction of parsing them one by one. input_context: this input pipeline's share.
    """
    info = builder.info.splits[split]
    files = shard_files(info)
    if shuffle_files:
        files = files.shuffle(len(info.shard_lengths), seed=seed)
    own_files = reads_own_files(info.num_shards, input_context)
    if own_files:
        files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    records = interleave_shards(files, cycle_length, deterministic, skip_corrupt)
    if input_context is not None and input_context.num_input_pipelines > 1 and not own_files:
        records = records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return records.with_options(read_options(deterministic))


def shard_files(info) -> tf.data.Dataset:
    """(path, record count) of each shard file of a split, in order."""
    return tf.data.Dataset.from_tensor_slices(
        ([os.fspath(path) for path in info.filepaths], tf.constant(info.shard_lengths, tf.int64))
    )


def parse_paths(batches, builder, batch_size: int, deterministic: bool) -> tf.data.Dataset:
    """Batches of serialized records -> (path uint8 [batch, S, 2], label float32 [batch]), prefetched."""
    size = builder.info.features["video"].shape[1]
    spec = {"path": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    @tf.autograph.experimental.do_not_convert
    def parse(serialized):
        examples = tf.io.parse_example(serialized, spec)
        path = tf.reshape(tf.io.decode_raw(examples["path"], tf.uint8), [-1, size, 2])
        path = tf.ensure_shape(path, [serialized.shape[0], size, 2])  # keeps a static batch size static
        return path, tf.cast(examples["label"], tf.float32)

    # Under a tf.distribute strategy the distributed iterator prefetches each replica's batches onto its
    # device; this prefetch keeps the host side busy.
    return batches.map(parse, num_parallel_calls=AUTOTUNE, deterministic=deterministic).prefetch(AUTOTUNE)


def batch_and_parse_paths(records, builder, batch_size: int, deterministic: bool, drop_remainder: bool):
    return parse_paths(records.batch(batch_size, drop_remainder=drop_remainder), builder, batch_size, deterministic)


def evaluation_dataset(
    builder, split: str, config: dict, full_batches_only: bool = False, input_context=None, paths: bool = False
) -> tf.data.Dataset:
    """One pass over a split in its stored order: (video, label) batches, the last one possibly short.

    full_batches_only drops that short batch (validation during training keeps one batch shape). paths gives
    (path, label) batches instead, for the training model (validation during training). input_context makes
    it this input pipeline's share, in batches of the per-replica size.
    """
    batch_size = (
        config["batch_size"]
        if input_context is None
        else input_context.get_per_replica_batch_size(config["batch_size"])
    )
    read = {
        "shuffle_files": False,
        "seed": config["seed"],
        "cycle_length": 1,  # shard after shard: the stored order
        "deterministic": True,
        "skip_corrupt": config.get("skip_corrupt_records", False),
    }
    if paths:
        records = read_serialized(builder, split, **read, input_context=input_context)
        return batch_and_parse_paths(records, builder, batch_size, True, drop_remainder=full_batches_only)
    records = read_records(builder, split, **read)
    if input_context is not None:
        records = records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return batch_and_decode(records, builder, batch_size, True, drop_remainder=full_batches_only)


def reads_own_files(num_shards: int, input_context) -> bool:
    """Whether each input pipeline reads only its own shard files (there is one for each), rather than every
    k-th record of all of them."""
    pipelines = 1 if input_context is None else input_context.num_input_pipelines
    return pipelines > 1 and num_shards >= pipelines


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


def on_data_service(batches: tf.data.Dataset, address: str, job_name: str | None) -> tf.data.Dataset:
    """The batches made by the tf.data service at address (its dispatcher) instead of in this process.

    Every service worker makes its own endless stream of batches from the whole split (parallel_epochs; the
    sharding policies need a fixed list of workers, or files split one by one, which TFDS's reader refuses).
    Trainers that give the same job_name share one job: each batch goes to one of them.
    """
    distribute = tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.OFF, service=address, job_name=job_name
    )
    return batches.apply(distribute).prefetch(AUTOTUNE)


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
