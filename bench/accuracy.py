"""python -m bench accuracy [--configs default,seed] [--target 0.995]

Wall time to the target test accuracy: for each config, generates its dataset
(pipeline.generate with the config's counts), trains it (python -m trainer.task, start-up
included, as the tutorial's own time was measured; BENCHMARKS.md) and evaluates the exported
SavedModel on the test split (python -m trainer.evaluate). Ends with one JSON line;
seed_over_default is how many times longer the tutorial's recipe takes than configs/default.yaml.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

from pipeline import cli
from trainer import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
    parser = cli.ArgumentParser(prog="bench accuracy", description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="default,seed", help="Comma-separated names in configs/.")
    parser.add_argument("--target", type=float, default=0.995)
    parser.add_argument("--work", default=None, help="Folder for data and models (default: a temporary one).")
    return parser.parse_args(argv)


def timed(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, *command], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def run_config(name: str, work: str) -> dict:
    path = os.path.join(REPO, "configs", f"{name}.yaml")
    config = config_lib.load(path)
    data_dir, model_dir = os.path.join(work, name, "data"), os.path.join(work, name, "model")
    counts = [f"--{key}={config[key]}" for key in ("size", "num_train", "num_validation", "num_test")]
    generate_s = timed(["-m", "pipeline.generate", f"--data_dir={data_dir}", f"--seed={config['data_seed']}", *counts])
    train_s = timed(["-m", "trainer.task", "--config", path, "--data_dir", data_dir, "--model_dir", model_dir])
    evaluate_s = timed(["-m", "trainer.evaluate", "--model_dir", model_dir, "--data_dir", data_dir])
    with open(os.path.join(model_dir, "metrics.json")) as file:
        metrics = json.load(file)
    with open(os.path.join(model_dir, "history.json")) as file:
        history = json.load(file)
    return {
        "trained_sequences": config["epochs"] * (config["steps_per_epoch"] or 0) * config["batch_size"],
        "generate_s": round(generate_s, 1),
        "train_s": round(train_s, 1),
        "evaluate_s": round(evaluate_s, 1),
        "test_examples": metrics["examples"],
        "test_accuracy": metrics["accuracy"],
        "test_loss": round(metrics["loss"], 5),
        "validation_accuracy_by_epoch": history.get("val_accuracy"),
    }


def main(argv):
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        work = args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_accuracy_"))
        return measure(args, work)


def measure(args, work: str) -> int:
    results = {"benchmark": "accuracy", "target": args.target, "cpus": os.cpu_count(), "configs": {}}
    for name in args.configs.split(","):
        print(f"bench accuracy: {name} ...", flush=True)
        figures = run_config(name.strip(), work)
        figures["reached_target"] = figures["test_accuracy"] >= args.target
        results["configs"][name] = figures
        print(f"  {name}: " + ", ".join(f"{key} {value}" for key, value in figures.items()), flush=True)
    configs = results["configs"]
    if "default" in configs and "seed" in configs:
        results["seed_over_default"] = round(configs["seed"]["train_s"] / configs["default"]["train_s"], 3)
    print(json.dumps(results))
    return 0
