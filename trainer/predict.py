"""Predict the direction of new moving-line videos with an exported model.

    python -m trainer.predict --model DIR [--count 5] [--seed K]
    python -m trainer.predict --model DIR --input videos.npz

DIR is a trainer --model_dir or its export/ folder. With no --input, new sequences are
generated on the fly at the model's frame size (seed printed, so a run can be repeated);
--input takes a .npy video array (uint8 [N, T, S, S, 1], or one [T, S, S, 1]) or a .npz
with an array named `video` and, optionally, one named `label` (N labels, 0 = left,
1 = right). One line per sequence on stdout, as the tutorial: "Expected: Right, Predicted:
Right". Sequences are generated, read and predicted BATCH at a time, so memory stays flat
whatever --count or the size of --input.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import signal
import sys
import zipfile
import zlib

from pipeline import cli

PROG = "trainer.predict"
# Label index -> name, as the dataset stores them (the dataset card: 0 = left, 1 = right).
CLASS_NAMES = ("left", "right")
BATCH = 256  # sequences per prediction call: 32 MB of uint8 videos at size 50
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip


MAX_COUNT = 10**12  # sequences indexed from 0 stay far inside the generator's counter (and a lifetime)


def count(text: str) -> int:
    value = cli.positive_int(text)
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_COUNT:,}, got {value:,}")
    return value


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="A trainer --model_dir, or the SavedModel folder itself.")
    parser.add_argument("--input", help="A .npy or .npz file of uint8 videos (default: generate new ones).")
    parser.add_argument("--count", type=count, default=5, help="Sequences to generate (no --input).")
    parser.add_argument("--seed", type=cli.non_negative_int, default=None, help="Seed of generated sequences.")
    args = parser.parse_args(argv)
    if args.input and args.seed is not None:
        raise cli.UsageError("--seed only applies to generated sequences; drop it or drop --input")
    if args.seed is not None and args.seed >= 2**63:
        raise cli.UsageError(f"--seed must be below 2**63, got {args.seed}")
    if args.input is not None and not os.path.isfile(args.input):
        what = (
            "is a folder"
            if os.path.isdir(args.input)
            else "is not a regular file"
            if os.path.exists(args.input)
            else "no such file"
        )
        raise cli.UsageError(f"--input {args.input}: {what}; give a .npy or .npz file")
    return args


def sequences(count: int) -> str:
    return f"{count:,} sequence{'' if count == 1 else 's'}"


@dataclasses.dataclass
class Header:
    """What a .npy header says: the array's shape, its element type, its layout, and where its data starts."""

    shape: tuple
    dtype: object
    fortran_order: bool
    data_offset: int


def read_header(stream, where: str) -> Header:
    import numpy as np

    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise cli.UsageError(f"{where}: .npy format version {version} is not supported; save it with np.save")
    except cli.UsageError:
        raise
    except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as error:
        raise cli.UsageError(f"{where}: not a readable .npy array ({error})") from None
    return Header(tuple(shape), dtype, fortran_order, stream.tell())


@dataclasses.dataclass
class InputVideos:
    """A --input file, checked; batches() reads its videos BATCH at a time (memory-mapped or streamed)."""

    path: str
    count: int
    labels: object  # int array [count], or None
    header: Header
    member: str | None  # the .npz member holding the videos; None for a .npy
    given_shape: tuple = ()  # the array's shape as stored (header.shape reads one video as a batch of one)

    def batches(self):
        import numpy as np

        size = self.header.shape[1:]
        if self.member is None:
            videos = np.memmap(
                self.path,
                dtype=self.header.dtype,
                mode="r",
                offset=self.header.data_offset,
                shape=(self.count, *size),
                order="F" if self.header.fortran_order else "C",
            )
            for start in range(0, self.count, BATCH):
                yield np.array(videos[start : start + BATCH])
            return
        row_bytes = int(np.prod(size)) * self.header.dtype.itemsize
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as stream:
                stream.seek(self.header.data_offset)
                for start in range(0, self.count, BATCH):
                    rows = min(BATCH, self.count - start)
                    data = stream.read(rows * row_bytes)
                    if len(data) != rows * row_bytes:
                        raise cli.UsageError(f"--input {self.path}: '{self.member}' is truncated")
                    yield np.frombuffer(data, self.header.dtype).reshape(rows, *size)
                while stream.read(1 << 20):  # to the end, where zipfile checks the member's CRC
                    pass
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise cli.UsageError(f"--input {self.path} is damaged ({error}); write it again") from None


