"""Generate the moving_line TFDS dataset with Apache Beam.

    python -m pipeline.generate --data_dir DIR [--size 50] [--num_train N] [--num_validation N]
        [--num_test N] [--seed K] [--num_shards N] [--file_format tfrecord,array_record]
        [--dry_run=True] [BEAM OPTIONS...]

After its own flags it takes Beam pipeline options (--runner, --direct_num_workers, --project,
--region, --temp_location, --setup_file, --dask_client_address, ...); anything else is refused.
With no --runner it runs Beam's FnApiRunner with one worker process per core; --runner=DaskRunner
runs it on the Dask cluster at --dask_client_address (a local one when not given).
Exit codes: 0 done (or nothing to do), 1 a fault (full disk, damaged dataset; the line says what
to do), 2 bad input (nothing written), 130/143 interrupted by SIGINT/SIGTERM (nothing left that
TFDS would load; run it again).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import logging
import os
import shutil
import tempfile
import threading
import time

from pipeline import beam_options, cli, contract, local_runner, records

PROG = "pipeline.generate"
PROGRESS_SECONDS = 5.0
PROGRESS_MAX_SECONDS = 30.0
# TFDS writes one entry per shard into dataset_info.json: past this it would take hundreds of MB.
MAX_SHARDS_PER_SPLIT = 1_000_000
# Besides the shards: dataset_info.json, features.json, metadata.json and the filesystem's blocks.
DISK_MARGIN_BYTES = 4 << 20
# Bytes a file format adds to each record: TFRecord's length and two checksums; ArrayRecord's
# chunk headers and index, measured on size-2 to size-50 records and rounded up.
RECORD_OVERHEAD_BYTES = {"tfrecord": 16, "array_record": 64}


def parse_file_formats(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in contract.FILE_FORMATS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(contract.FILE_FORMATS)}, or both separated by a comma; got {text!r}"
        )
    return contract.ordered_formats(names)


def make_parser():
    parser = cli.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
        epilog="Beam pipeline options may follow (--runner, --direct_num_workers, --project, --region, "
        "--temp_location, --setup_file, --dask_client_address, ...; --dry_run=True plans without writing); "
        "anything else is refused.",
    )
    parser.add_argument("--data_dir", required=True, help="TFDS data directory (local path or gs://...).")
    parser.add_argument(
        "--size", type=cli.non_negative_int, default=contract.DEFAULT_SIZE, help="Frame size S (S frames of SxS)."
    )
    parser.add_argument(
        "--num_train", type=cli.positive_int, default=None, help="Training examples (config default if unset)."
    )
    parser.add_argument("--num_validation", type=cli.positive_int, default=None, help="Validation examples.")
    parser.add_argument("--num_test", type=cli.positive_int, default=None, help="Test examples.")
    parser.add_argument(
        "--seed", type=cli.non_negative_int, default=contract.DEFAULT_SEED, help="Seed of the random streams."
    )
    parser.add_argument(
        "--num_shards",
        type=cli.positive_int,
        default=None,
        help="Shards per split (default: TFDS's rule, at most 64 MiB per shard, and several shards per worker "
        "of a local runner or a Dask cluster).",
    )
    parser.add_argument(
        "--file_format",
        type=parse_file_formats,
        default=contract.DEFAULT_FILE_FORMATS,
        help="tfrecord (read by tf.data), array_record (random access: tfds.data_source, Grain, PyTorch), "
        "or both: tfrecord,array_record (one pass writes both).",
    )
    return parser


def parse_args(argv=None):
    from pipeline import generator

    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        generator.check_size(args.size)
    except ValueError as error:
        raise cli.UsageError(f"--size: {error}") from None
    if args.seed >= 2**63:
        raise cli.UsageError(f"--seed must be below 2**63, got {args.seed}")
    beam_options.check_beam_args(beam_args, cli.flags_in_usage(parser))
    if "://" in args.data_dir and "array_record" in args.file_format:
        # TFDS's ArrayRecord writer fails on gs:// (tensorflow/datasets#10981).
        raise cli.UsageError(
            "--file_format array_record needs a local --data_dir (ArrayRecord files cannot be written to "
            f"{args.data_dir.split('://')[0]}:// yet); write tfrecord there and convert with `tfds convert_format`"
        )
    return args, beam_args


def existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_data_dir(data_dir: str, create: bool):
    """A local data_dir must be a writable directory (created if missing, unless create is False)."""
    if "://" in data_dir:
        return  # gs:// and friends: the runner checks access
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise cli.UsageError(f"--data_dir {data_dir} is a file; give a directory")
    parent = existing_ancestor(data_dir)
    if not os.path.isdir(parent):
        raise cli.UsageError(f"--data_dir {data_dir} cannot be created ({parent} is a file); give a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise cli.UsageError(f"--data_dir {data_dir} is not writable; give a writable directory")
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as error:
        raise cli.UsageError(
            f"--data_dir {data_dir} cannot be created ({error.strerror}); give a writable directory"
        ) from None
    if not create:  # it could be made: take it away again until there is something to write
        path = os.path.abspath(data_dir)
        while path != parent:
            os.rmdir(path)
            path = os.path.dirname(path)


def describe(settings: dict) -> str:
    return (
        f"size {settings.get('size')}, seed {settings.get('seed')}, {settings.get('num_train')} train / "
        f"{settings.get('num_validation')} validation / {settings.get('num_test')} test"
    )


def read_settings(folder: str) -> dict | None:
    """The settings recorded in folder's metadata.json, if it can be read."""
    try:
        metadata = contract.read_json(os.path.join(folder, contract.METADATA_FILE))
    except (OSError, ValueError):
        return None
    return {key: metadata.get(key) for key in ("size", "seed", "num_train", "num_validation", "num_test")}


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def estimate_bytes(counts: dict[str, int], bytes_per_example: float, file_formats) -> int:
    total = sum(counts.values())
    return int(sum(total * (bytes_per_example + RECORD_OVERHEAD_BYTES[name]) for name in file_formats))


