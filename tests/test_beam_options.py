"""pipeline.beam_options in-process: Beam's flags told from typos through Beam's public options API, runner names."""

import pytest

from pipeline import beam_options, cli

OWN = ["--data_dir", "--num_train", "--file_format"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        ["--project", "p", "--region=r", "--temp_location=gs://b/t", "--experiments=use_runner_v2", "--dry_run=True"],
        ["--runner=DaskRunner", "--dask_client_address", "tcp://127.0.0.1:8786", "--dask_connection_timeout=3"],
        ["--runner", "DaskRunner", "--dask_npartitions=4"],
        ["--runner=direct", "--dry_run=false"],  # Beam's own leniency about runner names
        ["--runner=apache_beam.runners.direct.direct_runner.BundleBasedDirectRunner"],
        ["--runner=PortableRunner", "--job_endpoint=localhost:8099"],
    ],
)
def test_beams_own_options_pass_the_check(args):
    beam_options.check_beam_args(args, OWN)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num_trian", "300"], "unknown flag --num_trian (neither this command's nor a Beam pipeline option); "
         "did you mean --num_train?"),
        (["--direct_num_worker=2"], "did you mean --direct_num_workers?"),
        (["--runner=DaskRunner", "--dask_clinet_address=tcp://h:1"], "did you mean --dask_client_address?"),
        (["--dask_client_address=tcp://h:1"], "--dask_client_address is an option of the Dask runner; add "
         "--runner=DaskRunner"),
        (["--runner=FnApiRunner", "--direct_num_workers=many"], "Beam option: argument --direct_num_workers: invalid "
         "int value: 'many'"),
        (["stray"], "unexpected argument 'stray'"),
        (["--dry_run=True", "stray"], "unexpected argument 'stray'"),
        # Runner names Beam would refuse only once the build has started, and --dry_run values it would take as true.
        (["--runner=DaskRunnr"], "--runner DaskRunnr is not a Beam runner; did you mean DaskRunner?"),
        (["--runner", "Dataflow_Runner"], "--runner Dataflow_Runner is not a Beam runner; did you mean DataflowRun"),
        (["--runner=apache_beam.runners.dask.dask_runner.DaskRunnr"], "no such runner class"),
        (["--runner=PortableRunner"], "--runner=PortableRunner needs --job_endpoint"),
        *((["--dry_run", value], f"--dry_run takes True or False, got {value!r}") for value in ("yes", "on", "no")),
        (["--dry_run=bogus"], "--dry_run takes True or False, got 'bogus'"),
    ],
)  # fmt: skip
def test_anything_else_is_refused_with_the_closest_flag(args, message):
    with pytest.raises(cli.UsageError) as refused:
        beam_options.check_beam_args(args, OWN)
    assert message in str(refused.value)


def test_daskrunner_is_beams_dask_runner_with_one_shard_group_a_task_unless_partitions_are_given():
    options = beam_options.make_options(["--runner=DaskRunner", "--dask_client_address=tcp://127.0.0.1:1"])
    assert beam_options.is_dask(options) and beam_options.runner_name(options) == beam_options.DASK_RUNNER
    assert beam_options.dask_address(options) == "tcp://127.0.0.1:1"
    assert options.get_all_options()["partition_size"] == 1
    given = beam_options.make_options(["--runner", "DaskRunner", "--dask_npartitions=3"])
    assert given.get_all_options()["npartitions"] == 3 and given.get_all_options()["partition_size"] is None
    assert beam_options.local_workers(options) is None


def test_the_default_is_the_fnapirunner_with_a_worker_process_per_core():
    import os

    options = beam_options.make_options([])
    assert beam_options.runner_name(options) == "FnApiRunner"
    assert beam_options.local_workers(options) == os.cpu_count()
    assert not beam_options.is_dask(options) and not beam_options.is_dry_run(options)


@pytest.mark.parametrize(
    ("value", "dry"), [("True", True), ("true", True), ("1", True), ("False", False), ("0", False)]
)
def test_dry_run_is_a_switch_that_beams_runners_read_as_this_command_does(value, dry):
    from apache_beam.options.pipeline_options import TestOptions

    options = beam_options.make_options([f"--dry_run={value}"])
    assert beam_options.is_dry_run(options) is dry
    assert bool(options.view_as(TestOptions).dry_run) is dry  # Beam's runners test its truth: "False" would be true
