"""The dataset's file formats side by side: bytes on disk, and reading speed by each route.

    python -m bench formats [--data_dir DIR] [--size 50] [--num 20000] [--reads 2000] [--batch_size 256]

Without --data_dir, builds the dataset with both formats (pipeline.generate --file_format
tfrecord,array_record) into a temporary folder first. Then, in this process, on the training
split: bytes per sequence of each format; tfds.data_source (ArrayRecord) reading random examples
one at a time and a batch at a time (decoded: video, label, path); a Grain pipeline
(MapDataset.source(...).shuffle(seed).batch(...)) on that source over one epoch; and tf.data
reading the TFRecord files in order over one epoch (tfds as_dataset, decoded), for comparison.
Every route inflates each 125 kB video (size 50): that is most of the time. Ends with one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipeline import cli, contract


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def build(data_dir: str, size: int, num: int):
    extra = max(1, num // 20)
    command = [
        sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={size}", f"--num_train={num}",
        f"--num_validation={extra}", f"--num_test={extra}", "--file_format=tfrecord,array_record",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def bytes_per_sequence(folder: str, count: int) -> dict:
    sizes = {}
    for name in os.listdir(folder):
        for file_format in contract.FILE_FORMATS:
            if name.startswith(f"{contract.NAME}-train.{file_format}-"):
                sizes[file_format] = sizes.get(file_format, 0) + os.path.getsize(os.path.join(folder, name))
    return {file_format: round(total / count, 1) for file_format, total in sizes.items()}


def main(argv=None):
    parser = cli.ArgumentParser(prog="bench formats", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", help="A data_dir holding moving_line/size_<size> in both formats.")
    parser.add_argument("--size", type=cli.positive_int, default=contract.DEFAULT_SIZE)
    parser.add_argument("--num", type=cli.positive_int, default=20_000, help="Training examples to build.")
    parser.add_argument("--reads", type=cli.positive_int, default=2_000, help="Random single reads to time.")
    parser.add_argument("--batch_size", type=cli.positive_int, default=256)
    args = parser.parse_args(argv)
    cli.quiet_tensorflow()
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_formats_"))
            build(data_dir, args.size, args.num)
        return measure(data_dir, args)


def measure(data_dir: str, args) -> dict:
    import tensorflow_datasets as tfds

    name = contract.full_name(args.size)
    source = tfds.data_source(name, split="train", data_dir=data_dir)
    count = len(source)
    random = np.random.default_rng(0)
    batch_size = min(args.batch_size, count)
    figures = {"benchmark": "formats", "size": args.size, "examples": count, "cores": os.cpu_count()}
    figures["bytes_per_seq"] = bytes_per_sequence(contract.dataset_folder(data_dir, args.size), count)
    print(f"bench formats: {name}, {count:,} training examples, {os.cpu_count()} cores, {data_dir}")
    print(f"  bytes per sequence on disk: {figures['bytes_per_seq']}")

    indices = random.integers(0, count, args.reads).tolist()
    source[indices[0]]  # opening the files is not the steady rate
    figures["data_source_random_reads_per_s"] = round(args.reads / timed(lambda: [source[i] for i in indices]))
    batches = [random.integers(0, count, batch_size).tolist() for _ in range(max(1, args.reads // batch_size))]
    seconds = timed(lambda: [source.__getitems__(batch) for batch in batches])
    figures["data_source_batched_reads_per_s"] = round(len(batches) * batch_size / seconds)
    print(f"  tfds.data_source, random reads one at a time: {figures['data_source_random_reads_per_s']:,} per s")
    batched = figures["data_source_batched_reads_per_s"]
    print(f"  tfds.data_source, random batches of {batch_size}: {batched:,} reads per s")

    with contextlib.suppress(ImportError):
        import grain

        dataset = grain.MapDataset.source(source).shuffle(seed=0).batch(batch_size)
        # A whole epoch but the first batch: Grain reads ahead, so a few batches would time its buffer.
        iterator = iter(dataset)
        next(iterator)
        done = len(dataset) - 1
        seconds = timed(lambda: [next(iterator) for _ in range(done)])
        if done:
            figures["grain_batches_per_s"] = round(done / seconds, 1)
            figures["grain_seq_per_s"] = round(done * batch_size / seconds)
            print(
                f"  Grain, shuffled batches of {batch_size}: {figures['grain_batches_per_s']:,} batches per s "
                f"({figures['grain_seq_per_s']:,} sequences per s)"
            )

    dataset = tfds.load(name, split="train", data_dir=data_dir).batch(batch_size).prefetch(2)
    iterator = iter(tfds.as_numpy(dataset))
    next(iterator)
    wanted = max(1, count // batch_size - 1)  # a whole epoch but the first batch, as for Grain
    seconds = timed(lambda: [next(iterator) for _ in range(wanted)])
    figures["tfrecord_tf_data_seq_per_s"] = round(wanted * batch_size / seconds)
    print(f"  tf.data on the TFRecord files, in order: {figures['tfrecord_tf_data_seq_per_s']:,} sequences per s")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
