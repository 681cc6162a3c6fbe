"""tf.data input from the moving_line TFDS dataset, read the way another project would.

The dataset is opened from its folder (tfds.builder with data_dir, no builder code
needed). Training reads each example's `path` (100 bytes at S = 50, the pixel each frame
lights), which the model renders into the video on the accelerator: inflating the stored
125 kB videos on the host tops out near 2,500 videos/s per core, far below what one GPU
trains on. Records stay serialized (about 500 bytes) through interleaving and the shuffle
buffer and are parsed a batch at a time, so memory does not grow with the dataset.
Evaluation of exported models reads the stored `video`, as any other project would.
"""

from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline import contract
from pipeline.cli import UsageError

DATASET_NAME = "moving_line"
AUTOTUNE = tf.data.AUTOTUNE


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
                f"{folder} holds no TFRecord files (only {info['fileFormat']}), which tf.data reads; generate it with "
                f"`python -m pipeline.generate --data_dir {data_dir} --size {size} --file_format tfrecord`"
            )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError):
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
    builder, config: dict, input_context=None, data_service: str | None = None, data_service_job: str | None = None
) -> tf.data.Dataset:
    """An endless stream of shuffled (path, label) batches of config["batch_size"] (the global batch).

    The model renders each path into its video (trainer.model.RenderVideo), on the accelerator.
    input_context (a tf.distribute.InputContext, multi-worker training) makes it this worker's share:
    every num_input_pipelines-th example, in batches of the per-replica size. data_service (a tf.data
    service dispatcher, grpc://HOST:PORT) has the service's workers read, shuffle and parse; trainers
    giving the same data_service_job share its stream.
    """
    deterministic = config["deterministic"]
    # Each tf.data service worker runs this whole pipeline: with one fixed seed they would all send the same stream.
    seed = config["seed"] if data_service is None else None
    records = read_serialized(
        builder,
        "train",
        shuffle_files=True,
        seed=seed,
        cycle_length=config["interleave_cycle_length"],
        deterministic=deterministic,
        skip_corrupt=config.get("skip_corrupt_records", False),
    )
    if data_service is None:
        records, batch_size = shard(records, config["batch_size"], input_context)
    else:
        # Trainers that share a service job each get different batches from it; no sharding here.
        batch_size = shard(records, config["batch_size"], input_context)[1]
    # Repeat before shuffling so that epochs blend and the stream never stops at a split boundary;
    # steps_per_epoch decides what an epoch is.
    records = records.repeat().shuffle(config["shuffle_buffer"], seed=seed)
    batches = batch_and_parse_paths(records, builder, batch_size, deterministic, drop_remainder=True)
    return batches if data_service is None else on_data_service(batches, data_service, data_service_job)


def read_serialized(
    builder, split: str, *, shuffle_files: bool, seed, cycle_length: int, deterministic: bool, skip_corrupt=False
) -> tf.data.Dataset:
    """The split's records, still serialized, from the shard files that the dataset's metadata lists.

    Read without TFDS's per-example decoding: a batch of records is parsed at once (tf.io.parse_example),
    which costs a fraction of parsing them one by one. Each shard must hold the records its metadata
    says (TFDS's own check), unless skip_corrupt drops unreadable records instead of failing.
    """
    info = builder.info.splits[split]
    files = tf.data.Dataset.from_tensor_slices(
        ([os.fspath(path) for path in info.filepaths], tf.constant(info.shard_lengths, tf.int64))
    )
    if shuffle_files:
        files = files.shuffle(len(info.shard_lengths), seed=seed)

    def shard_records(path, length):
        records = tf.data.TFRecordDataset(path)
        return records if skip_corrupt else records.apply(tf.data.experimental.assert_cardinality(length))

    parallel = {"num_parallel_calls": AUTOTUNE, "deterministic": deterministic} if cycle_length > 1 else {}
    records = files.interleave(shard_records, cycle_length=cycle_length, **parallel)
    records = records.with_options(read_options(deterministic))
    if skip_corrupt:
        return records.ignore_errors()
    # A known length: Keras miscounts metrics over a dataset of unknown length.
    return records.apply(tf.data.experimental.assert_cardinality(info.num_examples))


def batch_and_parse_paths(records, builder, batch_size: int, deterministic: bool, drop_remainder: bool):
    size = builder.info.features["video"].shape[1]
    spec = {"path": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(serialized):
        examples = tf.io.parse_example(serialized, spec)
        path = tf.reshape(tf.io.decode_raw(examples["path"], tf.uint8), [-1, size, 2])
        path = tf.ensure_shape(path, [serialized.shape[0], size, 2])  # keeps a static batch size static
        return path, tf.cast(examples["label"], tf.float32)

    batches = records.batch(batch_size, drop_remainder=drop_remainder)
    # Under a tf.distribute strategy model.fit splits each global batch across the replicas and its
    # distributed iterator prefetches the pieces onto their devices; this prefetch keeps the host side busy.
    return batches.map(parse, num_parallel_calls=AUTOTUNE, deterministic=deterministic).prefetch(AUTOTUNE)


def evaluation_dataset(
    builder, split: str, config: dict, full_batches_only: bool = False, input_context=None, paths: bool = False
) -> tf.data.Dataset:
    """One pass over a split in its stored order: (video, label) batches, the last one possibly short.

    full_batches_only drops that short batch: validation during training then keeps one batch shape
    (a second shape would retrace Keras's test step, seconds each epoch on a CPU). paths gives
    (path, label) batches instead, for the training model (validation during training).
    """
    read, batch = (read_serialized, batch_and_parse_paths) if paths else (read_records, batch_and_decode)
    records = read(
        builder,
        split,
        shuffle_files=False,
        seed=config["seed"],
        cycle_length=1,  # shard after shard: the stored order
        deterministic=True,
        skip_corrupt=config.get("skip_corrupt_records", False),
    )
    records, batch_size = shard(records, config["batch_size"], input_context)
    return batch(records, builder, batch_size, True, drop_remainder=full_batches_only)


def shard(records, global_batch_size: int, input_context):
    """This worker's share of the records and its batch size; all of them and the global batch without a context."""
    if input_context is None:
        return records, global_batch_size
    records = records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return records, input_context.get_per_replica_batch_size(global_batch_size)


def batch_and_decode(records, builder, batch_size: int, deterministic: bool, drop_remainder: bool):
    video_feature = builder.info.features["video"]
    examples = records.map(
        lambda example: to_model_inputs(example, video_feature),
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
