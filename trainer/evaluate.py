"""Evaluate the exported model on a split: loss, accuracy and the confusion matrix.

    python -m trainer.evaluate --model_dir DIR --data_dir DIR [--split test] [--batch_size 256]

Loads the SavedModel in MODEL_DIR/export (what would be served), prints the figures and
writes them to MODEL_DIR/metrics.json (metrics_<split>.json for a split other than test).
"""

from __future__ import annotations

import argparse
import json
import os

from pipeline import cli

PROG = "trainer.evaluate"
# Keras clips probabilities the same way in binary_crossentropy.
EPSILON = 1e-7
# Examples per prediction batch when the trainer evaluates the model it trained.
EVALUATION_BATCH = 128


def evaluate(predict_probabilities, dataset, class_names) -> dict:
    """Runs predict_probabilities (uint8 video batch -> P(right) [batch]) over (video, label) batches."""
    import numpy as np

    confusion = np.zeros((2, 2), np.int64)  # rows: expected class, columns: predicted class
    loss_sum, count = 0.0, 0
    batches = iter(dataset)
    while True:
        with cli.interrupts_deferred():  # each batch read and predicted whole
            batch = next(batches, None)
            if batch is None:
                break
            video, label = batch
            probability = np.asarray(predict_probabilities(video), np.float64).reshape(-1)
        probability = np.clip(probability, EPSILON, 1 - EPSILON)
        expected = np.asarray(label).astype(np.int64).reshape(-1)
        predicted = (probability > 0.5).astype(np.int64)
        loss_sum += float(-np.sum(expected * np.log(probability) + (1 - expected) * np.log(1 - probability)))
        np.add.at(confusion, (expected, predicted), 1)
        count += len(expected)
    if count == 0:
        raise cli.UsageError("the split is empty; nothing to evaluate")
    return {
        "examples": count,
        "loss": loss_sum / count,
        "accuracy": float(np.trace(confusion)) / count,
        "errors": int(count - np.trace(confusion)),
        "confusion_matrix": {
            "class_names": list(class_names),
            "rows_expected_columns_predicted": confusion.tolist(),
        },
    }


def evaluate_trained_model(
    trained, builder, config: dict, split: str, model_dir: str, prog: str, model_path: str
) -> dict:
    """Loss, accuracy and confusion matrix of a trained Keras model (taking `video`) on a split: logged, and
    written to MODEL_DIR/metrics.json (metrics_<split>.json for a split other than test)."""
    from trainer import corrupt_data, input_pipeline
    from trainer import model as model_lib

    hint = "--set skip_corrupt_records=true"
    with corrupt_data.named_in_errors(builder, [split], hint):
        metrics = evaluate(
            model_lib.prediction_function(trained),
            input_pipeline.evaluation_dataset(builder, split, {**config, "batch_size": EVALUATION_BATCH}),
            builder.info.features["label"].names,
        )
    if config["skip_corrupt_records"]:
        metrics["skipped_records"] = corrupt_data.log_skipped(prog, builder, split, metrics["examples"])
    metrics = {"split": split, "model": model_path, "data": builder.data_dir, **metrics}
    for line in describe(metrics):
        cli.log(prog, line)
    write_metrics(metrics, metrics_path(model_dir, split))
    return metrics


def describe(metrics: dict) -> list[str]:
    from trainer.training_log import count

    names = metrics["confusion_matrix"]["class_names"]
    matrix = metrics["confusion_matrix"]["rows_expected_columns_predicted"]
    width = max(len(name) for name in names) + 2
    lines = [
        f"{metrics['split']}: {count(metrics['examples'], 'example')}, loss {metrics['loss']:.5f}, "
        f"accuracy {metrics['accuracy']:.4%} ({metrics['errors']} wrong)",
        "confusion matrix (rows: expected, columns: predicted):",
        " " * width + "".join(f"{name:>{width}}" for name in names),
    ]
    lines += [
        f"{name:>{width}}" + "".join(f"{cell:>{width}}" for cell in row)
        for name, row in zip(names, matrix, strict=True)
    ]
    return lines


def metrics_path(model_dir: str, split: str) -> str:
    name = "metrics.json" if split == "test" else f"metrics_{split}.json"
    return os.path.join(model_dir, name)


def write_metrics(metrics: dict, path: str):
    """Writes path whole or not at all (beside it first, then renamed), even when interrupted."""
    import tensorflow as tf

    partial = path + ".partial"
    try:
        with tf.io.gfile.GFile(partial, "w") as file:
            file.write(json.dumps(metrics, indent=2) + "\n")
        tf.io.gfile.rename(partial, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)
        raise


