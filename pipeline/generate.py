"""Generate the moving_line TFDS dataset with Apache Beam.

    python -m pipeline.generate --data_dir DIR [--size 50] [--num_train N]
        [--num_validation N] [--num_test N] [--seed K] [--num_shards N] [BEAM OPTIONS...]

Flags this command does not know are Beam pipeline options (--runner,
--direct_num_workers, --project, --region, --temp_location, --setup_file, ...).
With no --runner it runs Beam's FnApiRunner with one worker process per core.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import json
import logging
import os
import shutil
import threading
import time

from pipeline import cli, generator

PROG = "pipeline.generate"
DATASET_NAME = "moving_line"
PROGRESS_SECONDS = 5.0
PROGRESS_MAX_SECONDS = 30.0
LOCAL_RUNNERS = {None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="TFDS data directory (local path or gs://...).")
    parser.add_argument(
        "--size", type=cli.non_negative_int, default=50, help="Frame size S (frames are SxS, S per video)."
    )
    parser.add_argument(
        "--num_train", type=cli.positive_int, default=None, help="Training examples (config default if unset)."
    )
    parser.add_argument("--num_validation", type=cli.positive_int, default=None, help="Validation examples.")
    parser.add_argument("--num_test", type=cli.positive_int, default=None, help="Test examples.")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0, help="Seed of the random streams.")
    parser.add_argument(
        "--num_shards",
        type=cli.positive_int,
        default=None,
        help="Shards per split (default: TFDS's rule, 64 MiB to 1 GiB per shard).",
    )
    args, beam_args = parser.parse_known_args(argv)
    try:
        generator.check_size(args.size)
    except ValueError as error:
        raise cli.UsageError(f"--size: {error}") from None
    if args.seed >= 2**63:
        raise cli.UsageError(f"--seed must be below 2**63, got {args.seed}")
    for previous, arg in zip([None, *beam_args], beam_args, strict=False):
        # A value is fine after a flag without "=" (--project NAME); anything else is stray.
        if not arg.startswith("-") and not (previous and previous.startswith("--") and "=" not in previous):
            raise cli.UsageError(f"unexpected argument {arg!r}; Beam options look like --name=value")
    return args, beam_args


def beam_options(beam_args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    if not any(arg.startswith("--runner") for arg in beam_args):
        # FnApiRunner: Beam's local runner without the Prism download attempt, one process per core.
        beam_args = [
            "--runner=FnApiRunner",
            f"--direct_num_workers={os.cpu_count() or 1}",
            "--direct_running_mode=multi_processing",
            *beam_args,
        ]
    return PipelineOptions(beam_args)


def is_dry_run(options) -> bool:
    """--dry_run=True: Dataflow builds the whole job and returns without submitting it."""
    from apache_beam.options.pipeline_options import TestOptions

    return str(options.view_as(TestOptions).dry_run).lower() in {"true", "1"}


def check_data_dir(data_dir: str):
    """A local data_dir must be a writable directory (created if missing)."""
    if "://" in data_dir:
        return  # gs:// and friends: the runner checks access
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise cli.UsageError(f"--data_dir {data_dir} is a file; give a directory")
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as error:
        raise cli.UsageError(
            f"--data_dir {data_dir} cannot be created ({error.strerror}); give a writable directory"
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise cli.UsageError(f"--data_dir {data_dir} is not writable; give a writable directory")


def existing_settings(builder) -> dict | None:
    """The settings a finished build in the builder's folder was made with, if any."""
    from etils import epath

    folder = epath.Path(builder.data_dir)
    if not (folder / "dataset_info.json").exists():
        return None
    metadata = folder / "metadata.json"
    return json.loads(metadata.read_text()) if metadata.exists() else {}


def describe(settings: dict) -> str:
    return (
        f"size {settings.get('size')}, seed {settings.get('seed')}, {settings.get('num_train')} train / "
        f"{settings.get('num_validation')} validation / {settings.get('num_test')} test"
    )


