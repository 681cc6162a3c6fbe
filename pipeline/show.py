"""Draw moving-line sequences from a built dataset.

    python -m pipeline.show --data_dir DIR [--size 50] [--split train] [--num 4] --out FILE.png|FILE.gif

A PNG shows each sequence as a strip of its frames, one strip per row, as the
tutorial's plot did; a GIF animates the sequences side by side.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile

import numpy as np

from pipeline import cli, contract

PROG = "pipeline.show"
FORMATS = (".png", ".gif")
CLASS_NAMES = ("left", "right")
# Drawing: grey levels, pixel sizes, and the limits that keep an image viewable.
LIT, UNLIT, SEPARATOR = 0, 255, 170
GAP = 2  # separator between frames, in pixels
FRAME_PIXELS = 48  # a frame is drawn at least about this wide (a whole number of pixels per pixel)
MAX_WIDTH = 1600  # rows of frames wrap, in rows of equal length, to stay within this width
MAX_IMAGE_PIXELS = 50_000_000
MAX_SEQUENCES = 100  # more than a person looks at in one picture
MARGIN = 8
TITLE_HEIGHT = 28
LABEL_HEIGHT = 16
FRAME_MILLISECONDS = 120


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
    parser.add_argument(
        "--num", type=cli.positive_int, default=4, help=f"Number of sequences to draw (at most {MAX_SEQUENCES})."
    )
    parser.add_argument("--out", required=True, help="Output file: .png (frame strips) or .gif (animation).")
    args = parser.parse_args(argv)
    if args.num > MAX_SEQUENCES:
        raise cli.UsageError(
            f"--num {args.num:,} is more than one picture can show; draw at most {MAX_SEQUENCES} at a time"
        )
    extension = os.path.splitext(args.out)[1].lower()
    if extension not in FORMATS:
        raise cli.UsageError(f"--out must end in .png or .gif, got {args.out!r}")
    if os.path.isdir(args.out):
        raise cli.UsageError(f"--out {args.out} is a folder; give the name of the image to write")
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


def open_split(dataset_folder: str, split: str):
    """The TFDS builder of the dataset, once split is known to be one of its splits."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(dataset_folder)
    if split not in builder.info.splits:
        raise cli.UsageError(f"--split {split!r} not in the dataset; choose from {', '.join(builder.info.splits)}")
    return builder


def load_sequences(builder, split: str, num: int):
    """The first `num` (video [T,S,S], label) of a split, read with TFDS."""
    import tensorflow_datasets as tfds

    if builder.info.file_format.value in contract.RANDOM_ACCESS_FORMATS:  # built without TFRecord files
        source = builder.as_data_source(split=split)
        examples = [source[index] for index in range(min(num, len(source)))]
    else:
        examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).take(num)))
    return [(example["video"][..., 0], int(example["label"])) for example in examples]


