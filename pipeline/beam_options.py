"""Beam pipeline options for pipeline.generate: the defaults, runner names, Beam's own flags told from typos,
and the Dask cluster a run goes to."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import os

from pipeline import cli

LOCAL_RUNNERS = {None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
# Beam knows its DaskRunner only by this dotted name; users write the short one, as for Beam's other runners.
RUNNER_ALIASES = {"DaskRunner": DASK_RUNNER}
# How long pipeline.generate waits for a Dask scheduler that does not answer (--dask_connection_timeout overrides).
DASK_CONNECT_SECONDS = 10
# Dask runs each partition of a Create as one task: one shard group a partition, so each is a task of its own.
DASK_PARTITION_FLAGS = ("--dask_partition_size", "--dask_npartitions")
# Beam takes --dry_run as text and treats any non-empty text as true ("False" included): read here as a switch.
DRY_RUN_VALUES = {"true": True, "1": True, "false": False, "0": False}


def flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def runner_flag(beam_args: list[str]) -> str | None:
    """The runner named by --runner (either spelling: --runner=X or --runner X), aliases resolved."""
    for index, arg in enumerate(beam_args):
        if arg.startswith("--runner="):
            return RUNNER_ALIASES.get(arg.split("=", 1)[1], arg.split("=", 1)[1])
        if arg == "--runner" and index + 1 < len(beam_args):
            return RUNNER_ALIASES.get(beam_args[index + 1], beam_args[index + 1])
    return None


def with_aliases_resolved(beam_args: list[str]) -> list[str]:
    resolved = []
    for index, arg in enumerate(beam_args):
        if arg.startswith("--runner=") and arg.split("=", 1)[1] in RUNNER_ALIASES:
            arg = f"--runner={RUNNER_ALIASES[arg.split('=', 1)[1]]}"
        elif index and beam_args[index - 1] == "--runner" and arg in RUNNER_ALIASES:
            arg = RUNNER_ALIASES[arg]
        resolved.append(arg)
    return resolved


def flag_value(beam_args: list[str], flag: str) -> str | None:
    """The value given to flag (--flag=VALUE or --flag VALUE), the last one if given twice."""
    value = None
    for index, arg in enumerate(beam_args):
        if arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
        elif arg == flag and index + 1 < len(beam_args):
            value = beam_args[index + 1]
    return value


def check_runner(beam_args: list[str]):
    """A UsageError for a --runner that Beam does not know (before anything is written: Beam would fail only once
    the build has started), naming the closest known one."""
    from apache_beam.options.pipeline_options import StandardOptions

    name = runner_flag(beam_args)
    if name is None:
        return
    if "." in name:  # a runner class by its dotted name, as Beam takes it
        module, _, attribute = name.rpartition(".")
        try:
            found = hasattr(importlib.import_module(module), attribute)
        except ImportError:
            found = False
        if not found:
            raise cli.UsageError(f"--runner {name}: no such runner class; give a Beam runner's name, e.g. DirectRunner")
        return
    known = [*StandardOptions.KNOWN_RUNNER_NAMES, *RUNNER_ALIASES]
    # Beam's own leniency: any case, and "Direct" for "DirectRunner".
    if {name.lower(), name.lower() + "runner"} & {runner.lower() for runner in known}:
        if name.lower().removesuffix("runner") == "portable" and flag_value(beam_args, "--job_endpoint") is None:
            raise cli.UsageError("--runner=PortableRunner needs --job_endpoint (the address of a running job service)")
        return
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; Beam's runners: {', '.join(sorted(known))}"
    raise cli.UsageError(f"--runner {name} is not a Beam runner{hint}")


def check_dry_run(beam_args: list[str]):
    value = flag_value(beam_args, "--dry_run")
    if value is not None and value.lower() not in DRY_RUN_VALUES:
        raise cli.UsageError(f"--dry_run takes True or False, got {value!r}")


def without_false_dry_run(beam_args: list[str]) -> list[str]:
    """beam_args less a --dry_run that says false (which Beam, taking it as text, would count as true)."""
    value = flag_value(beam_args, "--dry_run")
    if value is None or DRY_RUN_VALUES[value.lower()]:
        return beam_args
    kept, skip = [], False
    for arg in beam_args:
        if skip:
            skip = False
        elif arg == "--dry_run":
            skip = True
        elif not arg.startswith("--dry_run="):
            kept.append(arg)
    return kept


def check_runner_binary(options):
    """A UsageError, before anything is written, when the runner needs a program it cannot get: Beam's Prism runner
    downloads its binary from GitHub on first use (the download, or the binary it found, is made ready here)."""
    if runner_name(options) not in ("PrismRunner", "apache_beam.runners.portability.prism_runner.PrismRunner"):
        return
    from apache_beam.runners.portability import prism_runner

    try:
        server = prism_runner.PrismJobServer(options)
        server.local_bin(server.path_to_binary())  # what the runner would do once the build has started
    except (RuntimeError, ValueError, OSError) as error:
        problem = " ".join(str(error).split())[:300]
        raise cli.UsageError(
            f"--runner=PrismRunner needs Beam's Prism binary, which it could not get ({problem}); drop --runner to "
            "build on Beam's FnApiRunner, which needs no download, or give --prism_location a local copy"
        ) from None


def uses_dask(beam_args: list[str]) -> bool:
    return runner_flag(beam_args) == DASK_RUNNER or any(arg.startswith("--dask_") for arg in beam_args)


def register_dask_options(beam_args: list[str]):
    """Beam registers the Dask options only when its dask_runner module is imported: import it for a Dask run."""
    if not uses_dask(beam_args):
        return
    try:
        import dask.distributed  # noqa: F401 - what Beam's DaskRunner needs; its own import hides the error
        from apache_beam.runners.dask import dask_runner  # noqa: F401 - registers DaskOptions
    except ImportError:
        raise cli.UsageError("--runner=DaskRunner needs Dask: pip install -e '.[dask]' (apache-beam[dask])") from None
    if runner_flag(beam_args) != DASK_RUNNER:
        flag = next(flag_name(arg) for arg in beam_args if arg.startswith("--dask_"))
        raise cli.UsageError(f"{flag} is an option of the Dask runner; add --runner=DaskRunner")


def parse_beam_options(beam_args: list[str]):
    """PipelineOptions of beam_args; a value Beam cannot parse is a UsageError (argparse would exit)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            options = PipelineOptions(beam_args)
            known = options.get_all_options()
    except SystemExit:  # argparse printed its usage and "PROG: error: MESSAGE"
        lines = captured.getvalue().strip().splitlines()
        message = lines[-1].split(" error: ", 1)[-1] if lines else "cannot be parsed"
        raise cli.UsageError(f"Beam option: {message}") from None
    return options, known