@contextlib.contextmanager
def exclusive_build(dataset_folder: str):
    """Holds a lock on the config's folder, then clears what killed runs left behind.

    TFDS builds in an `incomplete.*` folder beside the version folder and renames it at
    the end; a run killed midway leaves that folder behind. With the lock held, no other
    run can be using one, so they are safe to delete.
    """
    config_folder = os.path.dirname(dataset_folder.rstrip("/"))
    if "://" in config_folder:
        yield  # remote file systems have no locks: one writer per folder is up to the user
        return
    os.makedirs(config_folder, exist_ok=True)
    with open(os.path.join(config_folder, ".generate.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise cli.UsageError(f"another pipeline.generate is writing {config_folder}; wait for it to end") from None
        for stale in glob.glob(os.path.join(config_folder, "incomplete.*")):
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
                cli.log(PROG, f"generated all {total:,} examples in {seconds:.0f} s; writing shards...")
                announced_write = True


def main(argv=None):
    args, beam_args = parse_args(argv)
    check_data_dir(args.data_dir)
    cli.quiet_tensorflow()
    # Local Beam workers forward a harmless warning each about a missing semi-persistent folder.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)

    import tempfile

    import tensorflow_datasets as tfds

    from pipeline.moving_line import moving_line_dataset_builder as dataset_builder

    options = beam_options(beam_args)
    runner = options.get_all_options().get("runner")
    local = runner in LOCAL_RUNNERS

    predefined = {config.name for config in dataset_builder.Builder.BUILDER_CONFIGS}
    name = f"size_{args.size}"
    config = name if name in predefined else dataset_builder.make_config(args.size)
    builder = dataset_builder.Builder(
        config=config,
        data_dir=args.data_dir,
        num_train=args.num_train,
        num_validation=args.num_validation,
        num_test=args.num_test,
        seed=args.seed,
    )
    wanted = builder.settings()
    found = existing_settings(builder)
    if found is not None:
        if found == wanted:
            cli.log(PROG, f"{builder.data_dir} already holds this dataset ({describe(wanted)}); nothing to do")
            return 0
        raise cli.UsageError(
            f"{builder.data_dir} already holds a dataset built with {describe(found)}, not {describe(wanted)}; "
            "use another --data_dir or delete that folder"
        )

    cli.log(PROG, f"building {DATASET_NAME}/{builder.builder_config.name} ({describe(wanted)}) with {runner}")
    start = time.monotonic()
    download_config = tfds.download.DownloadConfig(beam_options=options, num_shards=args.num_shards)
    if local:
        builder.progress_folder = tempfile.mkdtemp(prefix="moving_line_progress_")
    progress = ProgressReporter(builder.progress_folder, builder.split_counts()) if local else contextlib.nullcontext()
    try:
        # TFDS prints two lines of its own on stdout ("Downloading and preparing dataset ..."); this logs its own.
        with exclusive_build(os.fspath(builder.data_dir)), progress, contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(download_config=download_config)
    except FileNotFoundError as error:
        # A dry run builds the job and returns without running it, so no shard was recorded.
        if not (is_dry_run(options) and str(error.filename).endswith(dataset_builder.SHARDS_FILE)):
            raise
        cli.log(PROG, f"dry run: {runner} built the job for {describe(wanted)} without running it; nothing written")
        return 0
    finally:
        if builder.progress_folder:
            shutil.rmtree(builder.progress_folder, ignore_errors=True)
    seconds = time.monotonic() - start
    summarize(builder, seconds)
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
    cli.log(
        PROG,
        f"done: {total:,} examples, {total_bytes / max(total, 1):.0f} bytes each, in {seconds:.1f} s "
        f"({total / seconds:,.0f} seq/s) -> {builder.data_dir}",
    )


if __name__ == "__main__":
    raise SystemExit(cli.run_main(PROG, main))