def frame_grid(videos: list[np.ndarray], columns: int, scale: int) -> np.ndarray:
    """Frames [S, S] 0/1 -> one grey image: `columns` frames a row, each pixel scale x scale, lit = black.

    Every frame is drawn at a whole number of pixels per pixel (no resampling, so no aliasing) and
    framed by separators GAP pixels wide, the same between all frames and around the grid.
    """
    size = videos[0].shape[0]
    cell = size * scale
    rows = -(-len(videos) // columns)
    grid = np.full((rows * (cell + GAP) + GAP, columns * (cell + GAP) + GAP), SEPARATOR, np.uint8)
    for index, frame in enumerate(videos):
        top = GAP + (index // columns) * (cell + GAP)
        left = GAP + (index % columns) * (cell + GAP)
        pixels = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
        grid[top : top + cell, left : left + cell] = np.where(pixels > 0, LIT, UNLIT)
    return grid


def balanced_columns(count: int, cell: int, max_width: int) -> int:
    """How many cells of `cell` pixels a row holds: all of them if they fit in max_width, else rows of equal length."""
    rows = -(-(count * (cell + GAP) + GAP) // max_width)
    return -(-count // rows)


def check_image_size(width: int, height: int, what: str):
    if width * height > MAX_IMAGE_PIXELS:
        raise cli.UsageError(
            f"{what} would be {width:,} x {height:,} pixels, more than an image viewer opens; draw fewer (--num)"
        )


def text_width(draw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def save_whole(image, out: str, image_format: str, **options):
    """Saves image at out (a new file); on any failure (a full disk, a signal) removes what was written.

    The image is encoded in memory first: PIL encodes into a file in one call that a signal cannot
    interrupt, and into memory a block at a time, so SIGTERM and Ctrl-C take effect within a block.
    """
    encoded = io.BytesIO()
    image.save(encoded, format=image_format, **options)
    existed = os.path.lexists(out)
    try:
        with open(out, "wb") as file:
            file.write(encoded.getbuffer())
    except BaseException:
        if not existed and os.path.lexists(out):
            os.remove(out)
        raise


def draw_png(sequences, out: str):
    """One block per sequence: its label on the left, its frames in order, left to right (in rows of equal length)."""
    from PIL import Image, ImageDraw, ImageFont

    frames, size, _ = sequences[0][0].shape
    scale = -(-FRAME_PIXELS // size)
    columns = balanced_columns(frames, size * scale, MAX_WIDTH)
    grids = [frame_grid(list(video), columns, scale) for video, _ in sequences]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    labels = [f"#{index} {CLASS_NAMES[label]}" for index, (_, label) in enumerate(sequences)]
    label_width = max(text_width(measure, label, font) for label in labels) + 2 * MARGIN
    rows = -(-frames // columns)
    title = f"{len(sequences)} sequences of {frames} frames ({size} x {size}), in order from the top left"
    if rows > 1:
        title += f", {columns} a row"
    width = max(label_width + grids[0].shape[1] + MARGIN, text_width(measure, title, font) + 2 * MARGIN)
    height = TITLE_HEIGHT + sum(grid.shape[0] + MARGIN for grid in grids)
    check_image_size(width, height, f"{len(sequences)} strips of {frames} frames")
    image = Image.new("L", (width, height), UNLIT)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), title, fill=LIT, font=font)
    top = TITLE_HEIGHT
    for grid, label in zip(grids, labels, strict=True):
        image.paste(Image.fromarray(grid, mode="L"), (label_width, top))
        draw.text((MARGIN, top + GAP + min(size * scale, grid.shape[0]) // 2 - 6), label, fill=LIT, font=font)
        top += grid.shape[0] + MARGIN
    save_whole(image, out, "PNG")


def draw_gif(sequences, out: str):
    """An animation of the sequences side by side, each under its label (left or right), the frame number on top."""
    from PIL import Image, ImageDraw, ImageFont

    frames, size, _ = sequences[0][0].shape
    scale = -(-2 * FRAME_PIXELS // size)
    columns = balanced_columns(len(sequences), size * scale, MAX_WIDTH)
    font = ImageFont.load_default()
    labels = [f"#{index} {CLASS_NAMES[label]}" for index, (_, label) in enumerate(sequences)]
    cell = size * scale + GAP
    width = max(columns * cell + GAP, 160)
    rows = -(-len(sequences) // columns)
    height = TITLE_HEIGHT + rows * (LABEL_HEIGHT + cell) + GAP
    check_image_size(width, height * frames, f"an animation of {len(sequences)} sequences")
    pictures = []
    for frame in range(frames):
        grid = frame_grid([video[frame] for video, _ in sequences], columns, scale)
        image = Image.new("L", (width, height), UNLIT)
        draw = ImageDraw.Draw(image)
        draw.text((MARGIN, MARGIN), f"frame {frame + 1} of {frames}", fill=LIT, font=font)
        for row in range(rows):
            # The grid's row of tiles, under a band that names each tile's sequence.
            band_top = TITLE_HEIGHT + row * (LABEL_HEIGHT + cell)
            strip = grid[row * cell : row * cell + cell + GAP]
            image.paste(Image.fromarray(strip, mode="L"), (0, band_top + LABEL_HEIGHT - GAP))
            for column in range(columns):
                index = row * columns + column
                if index < len(sequences):
                    draw.text((GAP + column * cell + 2, band_top + 2), labels[index], fill=LIT, font=font)
        pictures.append(image)
    save_whole(pictures[0], out, "GIF", save_all=True, append_images=pictures[1:], duration=FRAME_MILLISECONDS, loop=0)


def labels_in_brief(sequences, listed: int = 8) -> str:
    """Each label in order for a few sequences ("left, right"), else how many of each ("52 left, 48 right")."""
    labels = [CLASS_NAMES[label] for _, label in sequences]
    if len(labels) <= listed:
        return ", ".join(labels)
    return ", ".join(f"{labels.count(name)} {name}" for name in CLASS_NAMES)


def main(argv=None):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    folder = find_dataset(args.data_dir, args.size)
    builder = open_split(folder, args.split)
    held = builder.info.splits[args.split].num_examples
    if not held:
        raise cli.UsageError(f"split {args.split!r} is empty")
    count = min(args.num, held)
    whole = f" (all it holds: --num {args.num} is more)" if args.num > held else ""
    cli.log(PROG, f"reading {count} {args.split} sequences{whole} from {folder}")
    with cli.interrupts_deferred():  # a signal inside TensorFlow's read is raised once it returns, never dropped
        sequences = load_sequences(builder, args.split, count)
    # Drawn under a name of its own (made here, so never a file of the user's), then renamed: never a half-drawn
    # file under the asked-for name.
    descriptor, partial = tempfile.mkstemp(
        prefix=f".{os.path.basename(args.out)}.", suffix=f".partial{os.path.splitext(args.out)[1]}",
        dir=os.path.dirname(os.path.abspath(args.out)),
    )  # fmt: skip
    os.close(descriptor)
    try:
        (draw_gif if args.out.lower().endswith(".gif") else draw_png)(sequences, partial)
        os.replace(partial, args.out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise
    cli.log(PROG, f"drew {len(sequences)} {args.split} sequences ({labels_in_brief(sequences)}) -> {args.out}")
    return 0


if __name__ == "__main__":
    cli.run_and_exit(PROG, main)
