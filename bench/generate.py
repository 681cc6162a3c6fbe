"""Generation speed, side by side: the tutorial's loop, our generator alone, the whole Beam job.

    python -m bench generate [--num 100000] [--size 50]

The Beam job is `python -m pipeline.generate` with its defaults (FnApiRunner, one process
per core) into a temporary folder; its peak memory is summed over all its processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib

from bench.memory import PeakTreeMemory
from bench.tutorial_generator import generate_examples
from pipeline import generator


def rate(function, count: int) -> float:
    start = time.perf_counter()
    function()
    return count / (time.perf_counter() - start)


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            model = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()}"


def beam_job(num: int, size: int) -> dict:
    validation = test = max(1, num // 20)
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as data_dir:
        command = [
            sys.executable, "-m", "pipeline.generate", f"--data_dir={data_dir}", f"--size={size}",
            f"--num_train={num}", f"--num_validation={validation}", f"--num_test={test}",
        ]  # fmt: skip
        start = time.perf_counter()
        # Its progress lines go straight to our stderr.
        process = subprocess.Popen(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        with PeakTreeMemory(process.pid) as peak:
            process.wait()
        seconds = time.perf_counter() - start
        if process.returncode != 0:
            raise RuntimeError(f"pipeline.generate failed with exit code {process.returncode}")
        folder = os.path.join(data_dir, "moving_line", f"size_{size}", "1.0.0")
        files = [name for name in os.listdir(folder) if ".tfrecord" in name]
        disk = sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    total = num + validation + test
    return {
        "examples": total,
        "seconds": round(seconds, 1),
        "seq_per_s": round(total / seconds),
        "bytes_per_seq_on_disk": round(disk / total, 1),
        "shards": len(files),
        "peak_memory_mb_all_processes": round(peak.bytes / 2**20),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench generate")
    parser.add_argument("--num", type=int, default=100_000, help="Training examples for the Beam job.")
    parser.add_argument("--size", type=int, default=50)
    args = parser.parse_args(argv)
    size = args.size
    print(f"bench generate: size {size} on {machine()}", flush=True)

    tutorial_count = 300
    tutorial = rate(lambda: generate_examples(size, tutorial_count), tutorial_count)
    tutorial_bytes = generate_examples(size, 1)[0].nbytes
    print(f"  tutorial loop:      {tutorial:9,.0f} seq/s, {tutorial_bytes / 2**20:.2f} MiB per sequence in memory")

    chunk, chunks = 256, 40
    ours = rate(lambda: [generator.generate(0, "train", i * chunk, chunk, size) for i in range(chunks)], chunk * chunks)
    print(f"  our generator:      {ours:9,.0f} seq/s on one core ({ours / tutorial:.0f}x the tutorial)")

    videos = generator.generate(0, "train", 0, 500, size)["video"]
    compress = rate(lambda: [zlib.compress(video.tobytes()) for video in videos], len(videos))
    print(f"  zlib (TFDS level):  {compress:9,.0f} seq/s on one core (TFDS compresses each video this way)")

    print(f"  Beam job: {args.num:,} train + 5% validation + 5% test into TFRecords...", flush=True)
    job = beam_job(args.num, size)
    print(
        f"  Beam job:           {job['seq_per_s']:9,.0f} seq/s end to end ({job['seconds']} s, start-up included), "
        f"{job['bytes_per_seq_on_disk']} bytes/seq on disk, {job['shards']} shards, "
        f"peak {job['peak_memory_mb_all_processes']:,} MB over all processes"
    )
    figures = {
        "benchmark": "generate",
        "machine": machine(),
        "size": size,
        "tutorial_seq_per_s": round(tutorial),
        "tutorial_mib_per_seq_in_memory": round(tutorial_bytes / 2**20, 2),
        "generator_seq_per_s": round(ours),
        "zlib_seq_per_s_one_core": round(compress),
        "beam_job": job,
        "generator_over_tutorial": round(ours / tutorial, 1),
        "beam_job_over_tutorial": round(job["seq_per_s"] / tutorial, 1),
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
