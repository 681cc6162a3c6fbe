"""Predict the direction of new moving-line videos with an exported model.

    python -m trainer.predict --model DIR [--count 5] [--seed K]
    python -m trainer.predict --model DIR --input videos.npz

DIR is a trainer --model_dir or its export/ folder. With no --input, new sequences are
generated on the fly at the model's frame size (seed printed, so a run can be repeated);
--input takes a .npy video array (uint8 [N, T, S, S, 1], or one [T, S, S, 1]) or a .npz
with `video` and, optionally, `label` (1 = right). One line per sequence, as the tutorial:
"Expected: Right, Predicted: Right".
"""

from __future__ import annotations

import os
import secrets

from pipeline import cli

PROG = "trainer.predict"
# Label index -> name, as the dataset stores them (SPEC.md: 0 = left, 1 = right).
CLASS_NAMES = ("left", "right")


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="A trainer --model_dir, or the SavedModel folder itself.")
    parser.add_argument("--input", help="A .npy or .npz file of uint8 videos (default: generate new ones).")
    parser.add_argument("--count", type=cli.positive_int, default=5, help="Sequences to generate (no --input).")
    parser.add_argument("--seed", type=cli.non_negative_int, default=None, help="Seed of generated sequences.")
    args = parser.parse_args(argv)
    if args.input and args.seed is not None:
        raise cli.UsageError("--seed only applies to generated sequences; drop it or drop --input")
    if args.seed is not None and args.seed >= 2**63:
        raise cli.UsageError(f"--seed must be below 2**63, got {args.seed}")
    return args


def read_videos(path: str, size: int):
    """(videos uint8 [N, T, S, S, 1], labels [N] or None) from a .npy or .npz file, checked against size."""
    import numpy as np

    if not os.path.isfile(path):
        raise cli.UsageError(f"--input {path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise cli.UsageError(f"--input {path}: not a .npy or .npz file ({error})") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        if "video" not in loaded.files:
            raise cli.UsageError(f"--input {path}: the .npz holds {loaded.files}; it needs an array named 'video'")
        videos = loaded["video"]
        labels = loaded["label"] if "label" in loaded.files else None
    else:
        videos = loaded
    wanted = (size, size, size, 1)
    if videos.shape == wanted:
        videos = videos[None]
    if videos.ndim != 5 or videos.shape[1:] != wanted:
        raise cli.UsageError(
            f"--input {path}: videos of shape {videos.shape}; this model takes [N, {size}, {size}, {size}, 1]"
        )
    if len(videos) == 0:
        raise cli.UsageError(f"--input {path} holds no videos; give at least one")
    if not np.isin(videos, (0, 1)).all():
        raise cli.UsageError(f"--input {path}: pixels must be 0 or 1 (uint8)")
    if labels is not None and np.asarray(labels).reshape(-1).shape[0] != videos.shape[0]:
        raise cli.UsageError(f"--input {path}: {len(labels)} labels for {videos.shape[0]} videos")
    return videos.astype(np.uint8), None if labels is None else np.asarray(labels).reshape(-1).astype(int)


def describe(class_name: str, probability_right: float, expected: str | None) -> str:
    predicted = f"Predicted: {class_name.capitalize()}"
    where = f"  (probability of right {probability_right:.4f})"
    return (f"Expected: {expected.capitalize()}, {predicted}" if expected else predicted) + where


def main(argv=None):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    from trainer import evaluate

    export_dir, signature = evaluate.load_saved_model(args.model)
    size = evaluate.signature_size(signature)
    if args.input:
        videos, labels = read_videos(args.input, size)
        cli.log(PROG, f"{len(videos)} sequences from {args.input}")
    else:
        from pipeline import generator

        seed = secrets.randbelow(2**63) if args.seed is None else args.seed
        generated = generator.generate(seed, "test", 0, args.count, size)
        videos, labels = generated["video"], generated["label"]
        cli.log(PROG, f"{args.count} new sequences of size {size}, seed {seed} (--seed {seed} repeats them)")
    outputs = signature(video=videos)
    class_names = [name.decode() for name in outputs["class_name"].numpy()]
    probabilities = outputs["probability_right"].numpy()
    for index, (class_name, probability) in enumerate(zip(class_names, probabilities, strict=True)):
        expected = None if labels is None else CLASS_NAMES[int(labels[index])]
        print(describe(class_name, float(probability), expected))
    if labels is not None:
        right = sum(CLASS_NAMES[int(label)] == name for label, name in zip(labels, class_names, strict=True))
        cli.log(PROG, f"{right}/{len(labels)} correct ({export_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(PROG, main))