def read_videos(path: str) -> InputVideos:
    """The --input file, checked before TensorFlow starts: format, shape, pixel type, pixel values and labels."""
    with open(path, "rb") as file:
        start = file.read(len(NPY_MAGIC))
    if start.startswith(ZIP_MAGICS):
        videos = read_npz(path)
    elif start == NPY_MAGIC:
        with open(path, "rb") as file:
            header = read_header(file, f"--input {path}")
        videos = InputVideos(path, 0, None, header, None)
        check_length(path, header, os.path.getsize(path))
    else:
        raise cli.UsageError(f"--input {path}: not a .npy or .npz file (np.save or np.savez writes them)")
    check_videos(videos)
    return videos


def read_npz(path: str) -> InputVideos:
    import numpy as np

    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            if "video" not in members:
                raise cli.UsageError(
                    f"--input {path}: the .npz holds {sorted(members)}; it needs an array named 'video' "
                    "(np.savez(path, video=videos, label=labels))"
                )
            with archive.open(members["video"]) as stream:
                header = read_header(stream, f"--input {path} ('video')")
            check_length(path, header, archive.getinfo(members["video"]).file_size, "'video'")
            labels = None
            if "label" in members:
                with archive.open(members["label"]) as stream:
                    label_header = read_header(stream, f"--input {path} ('label')")
                    check_numbers(path, label_header, "'label'")
                    check_length(path, label_header, archive.getinfo(members["label"]).file_size, "'label'")
                    stream.seek(0)
                    labels = np.lib.format.read_array(stream, allow_pickle=False)
    except cli.UsageError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        raise cli.UsageError(f"--input {path} is damaged or not an .npz file ({error}); write it again") from None
    if header.fortran_order:
        raise cli.UsageError(
            f"--input {path}: 'video' is stored in Fortran order; save np.ascontiguousarray(videos) instead"
        )
    return InputVideos(path, 0, labels, header, members["video"])


def check_length(path: str, header: Header, stored_bytes: int, name: str = "the array"):
    import numpy as np

    expected = header.data_offset + int(np.prod(header.shape)) * header.dtype.itemsize
    if stored_bytes < expected:
        raise cli.UsageError(
            f"--input {path}: {name} is truncated ({stored_bytes:,} of {expected:,} bytes); write the file again"
        )


def check_numbers(path: str, header: Header, name: str):
    if header.dtype.hasobject or header.dtype.kind not in "buif":
        kind = {"U": "text", "S": "bytes", "O": "Python objects"}.get(header.dtype.kind, f"{header.dtype} values")
        wanted = "labels must be 0 (left) or 1 (right)" if name == "'label'" else "pixels must be 0 or 1 (uint8)"
        raise cli.UsageError(f"--input {path}: {name} holds {kind}; {wanted}")


def check_videos(videos: InputVideos):
    """Fills in videos.count and checks shape, pixels (read BATCH at a time) and labels."""
    import numpy as np

    path, header = videos.path, videos.header
    check_numbers(path, header, "'video'" if videos.member else "the array")
    videos.given_shape = header.shape  # what the file holds, for the messages
    if len(header.shape) == 4:  # one video
        header.shape = (1, *header.shape)
    frames, rows, columns, channels = header.shape[1:] if len(header.shape) == 5 else (None,) * 4
    if not (frames == rows == columns and channels == 1):
        raise cli.UsageError(
            f"--input {path}: videos of shape {list(videos.given_shape)}; give [N, S, S, S, 1] (S frames of S x S "
            "pixels), or one video [S, S, S, 1]"
        )
    videos.count = header.shape[0]
    if videos.count == 0:
        raise cli.UsageError(f"--input {path} holds no videos; give at least one")
    for index, batch in enumerate(videos.batches()):
        if not np.isin(batch, (0, 1)).all():
            first = index * BATCH + int(np.argmin(np.isin(batch, (0, 1)).reshape(len(batch), -1).all(axis=1)))
            raise cli.UsageError(f"--input {path}: pixels must be 0 or 1 (uint8); video {first} holds other values")
    if videos.labels is not None:
        videos.labels = checked_labels(path, videos.labels, videos.count)