def load_saved_model(model_dir: str):
    """The serving signature of MODEL_DIR/export (or of MODEL_DIR itself when it is the export)."""
    import tensorflow as tf

    for folder in (os.path.join(model_dir, "export"), model_dir):
        if tf.io.gfile.exists(os.path.join(folder, "saved_model.pb")):
            try:
                loaded = tf.saved_model.load(folder)
            except Exception as error:  # a damaged file fails in many ways: protobuf, checkpoint reader, I/O
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
                raise cli.FaultError(
                    f"cannot load the SavedModel in {folder} ({first_line}); it is damaged or incomplete: "
                    "restore it from a copy, or train and export again into a new --model_dir"
                ) from None
            signature = loaded.signatures.get("serving_default")
            inputs = signature.structured_input_signature[1] if signature is not None else {}
            spec = inputs.get("video")
            if spec is None or spec.shape.rank != 5 or spec.shape[2] is None:
                raise cli.UsageError(
                    f"the SavedModel in {folder} has no serving_default signature taking `video` "
                    "[batch, frames, S, S, 1]; give the export of a trainer.task run"
                )
            return folder, signature
    raise cli.UsageError(f"no SavedModel in {model_dir} or {model_dir}/export; {advice_without_saved_model(model_dir)}")


def advice_without_saved_model(model_dir: str) -> str:
    """What to do about a folder with no SavedModel: export the checkpoints of a run that stopped, or train one."""
    from trainer import outputs

    paths = outputs.output_paths(model_dir)
    if outputs.has_checkpoint(paths):
        import tensorflow as tf

        exports = sorted(tf.io.gfile.glob(os.path.join(model_dir, "export_step_*", "saved_model.pb")))
        earlier = f", or give {os.path.dirname(exports[-1])} (an export of it)" if exports else ""
        return (
            f"its trainer.task run has not finished: export its newest checkpoint with `python -m trainer.export "
            f"--model_dir {model_dir}` and give the folder it names{earlier}, or run the same trainer.task command "
            "again to finish the run"
        )
    return "train one first with `python -m trainer.task --config configs/default.yaml --data_dir DIR --model_dir DIR`"


def signature_size(signature) -> int:
    """The frame size S the signature's `video` input was exported for."""
    spec = signature.structured_input_signature[1]["video"]
    return int(spec.shape[2])


# A batch of this many size-50 videos is already 8 GB.
MAX_BATCH_SIZE = 65_536


def batch_size(text: str) -> int:
    value = cli.positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BATCH_SIZE:,}, got {value:,}")
    return value


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="The trainer's --model_dir (holds export/).")
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir holding moving_line/size_S.")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--batch_size", type=batch_size, default=256, help="Examples per prediction batch.")
    parser.add_argument(
        "--skip_corrupt_records",
        action="store_true",
        help="Skip unreadable records of damaged shards (and say how many) instead of stopping with an error.",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    cli.check_reachable(args.model_dir, "--model_dir")
    cli.check_reachable(args.data_dir, "--data_dir")
    from trainer import config as config_lib
    from trainer import corrupt_data, input_pipeline

    export_dir, signature = load_saved_model(args.model_dir)
    size = signature_size(signature)
    builder = input_pipeline.load_builder(args.data_dir, size)
    config = {
        **config_lib.DEFAULTS,
        "size": size,
        "batch_size": args.batch_size,
        "skip_corrupt_records": args.skip_corrupt_records,
    }
    examples = input_pipeline.split_size(builder, args.split)
    dataset = input_pipeline.evaluation_dataset(builder, args.split, config)
    from trainer.training_log import count

    cli.log(PROG, f"evaluating {export_dir} on {args.split} ({count(examples, 'example')})")
    with corrupt_data.named_in_errors(builder, [args.split], "--skip_corrupt_records"):
        metrics = evaluate(
            lambda video: signature(video=video)["probability_right"],
            dataset,
            builder.info.features["label"].names,
        )
    if args.skip_corrupt_records:
        metrics["skipped_records"] = corrupt_data.log_skipped(PROG, builder, args.split, metrics["examples"])
    metrics = {"split": args.split, "model": export_dir, "data": builder.data_dir, **metrics}
    for line in describe(metrics):
        print(line)
    path = metrics_path(args.model_dir, args.split)
    write_metrics(metrics, path)
    cli.log(PROG, f"wrote {path}")
    return 0


if __name__ == "__main__":
    cli.run_and_exit(PROG, main)