def check_free_space(data_dir: str, needed: int):
    if "://" in data_dir:
        return
    where = existing_ancestor(data_dir)
    free = shutil.disk_usage(where).free
    if free < needed + DISK_MARGIN_BYTES:
        raise cli.UsageError(
            f"the dataset needs about {human_bytes(needed)} but {where} has {human_bytes(free)} free; "
            "free some space, choose another --data_dir or ask for fewer examples"
        )


@contextlib.contextmanager
def exclusive_build(config_folder: str):
    """Holds a lock on the config's folder, then clears what killed runs left behind.

    TFDS builds in an `incomplete.*` folder beside the version folder and renames it at
    the end; a run killed midway leaves that folder behind. With the lock held, no other
    run can be using one, so they are safe to delete.
    """
    if "://" in config_folder:
        yield  # remote file systems have no locks: one writer per folder is up to the user
        return
    os.makedirs(config_folder, exist_ok=True)
    with open(os.path.join(config_folder, ".generate.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise cli.UsageError(f"another pipeline.generate is writing {config_folder}; wait for it to end") from None
        for name in sorted(os.listdir(config_folder)):
            if contract.INCOMPLETE_FOLDER.fullmatch(name):
                stale = os.path.join(config_folder, name)
                cli.log(PROG, f"removing {stale}, left by an interrupted run")
                shutil.rmtree(stale)
        yield


class ProgressReporter:
    """Prints examples made so far, read from the marker files the Beam workers leave."""

    def __init__(self, folder: str, totals: dict[str, int]):
        self._folder, self._totals = folder, totals
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.monotonic()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def made(self) -> dict[str, int]:
        made = dict.fromkeys(self._totals, 0)
        for name in os.listdir(self._folder):
            split, _, count = name.split("-")
            made[split] += int(count)
        return made

    def _loop(self):
        total, announced_write, interval = sum(self._totals.values()), False, PROGRESS_SECONDS
        # The interval doubles up to a cap: quick news at the start, a few dozen lines for long runs.
        while not self._stop.wait(interval):
            interval = min(2 * interval, PROGRESS_MAX_SECONDS)
            made = self.made()
            done, seconds = sum(made.values()), time.monotonic() - self._start
            parts = ", ".join(f"{split} {made[split]:,}/{count:,}" for split, count in self._totals.items())
            if done < total:
                cli.log(PROG, f"generated {parts} ({100 * done / total:.0f}%, {done / seconds:,.0f} seq/s)")
            elif not announced_write:
                cli.log(PROG, f"generated all {total:,} examples in {seconds:.0f} s; finishing the shards...")
                announced_write = True


def is_no_space(error: BaseException) -> bool:
    """A full disk, raised here or in a Beam worker (whose error arrives as text)."""
    import errno

    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    return "No space left on device" in text or "[Errno 28]" in text


def runner_could_not_start(error: BaseException) -> bool:
    """Beam's portable runners failing before the job starts: a job server they cannot download (Flink's, Spark's
    jars, with no network), or no --job_endpoint for PortableRunner."""
    text = str(error)
    return (isinstance(error, RuntimeError) and text.startswith("Unable to fetch remote")) or (
        isinstance(error, NotImplementedError) and "--job_endpoint" in text
    )


def cluster_failure(error: BaseException) -> bool:
    """A fault of a Dask cluster rather than of the job: workers that kept dying on a task, a scheduler gone."""
    return type(error).__module__.split(".")[0] == "distributed" or isinstance(error, (OSError, TimeoutError))


def plan_summary(plans) -> str:
    return ", ".join(
        f"{plan.split} {plan.count:,} in {plan.num_shards:,} shard{'s' * (plan.num_shards > 1)}" for plan in plans
    )


def main(argv=None):
    args, beam_args = parse_args(argv)
    cli.quiet_tensorflow()
    # Local Beam workers forward their log lines here: a harmless warning each about a missing semi-persistent
    # folder, and any error, which the runner raises here again with its traceback.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.CRITICAL + 1)
    options = beam_options.make_options(beam_args)
    dry_run = beam_options.is_dry_run(options)
    runner_name = beam_options.runner_name(options).rsplit(".", 1)[-1]
    dask = beam_options.is_dask(options)

    counts = contract.default_counts(args.size)
    for split in contract.SPLITS:
        if getattr(args, f"num_{split}") is not None:
            counts[split] = getattr(args, f"num_{split}")
    wanted = {"size": args.size, "seed": args.seed, **{f"num_{split}": count for split, count in counts.items()}}
    if args.num_shards and args.num_shards > min(counts.values()):
        split = min(counts, key=counts.get)
        raise cli.UsageError(
            f"--num_shards {args.num_shards} is more than the {counts[split]:,} {split} examples; "
            f"give at most {counts[split]:,} (every shard holds at least one example)"
        )
    folder = contract.dataset_folder(args.data_dir, args.size)
    remote = "://" in args.data_dir
    if not dry_run:  # a dry run needs no network
        cli.check_reachable(args.data_dir, "--data_dir")
    # A finished build is a no-op wherever it lies (a read-only mount too): looked for before anything else.
    if not (dry_run and remote) and existing_build(folder, wanted, args) == "built":
        return 0
    check_data_dir(args.data_dir, create=False)

    import tensorflow_datasets as tfds

    from pipeline.moving_line import moving_line_dataset_builder as dataset_builder

    # The workers the shards are planned for: a local runner's processes, a Dask cluster's threads (asked of its
    # scheduler, which also shows it answers). A remote runner such as Dataflow scales by itself.
    num_workers = beam_options.local_workers(options)
    if dask:
        num_workers = beam_options.dask_cluster_threads(options)
    bytes_per_example = records.mean_record_bytes(args.seed, args.size)
    shard_config = tfds.download.DownloadConfig(num_shards=args.num_shards).get_shard_config()
    balance = dataset_builder.balance_examples(counts.values(), num_workers)
    num_shards = {
        split: dataset_builder.num_shards_for(count, bytes_per_example, shard_config, balance)
        for split, count in counts.items()
    }
    needed = estimate_bytes(counts, bytes_per_example, args.file_format)
    # The shard limit first: no disk makes room for a build TFDS cannot list.
    for split, shards in num_shards.items():
        if shards > MAX_SHARDS_PER_SPLIT:
            raise cli.UsageError(
                f"{counts[split]:,} {split} examples would take {shards:,} shards, more than the "
                f"{MAX_SHARDS_PER_SPLIT:,} TFDS's metadata can list; ask for fewer examples or set --num_shards"
            )
    check_free_space(args.data_dir, needed)

    if dry_run:
        return dry_run_job(args, options, runner_name, counts, num_shards, needed, folder, remote)

    beam_options.check_runner_binary(options)
    check_data_dir(args.data_dir, create=True)
    config = contract.config_name(args.size)
    predefined = {config.name for config in dataset_builder.Builder.BUILDER_CONFIGS}
    builder = dataset_builder.Builder(
        config=config if config in predefined else dataset_builder.make_config(args.size),
        data_dir=args.data_dir,
        num_train=counts["train"],
        num_validation=counts["validation"],
        num_test=counts["test"],
        seed=args.seed,
        file_formats=args.file_format,
        num_workers=num_workers,
    )
    formats = " and ".join(args.file_format)
    where = f" at {beam_options.dask_address(options) or 'a local cluster'}" if dask else ""
    cli.log(
        PROG, f"building {contract.full_name(args.size)} ({describe(wanted)}) as {formats} with {runner_name}{where}"
    )
    plans = builder.split_plans(folder, shard_config, bytes_per_example)
    cli.log(PROG, f"about {human_bytes(needed)} in all: {plan_summary(plans)}")
    start = time.monotonic()
    config_folder = contract.config_folder(args.data_dir, args.size)
    progress_folder = None
    records.keep_freed_memory_in_children()
    try:
        with (
            exclusive_build(config_folder),
            # Beside the build, like TFDS's incomplete folders: a killed run's is cleared with them, not left in /tmp.
            tempfile.TemporaryDirectory(
                prefix="incomplete.downloads-", dir=None if remote else config_folder
            ) as downloads,
        ):
            if num_workers and not remote:
                # Beside the build, where the workers write (a cluster's included), named like TFDS's incomplete
                # folders: a killed run's is cleared with them.
                progress_folder = tempfile.mkdtemp(prefix="incomplete.progress-", dir=config_folder)
                builder.progress_folder = progress_folder
            progress = ProgressReporter(progress_folder, counts) if progress_folder else contextlib.nullcontext()
            with (
                # First: every thread started from here on (the progress reporter's too) leaves the signals to it.
                local_runner.signals_stop_workers(kill_workers=not dask),
                local_runner.workers_stderr_aside() if num_workers and not dask else contextlib.nullcontext(),
                beam_options.local_dask_cluster(beam_args, options, num_workers) as run_options,
                progress,
                contextlib.redirect_stdout(io.StringIO()),  # TFDS prints "Downloading and preparing..." there
            ):
                download_config = tfds.download.DownloadConfig(beam_options=run_options, num_shards=args.num_shards)
                # Nothing is downloaded; TFDS's download manager still makes its folders, here out of the way.
                builder.download_and_prepare(download_dir=downloads, download_config=download_config)
    except Exception as error:
        if is_no_space(error):
            raise cli.FaultError(
                f"no space left on the device writing {folder}; nothing was kept: free some space and run the "
                "same command again"
            ) from None
        if runner_could_not_start(error):
            problem = " ".join(str(error).split())[:300]
            raise cli.UsageError(
                f"{runner_name} could not start ({problem}); nothing was kept: give it what it asks for, or drop "
                "--runner to build on Beam's FnApiRunner"
            ) from None
        if dask and (cluster_failure(error) or isinstance(error, dataset_builder.ShardsMissingError)):
            problem = " ".join(str(error).split())[:300] or type(error).__name__
            raise cli.FaultError(
                f"the Dask cluster at {beam_options.dask_address(options) or 'localhost'} could not finish the job "
                f"({type(error).__name__}: {problem}); nothing was kept: check its workers and run the same command "
                "again"
            ) from None
        if isinstance(error, dataset_builder.ShardsMissingError):
            raise cli.FaultError(f"{runner_name} {error}; nothing was kept: run the same command again") from None
        raise
    finally:
        if progress_folder:
            shutil.rmtree(progress_folder, ignore_errors=True)
    summarize(builder, time.monotonic() - start)
    return 0


def existing_build(folder: str, wanted: dict, args) -> str | None:
    """'built' when folder already holds this build; None when there is nothing (or it was damaged and
    is rebuilt). Refuses other settings, flags that cannot change a finished build, and damage it cannot repair."""
    if not contract.path_exists(folder):
        return None
    try:
        info = contract.check_complete(folder)
    except contract.DamagedDatasetError as damage:
        if read_settings(folder) != wanted or "://" in folder:
            raise
        check_data_dir(args.data_dir, create=False)  # a rebuild writes: a read-only folder is refused as before
        others = sorted(name for name in os.listdir(folder) if not contract.is_build_file(name))
        if others:  # rebuilding deletes the folder: only when it holds nothing but a build's files
            raise cli.UsageError(
                f"{str(damage).split(';')[0]}, and it holds {others[0]}, which no build writes; move that away and "
                "run the same command again to rebuild it, or delete the folder yourself"
            ) from None
        cli.log(PROG, f"{str(damage).split(';')[0]}; rebuilding it with the same settings")
        with exclusive_build(os.path.dirname(folder)):
            shutil.rmtree(folder)
        return None
    found = read_settings(folder)
    if found != wanted:
        raise cli.UsageError(
            f"{folder} already holds a dataset built with {describe(found or {})}, not {describe(wanted)}; "
            "use another --data_dir or delete that folder"
        )
    formats = contract.ordered_formats([info.get("fileFormat", "tfrecord"), *info.get("alternativeFileFormats", [])])
    missing = [name for name in args.file_format if name not in formats]
    if missing and "tfrecord" in missing:
        # tfds convert_format reads its input with tf.data, which reads no ArrayRecord (TFDS 4.9.10): it
        # writes nothing, and exits 0 unless run with --num_workers=1.
        raise cli.UsageError(
            f"{folder} holds this dataset as {' and '.join(formats)}, without {' and '.join(missing)}, which "
            "`tfds convert_format` cannot make from ArrayRecord; delete the folder and generate again with "
            f"--file_format {','.join(contract.ordered_formats([*formats, *missing]))}"
        )
    if missing:
        raise cli.UsageError(
            f"{folder} holds this dataset as {' and '.join(formats)}, without {' and '.join(missing)}; add it with "
            f"`tfds convert_format --dataset_version_dir={folder} --out_file_format={missing[0]}` or delete the "
            "folder and generate again"
        )
    if args.num_shards:
        shards = {split["name"]: len(split.get("shardLengths", [])) for split in info["splits"]}
        if set(shards.values()) != {args.num_shards}:
            raise cli.UsageError(
                f"{folder} already holds this dataset (shards: {', '.join(f'{s} {n}' for s, n in shards.items())}); "
                f"--num_shards {args.num_shards} cannot change a finished build: delete the folder to reshard it"
            )
    cli.log(PROG, f"{folder} already holds this dataset ({describe(wanted)}); nothing to do")
    return "built"


def dry_run_job(args, options, runner_name, counts, num_shards, needed, folder, remote) -> int:
    """Plans the build and, for a remote runner, has Beam build the whole job; writes nothing."""
    from pipeline import transforms

    plans = [
        transforms.SplitPlan(split, count, num_shards[split], folder, args.file_format)
        for split, count in counts.items()
    ]
    where = "" if remote else f" ({human_bytes(shutil.disk_usage(existing_ancestor(args.data_dir)).free)} free)"
    cli.log(PROG, f"dry run: {plan_summary(plans)}, about {human_bytes(needed)} into {folder}{where}")
    if beam_options.runner_name(options) not in beam_options.LOCAL_RUNNERS and not beam_options.is_dask(options):
        import apache_beam as beam

        from pipeline.moving_line import moving_line_dataset_builder as dataset_builder

        written = os.path.join(folder, dataset_builder.WRITTEN_SHARDS_FOLDER)
        write = transforms.WriteShards(plans, args.seed, args.size, written)
        try:
            with beam.Pipeline(options=options) as pipeline:
                _ = pipeline | "WriteShards" >> write
        except ValueError as error:  # Beam's checks of the options, e.g. "Invalid Project ID"
            problem = " ".join(str(error).split())
            raise cli.UsageError(f"{runner_name} refused the options: {problem}") from None
        cli.log(PROG, f"dry run: {runner_name} built the job without running it; nothing written")
    else:
        cli.log(
            PROG, f"dry run: nothing written ({runner_name} starts its work only when it runs; drop --dry_run to build)"
        )
    return 0


def summarize(builder, seconds: float):
    splits = builder.info.splits
    total = sum(split.num_examples for split in splits.values())
    total_bytes = sum(split.num_bytes for split in splits.values())
    for name, split in splits.items():
        cli.log(
            PROG,
            f"  {name}: {split.num_examples:,} examples in {split.num_shards} shard{'s' * (split.num_shards > 1)}, "
            f"{split.num_bytes:,} bytes",
        )
    formats = " and ".join(builder.file_formats)
    cli.log(
        PROG,
        f"done: {total:,} examples, {total_bytes / max(total, 1):.0f} bytes each, as {formats}, in {seconds:.1f} s "
        f"({total / seconds:,.0f} seq/s) -> {builder.data_dir}",
    )


if __name__ == "__main__":
    # Every outcome ends at once, once its line is printed: what the build wrote is closed or deleted by then, and
    # after an interrupt the local runner's threads still wait for the workers it lost (Python's teardown would
    # wait for them in turn).
    try:
        exit_code = cli.run_main(PROG, main)
    except SystemExit as leaving:
        exit_code = leaving.code
    cli.exit_at_once(exit_code or 0)
