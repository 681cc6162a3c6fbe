"""The generator follows the dataset card's process exactly, and every example depends only on (seed, split, index)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pipeline import generator

sizes = st.integers(min_value=generator.MIN_SIZE, max_value=40)
seeds = st.integers(min_value=0, max_value=2**63 - 1)
splits = st.sampled_from(generator.SPLITS)
starts = st.integers(min_value=0, max_value=10**12)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, split=splits, start=starts, count=st.integers(1, 12), size=sizes)
def test_every_sequence_follows_the_spec(seed, split, start, count, size):
    examples = generator.generate(seed, split, start, count, size)
    video, labels, rows = examples["video"], examples["label"], examples["rows"]
    assert video.shape == (count, size, size, size, 1) and video.dtype == np.uint8
    assert set(np.unique(video)) <= {0, 1}
    assert set(np.unique(labels)) <= {0, 1}
    frames = video[..., 0]
    for example in range(count):
        path_rows = rows[example].astype(int)
        path_columns = np.arange(size) if labels[example] == 1 else size - 1 - np.arange(size)
        assert path_rows.min() >= 0 and path_rows.max() <= size - 1
        assert np.all(np.abs(np.diff(path_rows)) <= 1)
        previous = np.zeros((size, size), np.uint8)
        for t in range(size):
            frame = frames[example, t]
            # Frame t = frame t-1 plus exactly the pixel (r_t, c_t).
            added = frame.astype(int) - previous
            assert added.min() == 0 and added.sum() == 1
            assert added[path_rows[t], path_columns[t]] == 1
            assert frame.sum() == t + 1
            previous = frame.astype(int)
        # The last frame holds the whole path, one pixel in each column.
        assert np.array_equal(frames[example, -1].sum(axis=0), np.ones(size))
        assert np.array_equal(frames[example, -1].argmax(axis=0)[path_columns], path_rows)


@settings(max_examples=40, deadline=None)
@given(
    seed=seeds, split=splits, start=st.integers(0, 10**9), count=st.integers(1, 40), cut=st.integers(0, 40), size=sizes
)
def test_any_chunking_gives_the_same_examples(seed, split, start, count, cut, size):
    cut = min(cut, count)
    whole = generator.generate(seed, split, start, count, size)
    head = generator.generate(seed, split, start, cut, size) if cut else None
    tail = generator.generate(seed, split, start + cut, count - cut, size) if cut < count else None
    for name, values in whole.items():
        parts = [part[name] for part in (head, tail) if part is not None]
        assert np.array_equal(values, np.concatenate(parts))


def test_seed_and_split_choose_different_streams():
    base = generator.generate(7, "train", 0, 64, 20)["rows"]
    assert np.array_equal(base, generator.generate(7, "train", 0, 64, 20)["rows"])
    assert not np.array_equal(base, generator.generate(8, "train", 0, 64, 20)["rows"])
    for split in ("validation", "test"):
        other = generator.generate(7, split, 0, 64, 20)["rows"]
        shared = {row.tobytes() for row in base} & {row.tobytes() for row in other}
        assert not shared


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(size=1), "size must be between"),
        (dict(size=256), "size must be between"),
        (dict(size=2.5), "size must be an integer"),
        (dict(split="dev"), "split must be one of"),
        (dict(seed=-1), "seed must be"),
    ],
)
def test_bad_arguments_are_refused(bad, message):
    arguments = {"seed": 0, "split": "train", "start": 0, "count": 2, "size": 8, **bad}
    with pytest.raises(ValueError, match=message):
        generator.generate(**arguments)


# Distributions, with fixed seeds (so these never flake): a failure at p < 0.001 means the law is wrong.
P_FLOOR = 1e-3


@pytest.fixture(scope="module")
def large_sample():
    return generator.make_paths(seed=123, split="train", start=0, count=40_000, size=10)


def test_labels_are_balanced(large_sample):
    labels, _ = large_sample
    assert stats.binomtest(int(labels.sum()), len(labels), 0.5).pvalue > P_FLOOR


def test_start_rows_are_uniform(large_sample):
    _, rows = large_sample
    counts = np.bincount(rows[:, 0], minlength=10)
    assert stats.chisquare(counts).pvalue > P_FLOOR


def test_row_steps_are_uniform_inside_and_on_the_borders(large_sample):
    _, rows = large_sample
    before, after = rows[:, :-1].astype(int).ravel(), rows[:, 1:].astype(int).ravel()
    step = after - before
    inside = (before > 0) & (before < 9)
    inside_counts = [np.sum(step[inside] == delta) for delta in (-1, 0, 1)]
    assert stats.chisquare(inside_counts).pvalue > P_FLOOR
    top_counts = [np.sum(step[before == 0] == delta) for delta in (0, 1)]
    bottom_counts = [np.sum(step[before == 9] == delta) for delta in (-1, 0)]
    for counts in (top_counts, bottom_counts):
        assert min(counts) > 1000  # enough border visits to mean something
        assert stats.chisquare(counts).pvalue > P_FLOOR
    # And nothing else ever happens.
    assert np.all(np.isin(step[before == 0], (0, 1))) and np.all(np.isin(step[before == 9], (-1, 0)))


def test_the_smallest_size_alternates_between_its_two_rows():
    labels, rows = generator.make_paths(seed=0, split="test", start=0, count=20_000, size=2)
    assert set(np.unique(rows)) == {0, 1}
    assert stats.chisquare(np.bincount(rows[:, 1] == rows[:, 0])).pvalue > P_FLOOR
