"""Vectorized moving-line generator: the process of the dataset card (pipeline/moving_line/README.md).

Every example is a pure function of (seed, split, index): its random numbers are a
fixed slice of a Philox counter-based stream keyed by (seed, split), so any chunk of
examples can be made anywhere, in any order, by any number of workers, and the
result is the same. Splits use different keys, so they never share a stream.
"""

from __future__ import annotations

import numpy as np

from pipeline import contract

SPLITS = contract.SPLITS
CLASS_NAMES = contract.CLASS_NAMES
MIN_SIZE = 2
MAX_SIZE = 255  # rows are stored as uint8 and a size-255 video is already 16 MB

# The float of a uint64 draw keeps its top 53 bits: exact in float64.
_TO_UNIT = 2.0**-53


def check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE}, got {size}")
    return int(size)


def _draws_per_example(size: int) -> int:
    # One draw for the direction, one for the first row, one per later step,
    # rounded up to whole Philox blocks of four 64-bit words.
    return 4 * -(-(size + 1) // 4)


def random_words(seed: int, split: str, start: int, count: int, size: int) -> np.ndarray:
    """The uint64 words of examples start..start+count-1: shape [count, words]."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    words = _draws_per_example(size)
    bit_generator = np.random.Philox(key=np.array([seed, SPLITS.index(split)], np.uint64))
    # Philox advances by whole blocks of four words.
    bit_generator.advance(start * (words // 4))
    return bit_generator.random_raw(count * words).reshape(count, words)


def _uniform_below(word: np.ndarray, bound) -> np.ndarray:
    """Uniform integers in [0, bound) from uint64 words (bias below 2**-52)."""
    return np.floor((word >> np.uint64(11)).astype(np.float64) * _TO_UNIT * bound).astype(np.int64)


def make_paths(seed: int, split: str, start: int, count: int, size: int):
    """Labels ([count] int64, 1 = right) and row paths ([count, size] uint8)."""
    size = check_size(size)
    words = random_words(seed, split, start, count, size)
    labels = (words[:, 0] >> np.uint64(63)).astype(np.int64)
    rows = np.empty((count, size), np.int64)
    rows[:, 0] = _uniform_below(words[:, 1], size)
    for t in range(1, size):
        low = np.maximum(rows[:, t - 1] - 1, 0)
        high = np.minimum(rows[:, t - 1] + 1, size - 1)
        rows[:, t] = low + _uniform_below(words[:, t + 1], high - low + 1)
    return labels, rows.astype(np.uint8)


def columns(labels: np.ndarray, size: int) -> np.ndarray:
    """Column drawn at each frame: t for right (label 1), size-1-t for left."""
    steps = np.arange(size)
    return np.where(labels[:, None] == 1, steps, size - 1 - steps)


def render(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Videos [count, T, S, S, 1] uint8: frame t holds the path's pixels 0..t."""
    count, size = rows.shape
    # Each column is visited exactly once, so "the frame a pixel lights up in" is a
    # single [S, S] map per example; frame t is that map compared with t.
    lit_at = np.full((count, size, size), size, np.int16)
    example = np.repeat(np.arange(count), size)
    lit_at[example, rows.reshape(-1).astype(np.int64), columns(labels, size).reshape(-1)] = np.tile(
        np.arange(size, dtype=np.int16), count
    )
    frames = lit_at[:, None, :, :] <= np.arange(size, dtype=np.int16)[None, :, None, None]
    return frames.astype(np.uint8)[..., None]


def pixel_path(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The pixel each frame lights, [count, T, 2] uint8 (row, column): the video in 2T bytes."""
    return np.stack([rows, columns(labels, rows.shape[1]).astype(np.uint8)], axis=-1)


def generate(seed: int, split: str, start: int, count: int, size: int) -> dict[str, np.ndarray]:
    """Examples start..start+count-1 of a split: video, label, rows and path, as arrays."""
    labels, rows = make_paths(seed, split, start, count, size)
    return {"video": render(labels, rows), "label": labels, "rows": rows, "path": pixel_path(labels, rows)}