def check_size(videos: InputVideos, size: int):
    if videos.header.shape[1] != size:
        raise cli.UsageError(
            f"--input {videos.path}: videos of shape {list(videos.given_shape)}; "
            f"this model takes [N, {size}, {size}, {size}, 1] (or one video [{size}, {size}, {size}, 1])"
        )


def checked_labels(path: str, labels, count: int):
    import numpy as np

    if labels.shape not in ((count,), (count, 1)) and not (labels.shape == () and count == 1):
        raise cli.UsageError(
            f"--input {path}: 'label' has shape {list(labels.shape)}; give one label per video, shape [{count}]"
        )
    labels = labels.reshape(-1)
    if not np.isin(labels, (0, 1)).all():
        wrong = labels[~np.isin(labels, (0, 1))][0].item()
        raise cli.UsageError(f"--input {path}: labels must be 0 (left) or 1 (right); found {wrong}")
    return labels.astype(np.int64)


def describe(class_name: str, probability_right: float, expected: str | None) -> str:
    predicted = f"Predicted: {class_name.capitalize()}"
    where = f"  (probability of right {probability_right:.4f})"
    return (f"Expected: {expected.capitalize()}, {predicted}" if expected else predicted) + where


def generated_batches(seed: int, count: int, size: int):
    from pipeline import generator

    for start in range(0, count, BATCH):
        batch = generator.generate(seed, "test", start, min(BATCH, count - start), size)
        yield batch["video"], batch["label"]


def input_batches(videos: InputVideos):
    start = 0
    for batch in videos.batches():
        labels = None if videos.labels is None else videos.labels[start : start + len(batch)]
        start += len(batch)
        yield batch.astype("uint8"), labels


def main(argv=None):
    args = parse_args(argv)
    videos = read_videos(args.input) if args.input else None
    cli.quiet_tensorflow()
    cli.check_reachable(args.model, "--model")
    from trainer import evaluate

    export_dir, signature = evaluate.load_saved_model(args.model)
    size = evaluate.signature_size(signature)
    if videos:
        check_size(videos, size)
        batches = input_batches(videos)
        cli.log(PROG, f"{sequences(videos.count)} from {args.input}")
    else:
        seed = secrets.randbelow(2**63) if args.seed is None else args.seed
        batches = generated_batches(seed, args.count, size)
        cli.log(PROG, f"{sequences(args.count)} of size {size}, seed {seed} (--seed {seed} repeats them)")
    predicted = correct = labelled = 0
    try:
        for video, labels in batches:
            with cli.interrupts_deferred():
                outputs = signature(video=video)
                class_names = [name.decode() for name in outputs["class_name"].numpy()]
                probabilities = outputs["probability_right"].numpy()
            for index, (class_name, probability) in enumerate(zip(class_names, probabilities, strict=True)):
                expected = None if labels is None else CLASS_NAMES[int(labels[index])]
                print(describe(class_name, float(probability), expected))
                correct += expected == class_name
                labelled += expected is not None
            predicted += len(class_names)
        sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read stdout has gone (`| head`): stop quietly, as the shell's tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return cli.interrupted_exit(signal.SIGPIPE)
    if labelled:
        cli.log(PROG, f"{correct:,}/{labelled:,} correct ({export_dir})")
    return 0


if __name__ == "__main__":
    cli.run_and_exit(PROG, main)
