"""Generation speed, side by side: the tutorial's loop, the generator, the encoder, the whole Beam job.

    python -m bench generate [--num 100000,1000000] [--size 50] [--baseline GIT_REF] [--formats tfrecord]
        [--repeats N]

Each stage on one core (CPU time): the tutorial's per-pixel loop; the generator drawing paths
alone and drawing the 125 kB videos too; the zlib encoder from the drawn videos (one video at a
time, as the previous release did) and from the paths (a batch at a time, as the Beam workers do),
and zlib itself; the serialized records. Then the whole job, `python -m pipeline.generate` with
its defaults (FnApiRunner, one process per core), for each --num training examples plus 5%
validation and 5% test, start-up included, into a temporary folder: seconds, sequences per second,
CPU utilisation (CPU time of all its processes over the wall time; 200% is two busy cores), peak
memory of all its processes, bytes per sequence on disk and shards. --baseline GIT_REF runs the
same job from that commit too (exported with `git archive` into a temporary folder), alternating
with this checkout, so both see the same machine load; --repeats N runs each job N times, alternating,
and reports each figure's median. Ends with one JSON line.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

from bench.memory import PeakTreeMemory
from bench.tutorial_generator import generate_examples
from pipeline import cli, contract, generator, records, video_codec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_rate(function, count: int) -> float:
    start = time.process_time()
    function()
    return count / (time.process_time() - start)


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            model = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()}"


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def beam_job(code: str, num: int, size: int, formats: str) -> dict:
    """Runs pipeline.generate from the checkout in `code` into a temporary folder; its figures."""
    validation = test = max(1, num // 20)
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as work:
        data_dir = os.path.join(work, "data")
        command = [
            sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={size}",
            f"--num_train={num}", f"--num_validation={validation}", f"--num_test={test}",
        ]  # fmt: skip
        if formats != "tfrecord":
            command.append(f"--file_format={formats}")
        # Its own temporary folder: older releases leave empty ones behind.
        temporary = os.path.join(work, "tmp")
        os.mkdir(temporary)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": code, "TMPDIR": temporary}
        cpu_before, start = children_cpu_seconds(), time.perf_counter()
        process = subprocess.Popen(
            command, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        with PeakTreeMemory(process.pid) as peak:
            _, stderr = process.communicate()
        seconds = time.perf_counter() - start
        cpu = children_cpu_seconds() - cpu_before
        if process.returncode != 0:
            raise RuntimeError(f"pipeline.generate in {code} failed ({process.returncode}): {stderr[-2000:]}")
        # The version folder is whatever that checkout builds: no version is assumed here.
        (folder,) = glob.glob(os.path.join(contract.config_folder(data_dir, size), "*", contract.INFO_FILE))
        folder = os.path.dirname(folder)
        on_disk = {}
        for name in os.listdir(folder):
            for file_format in contract.FILE_FORMATS:
                if f".{file_format}-" in name:
                    on_disk.setdefault(file_format, []).append(os.path.getsize(os.path.join(folder, name)))
    total = num + validation + test
    figures = {
        "examples": total,
        "seconds": round(seconds, 1),
        "seq_per_s": round(total / seconds),
        "cpu_percent": round(100 * cpu / seconds),
        "peak_memory_mb_all_processes": round(peak.bytes / 2**20),
        "shards": len(on_disk.get("tfrecord", on_disk.get("array_record", []))),
    }
    for file_format, sizes in on_disk.items():
        figures[f"{file_format}_bytes_per_seq"] = round(sum(sizes) / total, 1)
    return figures


def median_job(jobs: list[dict]) -> dict:
    """Each figure's median over the runs (the runs' own figures under "runs")."""
    median = {key: statistics.median(job[key] for job in jobs) for key in jobs[0]}
    median = {key: round(value, 1) if isinstance(value, float) else value for key, value in median.items()}
    return {**median, "runs": jobs} if len(jobs) > 1 else jobs[0]


def export_baseline(ref: str, folder: str) -> str:
    """The tree of commit `ref` of this repository, exported into folder."""
    archive = subprocess.run(["git", "-C", REPO, "archive", ref], capture_output=True, check=False)
    if archive.returncode != 0:
        raise cli.UsageError(f"--baseline {ref}: {archive.stderr.decode().strip() or 'git archive failed'}")
    subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
    return folder


def stages_as_workers_run_them(size: int) -> dict:
    """stages(size) in a process that keeps freed memory as pipeline.generate's workers do (glibc reads its
    tunables when a process starts)."""
    script = "import json, sys; from bench.generate import stages; print(json.dumps(stages(int(sys.argv[1]))))"
    env = {**os.environ, **records.MALLOC_ENVIRONMENT}
    result = subprocess.run(
        [sys.executable, "-c", script, str(size)], env=env, cwd=REPO, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"the stages failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def stages(size: int) -> dict:
    """Sequences per second of each stage on one core (CPU time)."""
    tutorial_count = 100 if size >= 32 else 300
    figures = {"tutorial_loop": cpu_rate(lambda: generate_examples(size, tutorial_count), tutorial_count)}
    chunk, chunks = 1024, 8
    figures["generator_paths"] = cpu_rate(
        lambda: [generator.make_paths(0, "train", i * chunk, chunk, size) for i in range(chunks)], chunk * chunks
    )
    small, small_chunks = 256, 4  # the drawn videos take 125 kB each at size 50
    figures["generator_videos"] = cpu_rate(
        lambda: [generator.generate(0, "train", i * small, small, size) for i in range(small_chunks)],
        small * small_chunks,
    )
    labels, rows = generator.make_paths(0, "train", 0, chunk, size)
    videos = generator.render(labels[:small], rows[:small])
    figures["zlib_level_6_from_videos"] = cpu_rate(lambda: [zlib.compress(video.tobytes()) for video in videos], small)
    figures["encoder_from_videos"] = cpu_rate(lambda: [video_codec.compress_video(video) for video in videos], small)
    figures["encoder_from_paths"] = cpu_rate(
        lambda: [video_codec.compress_paths(labels, rows) for _ in range(chunks)], chunk * chunks
    )
    figures["records_from_seeds"] = cpu_rate(
        lambda: [records.serialize_examples(0, "train", i * chunk, chunk, size) for i in range(chunks)],
        chunk * chunks,
    )
    return {name: round(value) for name, value in figures.items()}


def parse_args(argv):
    parser = cli.ArgumentParser(prog="bench generate", description=__doc__.split("\n")[0])
    parser.add_argument("--num", default="100000", help="Comma-separated training counts for the Beam job.")
    parser.add_argument("--size", type=cli.positive_int, default=contract.DEFAULT_SIZE)
    parser.add_argument("--baseline", default=None, help="A git commit or tag to run side by side (e.g. the release).")
    parser.add_argument("--formats", default="tfrecord", help="--file_format for this checkout's job.")
    parser.add_argument(
        "--repeats", type=cli.positive_int, default=1, help="Runs of each job, alternating; the median is reported."
    )
    args = parser.parse_args(argv)
    try:
        args.num = [int(num) for num in args.num.split(",")]
    except ValueError:
        parser.error(f"--num takes whole numbers separated by commas, got {args.num!r}")
    return args


def main(argv=None):
    args = parse_args(argv)
    size = args.size
    print(f"bench generate: size {size} on {machine()}; load {load()}", flush=True)
    per_stage = stages_as_workers_run_them(size)
    tutorial = per_stage["tutorial_loop"]
    for name, value in per_stage.items():
        print(f"  {name.replace('_', ' '):<26} {value:9,} seq/s on one core ({value / tutorial:,.1f}x the tutorial)")
    results = {"benchmark": "generate", "machine": machine(), "size": size, "one_core_seq_per_s": per_stage}
    results["jobs"] = []
    with tempfile.TemporaryDirectory(prefix="bench_generate_baseline_") as baseline_folder:
        checkouts = {"this": REPO}
        if args.baseline:
            checkouts = {f"baseline {args.baseline}": export_baseline(args.baseline, baseline_folder), **checkouts}
        for num in args.num:
            row = {"num_train": num, "load_before": load()}
            runs = {name: [] for name in checkouts}
            for repeat in range(args.repeats):
                for name, code in checkouts.items():
                    round_note = f" (round {repeat + 1} of {args.repeats})" if args.repeats > 1 else ""
                    print(f"  Beam job ({name}){round_note}: {num:,} train + 5% validation + 5% test...", flush=True)
                    formats = args.formats if name == "this" else "tfrecord"
                    runs[name].append(job := beam_job(code, num, size, formats))
                    print(
                        f"    {job['seq_per_s']:9,} seq/s end to end ({job['seconds']} s, start-up included), "
                        f"CPU {job['cpu_percent']}%, peak {job['peak_memory_mb_all_processes']:,} MB, "
                        + ", ".join(f"{key} {value}" for key, value in job.items() if key.endswith("bytes_per_seq"))
                        + f", {job['shards']} shards",
                        flush=True,
                    )
            for name, jobs in runs.items():
                row[name] = median_job(jobs)
                if len(jobs) > 1:
                    job = row[name]
                    print(
                        f"  {name}, median of {len(jobs)}: {job['seq_per_s']:,} seq/s ({job['seconds']} s), CPU "
                        f"{job['cpu_percent']}% (runs: {', '.join(str(run['cpu_percent']) for run in jobs)}), "
                        f"peak {job['peak_memory_mb_all_processes']:,} MB"
                    )
            if args.baseline:
                baseline = row[f"baseline {args.baseline}"]
                row["speedup"] = round(row["this"]["seq_per_s"] / baseline["seq_per_s"], 2)
                print(f"    this checkout: {row['speedup']}x the baseline's sequences per second")
            row["this_over_tutorial"] = round(row["this"]["seq_per_s"] / tutorial, 1)
            results["jobs"].append(row)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