def beam_flags() -> list[str]:
    """Every flag of every registered pipeline option, as Beam's parser lists them in its usage."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    return cli.flags_in_usage(parsers[0])


def check_beam_args(beam_args: list[str], own_flags: list[str]):
    """Refuses anything that is neither one of our flags nor a Beam pipeline option, suggesting the closest."""
    register_dask_options(beam_args)
    check_runner(beam_args)
    check_dry_run(beam_args)
    options, known = parse_beam_options(beam_args)
    everything = options.get_all_options(retain_unknown_options=True)
    unknown = set(everything) - set(known)
    for index, arg in enumerate(beam_args):
        if not arg.startswith("-"):
            previous = beam_args[index - 1] if index else ""
            if not previous.startswith("--") or "=" in previous:
                raise cli.UsageError(f"unexpected argument {arg!r}; Beam options look like --name=value")
            continue
        flag = flag_name(arg)
        if flag.lstrip("-").replace("-", "_") in unknown or not flag.startswith("--"):
            close = difflib.get_close_matches(flag, own_flags + beam_flags(), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else "; see --help for this command's flags"
            raise cli.UsageError(f"unknown flag {flag} (neither this command's nor a Beam pipeline option){hint}")


def make_options(beam_args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    beam_args = without_false_dry_run(with_aliases_resolved(beam_args))
    if runner_flag(beam_args) is None:
        # FnApiRunner: Beam's local runner without the Prism download attempt, one worker process per core.
        beam_args = [
            "--runner=FnApiRunner",
            f"--direct_num_workers={os.cpu_count() or 1}",
            "--direct_running_mode=multi_processing",
            *beam_args,
        ]
    if runner_flag(beam_args) == DASK_RUNNER and not any(flag_name(arg) in DASK_PARTITION_FLAGS for arg in beam_args):
        beam_args = [*beam_args, "--dask_partition_size=1"]
    return PipelineOptions(beam_args)


def runner_name(options) -> str | None:
    return options.get_all_options().get("runner")


def is_dask(options) -> bool:
    return runner_name(options) == DASK_RUNNER


def is_dry_run(options) -> bool:
    """--dry_run=True: plan (and for Dataflow, build the whole job) without writing anything."""
    from apache_beam.options.pipeline_options import TestOptions

    return DRY_RUN_VALUES.get(str(options.view_as(TestOptions).dry_run).lower(), False)


def local_workers(options) -> int | None:
    """How many worker processes a local runner will use (None for a remote runner)."""
    from apache_beam.options.pipeline_options import DirectOptions

    if runner_name(options) not in LOCAL_RUNNERS:
        return None
    workers = options.view_as(DirectOptions).direct_num_workers
    return (os.cpu_count() or 1) if workers == 0 else max(1, workers or 1)


def dask_address(options) -> str | None:
    return options.get_all_options().get("address")


def dask_cluster_threads(options) -> int:
    """The worker threads of the Dask cluster the run goes to: asked of the scheduler at --dask_client_address
    (unreachable: a UsageError), or the cores here for the local cluster Beam starts without one."""
    address = dask_address(options)
    if not address:
        return os.cpu_count() or 1
    import logging

    from dask import distributed

    timeout = options.get_all_options().get("timeout") or DASK_CONNECT_SECONDS
    # distributed logs each failed attempt to connect before raising; the one line below says it.
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with distributed.Client(address, timeout=timeout, set_as_default=False) as client:
            threads = sum(client.nthreads().values())
    except (OSError, TimeoutError, ValueError) as error:
        problem = " ".join(str(error).split()) or type(error).__name__
        raise cli.UsageError(
            f"--dask_client_address {address}: no Dask scheduler answered ({problem}); start one "
            "(`dask scheduler`) or give the address it prints"
        ) from None
    finally:
        logger.setLevel(level)
    if not threads:
        raise cli.UsageError(
            f"--dask_client_address {address}: the Dask scheduler has no workers; start some (`dask worker {address}`)"
        )
    return threads


@contextlib.contextmanager
def local_dask_cluster(beam_args: list[str], options, workers: int):
    """The options to run with: for a Dask run without --dask_client_address, those of a Dask cluster started on
    this machine for the run (workers processes of one thread); the options as they are for any other run.

    Started and closed here rather than by Beam's DaskRunner, which would leave it open when the command ends.
    Its workers report a failing task to the command, which raises it; their own logs would only add noise."""
    if not is_dask(options):
        yield options
        return
    import logging

    # The client logs each failed attempt to reach a lost scheduler or worker; the command's last line says what
    # became of the job.
    client_logger = logging.getLogger("distributed.client")
    level = client_logger.level
    client_logger.setLevel(logging.CRITICAL)
    try:
        if dask_address(options):
            yield options
            return
        yield from _local_cluster(beam_args, workers)
    finally:
        client_logger.setLevel(level)


def _local_cluster(beam_args: list[str], workers: int):
    import logging

    from dask import distributed

    # ":0": the scheduler's HTTP server on a free port (it starts even without a dashboard, on 8787 by default,
    # and warns when another cluster has that port).
    with distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL
    ) as cluster:
        yield make_options([*beam_args, f"--dask_client_address={cluster.scheduler_address}"])
