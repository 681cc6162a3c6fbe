"""Breaks the code on purpose, one break at a time, and runs the tests that must catch it.

    bash scripts/mutants.sh                 # every break (tens of minutes on 2 cores)
    bash scripts/mutants.sh export_replaces_anything predict_always_right   # some of them
    bash scripts/mutants.sh --list          # the breaks and their tests

Each break is a replacement in one file of a scratch copy of this working tree (the repository itself is never
touched); a test that still passes with the break in place holds nothing. The datasets and runs the tests start
from are made once, by the unbroken code, and shared by every run (tests/conftest.py, SHARED_FIXTURES). Prints one
line per break, then a table for docs/testing.md; exits 1 when a break went unnoticed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.environ.get("PYTHON") or os.path.join(REPO, ".venv", "bin", "python")


@dataclasses.dataclass(frozen=True)
class Break:
    name: str
    promise: str  # what the docs say, that the break undoes
    path: str
    replacements: tuple[tuple[str, str], ...]  # (text found exactly once, its replacement)
    tests: tuple[str, ...]  # pytest arguments: node ids, or a file and -k EXPRESSION


def swap(old: str, new: str) -> tuple[tuple[str, str], ...]:
    return ((old, new),)


GEN, EVERY = "tests/test_generate.py", "tests/test_errors_every_command.py"
BREAKS = [
    # The issue's own list (issue 27).
    Break("shard_limit_removed", "a split needing more than 1,000,000 shards is refused", "pipeline/generate.py",
          swap("if shards > MAX_SHARDS_PER_SPLIT:", "if False:"), (GEN, "-k", "unknown_flags and metadata")),
    Break("predict_always_right", "predict prints the model's class and probability for each video",
          "trainer/predict.py", swap('predicted = f"Predicted: {class_name.capitalize()}"',
                                     'predicted = "Predicted: Right"'),
          ("tests/test_export.py::test_predict_prints_for_each_video_the_saved_models_probability_and_class",)),
    Break("predict_exits_0_on_a_broken_pipe", "predict exits 141 when its reader goes away", "trainer/predict.py",
          swap("return cli.interrupted_exit(signal.SIGPIPE)", "return 0"), ("tests/test_predict.py", "-k", "141")),
    Break("ctrl_c_not_a_stop_request", "Ctrl-C mid-training saves a checkpoint and exits 130", "trainer/preemption.py",
          swap("STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)", "STOP_SIGNALS = (signal.SIGTERM,)"),
          ("tests/test_faults_training.py", "-k", "ctrl_c and one_device")),
    # Nothing deleted that the command did not write.
    Break("export_replaces_anything", "trainer.export replaces only an earlier export of the same run",
          "trainer/export.py", swap("    problem = replace_problem(export_dir, model_dir)\n    if problem:",
                                    "    problem = None\n    if problem:"),
          (EVERY, "-k", "export and (occupied or data or checkpoints)")),
    Break("export_into_the_model_dir", "--export_dir the model_dir itself is refused", "trainer/export.py",
          swap("    if run_identity(export_dir) == run_identity(model_dir):", "    if False:"),
          (EVERY, "-k", "export and model and not checkpoints and not damaged and not missing")),
    Break("task_replaces_a_users_export_folder", "a run whose export/ holds a user's file is refused before it trains",
          "trainer/task.py", swap("problem = export.replace_problem(paths.export, paths.model_dir)", "problem = None"),
          ("tests/test_export.py", "-k", "before_it_trains")),
    Break("generate_deletes_a_users_file", "a damaged build holding other files is refused, nothing deleted",
          "pipeline/generate.py", swap("        if others:  # rebuilding", "        if False:  # rebuilding"),
          ("tests/test_faults_generate.py", "-k", "no_build_writes")),
    Break("generate_clears_any_incomplete_folder", "only TFDS's and generate's own incomplete.* folders are cleared",
          "pipeline/generate.py", swap("if contract.INCOMPLETE_FOLDER.fullmatch(name):",
                                       'if name.startswith("incomplete."):'),
          ("tests/test_faults_generate.py::test_a_damaged_build_is_refused_by_readers_and_rebuilt_by_generate"
           "[shard deleted]",)),
    Break("task_removes_any_partial_name", "a run removes only its own half-written files", "trainer/files.py",
          swap("if outputs.is_partial(name):", "if PARTIAL in name:"), ("tests/test_files.py", "-k", "killed_run")),
    # Tests that could not fail before (issue 27, item 1).
    Break("beam_workers_left_running", "Ctrl-C or SIGTERM stops generate's Beam workers", "pipeline/local_runner.py",
          swap("            kill(workers)\n", "            workers = []\n"),
          ("tests/test_faults_generate.py", "-k", "ctrl_c_or_sigterm and SIGTERM")),
    Break("peer_wait_ten_times_too_long", "a worker gives up after peer_wait_seconds", "trainer/preemption.py",
          swap("deadline = time.monotonic() + peer_wait_seconds",
               "deadline = time.monotonic() + 10 * peer_wait_seconds"),
          ("tests/test_scale_out_training.py", "-k", "never_starts")),
    Break("progress_left_in_tmpdir", "make run writes only into its folder (and the libraries' own files in HOME)",
          "pipeline/generate.py",
          (('progress_folder = tempfile.mkdtemp(prefix="incomplete.progress-", dir=config_folder)',
            'progress_folder = tempfile.mkdtemp(prefix="incomplete.progress-")'),
           ("            shutil.rmtree(progress_folder, ignore_errors=True)", "            pass")),
          ("tests/test_e2e_run.py", "-k", "whole_run")),
    Break("export_leaves_its_partial_folder", "an export stopped by SIGTERM leaves nothing", "trainer/export.py",
          swap("    except BaseException:\n        remove_tree(partial)\n        raise\n    return export_dir",
               "    except BaseException:\n        raise\n    return export_dir"),
          (EVERY, "-k", "export and SIGTERM")),
    # Promises that had no test (item 2).
    Break("dask_failure_not_one_line", "workers that keep dying end the job in one line, exit 1",
          "pipeline/generate.py",
          swap('return type(error).__module__.split(".")[0] == "distributed" or isinstance(error, (OSError, '
               "TimeoutError))", "return False"),
          ("tests/test_scale_out_dask.py", "-k", "keep_dying")),
    Break("scheduler_lost_not_the_clusters", "a scheduler lost mid-build is the cluster's fault, said in one line",
          "pipeline/generate.py",
          swap("if dask and (cluster_failure(error) or isinstance(error, dataset_builder.ShardsMissingError)):",
               "if dask and cluster_failure(error):"),
          ("tests/test_scale_out_dask.py", "-k", "scheduler_lost")),
    Break("different_checkpoints_not_noticed", "workers that find different checkpoints are stopped",
          "trainer/train.py",
          swap("if total[0] != self.workers * step or total[1] != self.workers * step * step:", "if False:"),
          ("tests/test_scale_out_training.py", "-k", "different_checkpoints")),
    Break("no_collective_timeout", "collective_timeout_seconds bounds the wait for a peer that hangs",
          "trainer/distribution.py",
          swap("return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)",
               "return tf.distribute.MultiWorkerMirroredStrategy()"),
          ("tests/test_scale_out_training.py", "-k", "hangs")),
    Break("dispatcher_regained_unsaid", "a service worker says when it regains its dispatcher",
          "trainer/data_service.py",
          swap('cli.log(PROG, f"the dispatcher at {host}:{port} answers again")', "pass"),
          ("tests/test_scale_out_training.py", "-k", "loses_and_regains")),
    Break("up_line_twice", "a server's 'up' line comes once where stdout and stderr are one file",
          "trainer/data_service.py",
          swap("if not sys.stdout.isatty() and not same_file(sys.stdout, sys.stderr):",
               "if not sys.stdout.isatty():"),
          ("tests/test_scale_out_training.py", "-k", "loses_and_regains")),
    # Every wait ends on SIGTERM and Ctrl-C (item 3).
    Break("stop_signal_unseen_inside_tensorflow", "a trainer waiting inside TensorFlow stops on SIGTERM or Ctrl-C",
          "trainer/preemption.py", swap("        self._watch_wakeup_fd()\n", ""),
          ("tests/test_preemption.py", "-k", "inside_tensorflow")),
    Break("service_wait_unbounded", "a trainer waiting for a service worker stops on Ctrl-C, in one line",
          "trainer/preemption.py", swap("        self._watch_wakeup_fd()\n", ""),
          ("tests/test_scale_out_training.py", "-k", "service_worker")),
    Break("stuck_command_unbounded", "every command ends within 30 s of a stop signal", "pipeline/cli.py",
          swap("    with stuck_waits_end(prog):", "    with contextlib.nullcontext():"),
          ("tests/test_cli.py", "-k", "stuck")),
    # The defects of issue 27's list (item 4).
    Break("runner_typo_accepted", "a --runner Beam does not know is refused before anything is written",
          "pipeline/beam_options.py", swap("    check_runner(beam_args)\n", ""),
          ("tests/test_beam_options.py", "-k", "refused")),
    Break("dry_run_values_accepted", "--dry_run takes True or False", "pipeline/beam_options.py",
          swap("    check_dry_run(beam_args)\n", ""), ("tests/test_beam_options.py", "-k", "refused")),
    Break("dry_run_false_is_true_to_beam", "--dry_run=False is no dry run, for Beam's runners too",
          "pipeline/beam_options.py",
          swap("beam_args = without_false_dry_run(with_aliases_resolved(beam_args))",
               "beam_args = with_aliases_resolved(beam_args)"),
          ("tests/test_beam_options.py", "-k", "switch")),
    Break("prism_fetched_after_writing", "PrismRunner's binary is fetched before anything is written",
          "pipeline/generate.py", swap("    beam_options.check_runner_binary(options)\n", ""),
          (GEN, "-k", "unknown_flags and Prism")),
    Break("job_server_traceback", "a runner whose job server cannot be fetched is one line, exit 2",
          "pipeline/generate.py", swap("        if runner_could_not_start(error):", "        if False:"),
          ("tests/test_faults_generate.py", "-k", "job_server")),
    Break("show_out_folder_traceback", "pipeline.show refuses an --out that is a folder", "pipeline/show.py",
          swap("    if os.path.isdir(args.out):", "    if False:"), (EVERY, "-k", "a_folder")),
    Break("object_store_traceback", "an unreachable object store is one line, exit 2", "pipeline/cli.py",
          swap('    if not path or "://" not in path:\n        return\n    quiet_tensorflow()',
               "    return\n    quiet_tensorflow()"),
          (EVERY, "-k", "bucket")),
    Break("predict_shape_as_read", "predict names the shape the file holds", "trainer/predict.py",
          swap('f"--input {path}: videos of shape {list(videos.given_shape)}; give',
               'f"--input {path}: videos of shape {list(header.shape)}; give'),
          (EVERY, "-k", "no_channel")),
    Break("export_in_use_said_empty", "trainer.export on a run before its first checkpoint says it is in use",
          "trainer/export.py",
          swap("    # A live run's hold first: a run still before its first checkpoint is in use, not empty.\n"
               "    model_dir_lock.refuse_if_held(args.model_dir)\n", ""),
          ("tests/test_model_dir_lock.py", "-k", "first_checkpoint")),
    Break("stopped_run_told_to_train", "evaluate and predict advise trainer.export for a stopped run",
          "trainer/evaluate.py", swap("    if outputs.has_checkpoint(paths):", "    if False:"),
          (EVERY, "-k", "stopped_model or exported_model")),
    Break("show_reads_before_checking", "a refusal is its one line alone", "pipeline/show.py",
          swap("    builder = open_split(folder, args.split)\n",
               '    cli.log(PROG, f"reading {args.num} {args.split} sequences from {folder}")\n'
               "    builder = open_split(folder, args.split)\n"),
          ("tests/test_show.py", "-k", "bad_show_flags")),
    Break("show_fewer_unsaid", "show says when a split holds fewer than --num", "pipeline/show.py",
          swap('whole = f" (all it holds: --num {args.num} is more)" if args.num > held else ""', 'whole = ""'),
          ("tests/test_show.py", "-k", "more_sequences")),
    Break("logical_cpu_devices_unmirrored", "logical_cpu_devices: N mirrors over N CPU devices",
          "trainer/distribution.py",
          swap('devices = gpus or (cpus if config["logical_cpu_devices"] >= 2 else ["/cpu:0"])',
               'devices = gpus or ["/cpu:0"]'),
          ("tests/test_faults_training.py", "-k", "mirror_killed")),
    # A finished build is a no-op (item 5).
    Break("read_only_finished_build_refused", "a finished build on a read-only mount is a no-op",
          "pipeline/generate.py",
          swap("    if not dry_run:  # a dry run needs no network\n",
               "    check_data_dir(args.data_dir, create=False)\n    if not dry_run:  # a dry run needs no network\n"),
          ("tests/test_faults_generate.py", "-k", "read_only")),
    # Promises older than issue 27, held by quick tests.
    Break("other_settings_overwritten", "a folder holding the dataset built with other settings is refused",
          "pipeline/generate.py", swap("    if found != wanted:\n", "    if False:\n"),
          (EVERY, "-k", "generate and num_validation")),
    Break("free_space_unchecked", "a build too big for the free space is refused before writing",
          "pipeline/generate.py", swap("    if free < needed + DISK_MARGIN_BYTES:", "    if False:"),
          (EVERY, "-k", "generate and full")),
    Break("closest_flag_unsaid", "an unknown flag is refused naming the closest known one", "pipeline/beam_options.py",
          swap("close = difflib.get_close_matches(flag, own_flags + beam_flags(), n=1, cutoff=0.6)", "close = []"),
          ("tests/test_beam_options.py", "-k", "refused")),
    Break("show_num_unbounded", "pipeline.show draws at most 100 sequences", "pipeline/show.py",
          swap("    if args.num > MAX_SEQUENCES:", "    if False:"), (EVERY, "-k", "show and num")),
    Break("held_model_dir_not_refused", "a model_dir a live run holds is refused, naming the holder",
          "trainer/model_dir_lock.py",
          swap("            raise in_use(model_dir, path) from None\n    finally:", "            pass\n    finally:"),
          ("tests/test_model_dir_lock.py", "-k", "before_anything")),
    Break("predict_pixels_unchecked", "an --input whose pixels are not 0 or 1 is refused", "trainer/predict.py",
          swap("        if not np.isin(batch, (0, 1)).all():", "        if False:"), (EVERY, "-k", "float")),
    Break("damaged_checkpoint_used", "a checkpoint whose files fail their checksums is not used",
          "trainer/checkpoints.py", swap("if files.sha256(path) != digest:", "if False:"),
          ("tests/test_checkpoints.py",)),
    Break("another_config_resumed", "a model_dir holding a run with another config is refused",
          "trainer/outputs.py", swap("changed = config_lib.differences(previous, config)", "changed = []"),
          (EVERY, "-k", "learning_rate")),
    Break("tf_config_task_type_unchecked", "a TF_CONFIG task type not in its cluster is refused",
          "trainer/distribution.py", swap("    if task_type not in jobs:", "    if False:"),
          ("tests/test_distribution.py",)),
    Break("confusion_matrix_of_expectations", "evaluate counts each example by expected and predicted class",
          "trainer/evaluate.py", swap("np.add.at(confusion, (expected, predicted), 1)",
                                      "np.add.at(confusion, (expected, expected), 1)"),
          ("tests/test_evaluate.py",)),
    Break("taken_port_unsaid", "a port in use is refused in one line", "trainer/data_service.py",
          swap("                if error.errno == errno.EADDRINUSE:", "                if False:"),
          ("tests/test_data_service.py",)),
    Break("start_up_chatter_shown", "TensorFlow's start-up lines are kept out of the commands' output",
          "pipeline/cli.py",
          swap("if line == ABSL_BEFORE_INIT or (minimum > 0 and CPU_FEATURE_ADVICE.match(line)):", "if False:"),
          ("tests/test_cli.py", "-k", "start_up")),
    Break("row_steps_of_two", "the generator follows SPEC.md: a row moves by at most one per frame",
          "pipeline/generator.py",
          swap("low = np.maximum(rows[:, t - 1] - 1, 0)", "low = np.maximum(rows[:, t - 1] - 2, 0)"),
          ("tests/test_generator.py",)),
    Break("lstm_of_49", "the model has SPEC.md's layers and 240,661 parameters at size 50", "trainer/model.py",
          swap("LSTM_UNITS = 50", "LSTM_UNITS = 49"), ("tests/test_model.py", "-k", "parameter_count")),
    # The same batches on any topology (issue 26).
    Break("every_pipeline_reads_every_stream", "each input pipeline reads its own share of the split's streams",
          "trainer/input_pipeline.py", swap("    return range(pipeline_id * share, (pipeline_id + 1) * share)",
                                            "    return range(streams)"),
          ("tests/test_input_pipeline.py", "-k", "any_number_of_pipelines or four_input_pipelines")),
    Break("stream_passes_endless", "training skipping a damaged shard goes on with what is left",
          "trainer/input_pipeline.py", swap("return tf.data.Dataset.range(passes).flat_map(",
                                            "return tf.data.Dataset.counter().flat_map("),
          ("tests/test_input_pipeline.py", "-k", "cut_short")),
    Break("validation_shares_overlap", "every input pipeline validates its own part of the same first records",
          "trainer/input_pipeline.py", swap("records = read_range(info, pipeline_id * share, (pipeline_id + 1) * share",
                                            "records = read_range(info, 0, share"),
          ("tests/test_input_pipeline.py", "-k", "validates_its_part")),
    Break("service_pieces_in_arrival_order", "batches fed by the tf.data service are the run's own, in order",
          "trainer/input_pipeline.py", swap("        order = tf.argsort(places)\n",
                                            "        order = tf.range(tf.size(places))\n"),
          ("tests/test_input_pipeline.py", "-k", "whoever_sent_first")),
    Break("service_flag_ignored", "a run given --tf_data_service trains on the batches its service workers make",
          "trainer/train.py", swap("            if self.data_service:\n                address = ",
                                   "            if False:\n                address = "),
          ("tests/test_scale_out_topology.py", "-k", "tf_data_service")),
    Break("service_restart_unchecked", "a service worker that restarted mid-run stops the run in one line",
          "trainer/input_pipeline.py", swap("tf.debugging.Assert(tf.equal(step, due[worker]), [restarted]),", ""),
          ("tests/test_input_pipeline.py", "-k", "restarted")),
    Break("workers_not_sharing_the_streams_run", "workers that cannot share input_streams evenly are refused",
          "trainer/task.py", swap('config_lib.check_input_pipelines(config["input_streams"], cluster.size if cluster '
                                  'else 1, "workers")', "None"),
          ("tests/test_task.py", "-k", "cannot_share_the_input_streams")),
    Break("topology_change_unsaid", "a resume on another topology says so, from what to what",
          "trainer/checkpoints.py", swap("elif manifest.get(\"topology\") and topology and", "elif False and"),
          ("tests/test_checkpoints.py", "-k", "another_topology")),
    Break("older_checkpoint_refused", "a checkpoint written before input_streams still resumes",
          "trainer/checkpoints.py", swap("older = ORDER_KEY not in manifest[\"config\"]", "older = False"),
          ("tests/test_checkpoints.py", "-k", "before_input_streams")),
    Break("input_streams_changed_on_resume", "another input_streams is another run: refused on a resume",
          "trainer/config.py", swap("RUNTIME_KEYS = {\n", "RUNTIME_KEYS = {\n    \"input_streams\",\n"),
          ("tests/test_checkpoints.py", "-k", "another_number_of_input_streams")),
    Break("batch_digest_of_one_example", "the log's batch digest covers every example of the global batch",
          "trainer/train.py", swap("tf.reduce_sum(tf.cast(hashes % 2**HASH_BITS, tf.float64)),",
                                   "tf.cast(hashes[0] % 2**HASH_BITS, tf.float64),"),
          ("tests/test_train.py", "-k", "digest")),
    Break("ray_max_failures_ignored", "past --max_failures: one line naming each failed worker, exit 1",
          "trainer/ray_job.py",
          swap("FailureConfig(max_failures=self.args.max_failures)", "FailureConfig(max_failures=3)"),
          ("tests/test_scale_out_ray.py", "-k", "max_failures")),
]  # fmt: skip

# Made by the unbroken code before any break: every session fixture the breaks' tests start from.
PRIME = [
    ("tests/test_show.py", "-k", "more_sequences or bad_show_flags"),
    (EVERY, "-k", "export and occupied"),
]


def working_tree_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    return [path for path in listed.splitlines() if os.path.isfile(os.path.join(REPO, path))]


def copy_tree(scratch: str):
    for path in working_tree_files():
        os.makedirs(os.path.dirname(os.path.join(scratch, path)), exist_ok=True)
        shutil.copy2(os.path.join(REPO, path), os.path.join(scratch, path))


def pytest(scratch: str, fixtures: str, tests, timeout: float) -> tuple[int, str]:
    env = {**os.environ, "MOVING_LINE_SHARED_FIXTURES": fixtures, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [PYTHON, "-m", "pytest", "-q", "-x", "-p", "no:randomly", "-o", "addopts=-p no:cacheprovider", *tests]
    try:
        ran = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"still running after {timeout:.0f} s"
    lines = (ran.stdout + ran.stderr).strip().splitlines()
    return ran.returncode, lines[-1] if lines else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="Breaks to make (default: all).")
    parser.add_argument("--list", action="store_true", help="List the breaks and their tests, and make none.")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds for one break's tests (default 900).")
    args = parser.parse_args(argv)
    chosen = [item for item in BREAKS if not args.names or item.name in args.names]
    unknown = set(args.names) - {item.name for item in BREAKS}
    if unknown:
        print(f"mutants: error: no break named {', '.join(sorted(unknown))} (--list lists them)", file=sys.stderr)
        return 2
    if args.list:
        for item in chosen:
            print(f"{item.name}: {item.path}; {' '.join(item.tests)}")
        return 0
    scratch, fixtures = tempfile.mkdtemp(prefix="mutants-"), tempfile.mkdtemp(prefix="mutants-fixtures-")
    results = []
    try:
        copy_tree(scratch)
        for tests in PRIME:
            code, last = pytest(scratch, fixtures, tests, args.timeout)
            if code != 0:
                print(f"mutants: error: the unbroken code fails {' '.join(tests)}: {last}", file=sys.stderr)
                return 1
        for item in chosen:
            path = os.path.join(scratch, item.path)
            with open(path) as file:
                original = file.read()
            broken = original
            for old, new in item.replacements:
                if broken.count(old) != 1:
                    raise SystemExit(f"mutants: error: {item.name}: {old!r} is not found exactly once in {item.path}")
                broken = broken.replace(old, new)
            with open(path, "w") as file:
                file.write(broken)
            started = time.monotonic()
            try:
                code, last = pytest(scratch, fixtures, item.tests, args.timeout)
            finally:
                with open(path, "w") as file:
                    file.write(original)
            caught = code in (1, 124)  # tests failed, or still running at the timeout (a wait that never ends)
            results.append((item, caught, time.monotonic() - started, last))
            print(f"{'caught' if caught else 'NOT CAUGHT'}: {item.name} ({time.monotonic() - started:.0f} s): {last}",
                  flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(fixtures, ignore_errors=True)
    print("\n| break | promise | tests | caught |\n|---|---|---|---|")
    for item, caught, seconds, _ in results:
        print(f"| `{item.name}` ({item.path}) | {item.promise} | `{' '.join(item.tests)}` | "
              f"{'yes' if caught else '**no**'}, {seconds:.0f} s |")  # fmt: skip
    return 0 if all(caught for _, caught, _, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
