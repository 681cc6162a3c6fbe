"""Draw moving-line sequences from a built dataset.

    python -m pipeline.show --data_dir DIR [--size 50] [--split train] [--num 4] --out FILE.png|FILE.gif

A PNG shows each sequence as a strip of its frames, one strip per row, as the
tutorial's plot did; a GIF animates the sequences side by side.
"""

from __future__ import annotations

import os
import re

import numpy as np

from pipeline import cli, contract

PROG = "pipeline.show"
FORMATS = (".png", ".gif")
GAP = 1  # pixels between frames and sequences
SCALE_TARGET = 64  # a frame is drawn at least about this many pixels wide


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="TFDS data directory the dataset was generated into.")
    parser.add_argument(
        "--size",
        type=cli.positive_int,
        default=None,
        help="Frame size of the dataset (default: the only one in data_dir, else 50).",
    )
    parser.add_argument("--split", default="train", help="Split to draw from.")
    parser.add_argument("--num", type=cli.positive_int, default=4, help="Number of sequences to draw.")
    parser.add_argument("--out", required=True, help="Output file: .png (frame strips) or .gif (animation).")
    args = parser.parse_args(argv)
    extension = os.path.splitext(args.out)[1].lower()
    if extension not in FORMATS:
        raise cli.UsageError(f"--out must end in .png or .gif, got {args.out!r}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise cli.UsageError(f"--out folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise cli.UsageError(f"--out folder {folder} is not writable; choose another path")
    return args


def find_dataset(data_dir: str, size: int | None) -> str:
    """The folder of the built moving_line/size_<S> dataset in data_dir (newest version), checked whole."""
    root = os.path.join(data_dir, contract.NAME)
    built = sorted(name for name in (os.listdir(root) if os.path.isdir(root) else []) if name.startswith("size_"))
    if not built:
        raise cli.UsageError(
            f"no {contract.NAME} dataset in --data_dir {data_dir}; run `python -m pipeline.generate` first"
        )
    if size is None:
        name = built[0] if len(built) == 1 else contract.config_name(contract.DEFAULT_SIZE)
        if name not in built:
            raise cli.UsageError(f"--data_dir {data_dir} holds {', '.join(built)}; pick one with --size")
    else:
        name = contract.config_name(size)
        if name not in built:
            raise cli.UsageError(f"no {contract.NAME}/{name} in --data_dir {data_dir} (it holds {', '.join(built)})")
    # Finished builds only: not the incomplete.* folders of running or killed builds, nor the lock file.
    versions = sorted(
        (entry for entry in os.listdir(os.path.join(root, name)) if re.fullmatch(r"\d+\.\d+\.\d+", entry)),
        key=lambda version: tuple(int(part) for part in version.split(".")),
    )
    if not versions:
        raise cli.UsageError(f"{contract.NAME}/{name} in {data_dir} was never finished; generate it again")
    folder = os.path.join(root, name, versions[-1])
    contract.check_complete(folder)  # a damaged build: one line, exit code 1
    return folder


def load_sequences(dataset_folder: str, split: str, num: int):
    """The first `num` (video [T,S,S], label) of a split, read with TFDS."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(dataset_folder)
    if split not in builder.info.splits:
        raise cli.UsageError(f"--split {split!r} not in the dataset; choose from {', '.join(builder.info.splits)}")
    if builder.info.file_format.value in contract.RANDOM_ACCESS_FORMATS:  # built without TFRecord files
        source = builder.as_data_source(split=split)
        examples = [source[index] for index in range(min(num, len(source)))]
    else:
        examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).take(num)))
    return [(example["video"][..., 0], int(example["label"])) for example in examples]


def frame_strip(video: np.ndarray, scale: int) -> np.ndarray:
    """[T, S, S] 0/1 -> one grey image row with the T frames side by side (lit = black)."""
    frames, size, _ = video.shape
    width = frames * (size * scale + GAP) - GAP
    strip = np.full((size * scale, width), 200, np.uint8)  # grey gaps between frames
    for index, frame in enumerate(video):
        left = index * (size * scale + GAP)
        strip[:, left : left + size * scale] = np.where(np.kron(frame, np.ones((scale, scale))) > 0, 0, 255)
    return strip


def draw_png(sequences, out: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = sequences[0][0].shape[1]
    scale = max(1, SCALE_TARGET // size // 4)
    strips = [frame_strip(video, scale) for video, _ in sequences]
    figure, axes = plt.subplots(len(strips), 1, figsize=(16, 0.5 + 0.9 * len(strips)), squeeze=False)
    for axis, strip, (_, label) in zip(axes[:, 0], strips, sequences, strict=True):
        axis.imshow(strip, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
        axis.set_ylabel(("left", "right")[label], rotation=0, ha="right", va="center")
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{len(strips)} sequences, frames 0..{sequences[0][0].shape[0] - 1} left to right")
    figure.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(figure)


def draw_gif(sequences, out: str):
    from PIL import Image

    size = sequences[0][0].shape[1]
    scale = max(1, SCALE_TARGET // size * 2)
    frames = []
    for index in range(sequences[0][0].shape[0]):
        tiles = [np.where(np.kron(video[index], np.ones((scale, scale))) > 0, 0, 255) for video, _ in sequences]
        spacer = np.full((size * scale, GAP * 2), 200)
        row = np.concatenate([part for tile in tiles for part in (tile, spacer)][:-1], axis=1)
        frames.append(Image.fromarray(row.astype(np.uint8), mode="L"))
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=120, loop=0)


def main(argv=None):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    sequences = load_sequences(find_dataset(args.data_dir, args.size), args.split, args.num)
    if not sequences:
        raise cli.UsageError(f"split {args.split!r} is empty")
    partial = f"{args.out}.partial{os.path.splitext(args.out)[1]}"
    (draw_gif if args.out.lower().endswith(".gif") else draw_png)(sequences, partial)
    os.replace(partial, args.out)  # never leave a half-drawn file under the asked-for name
    labels = ", ".join(("left", "right")[label] for _, label in sequences)
    cli.log(PROG, f"drew {len(sequences)} {args.split} sequences ({labels}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(PROG, main))
