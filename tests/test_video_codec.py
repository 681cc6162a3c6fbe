"""compress_video is an exact zlib encoder: every output inflates to video.tobytes()."""

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline import generator, video_codec


def assert_round_trip(video: np.ndarray) -> bytes:
    out = video_codec.compress_video(video)
    assert zlib.decompress(out) == video.tobytes()
    return out


def takes_fast_path(video: np.ndarray) -> bool:
    frames = np.ascontiguousarray(video).reshape(len(video), -1)
    return video_codec.new_pixels(frames) is not None


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    split=st.sampled_from(generator.SPLITS),
    start=st.integers(0, 10**9),
    size=st.integers(generator.MIN_SIZE, 64),
)
def test_moving_line_videos_round_trip_on_the_fast_path(seed, split, start, size):
    for video in generator.generate(seed, split, start, 2, size)["video"]:
        assert takes_fast_path(video)
        assert_round_trip(video)


@st.composite
def nested_videos(draw):
    """Videos whose frame t is frame t-1 plus one new 1 anywhere, of any frame shape."""
    frame_shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12))
    frame_size = int(np.prod(frame_shape))
    frame_count = draw(st.integers(2, min(frame_size, 40))) if frame_size >= 2 else 2
    pixels = draw(st.permutations(range(frame_size)))[:frame_count]
    lit_at = np.full(frame_size, frame_count)
    lit_at[pixels] = np.arange(len(pixels))
    return (lit_at <= np.arange(frame_count)[:, None]).astype(np.uint8).reshape(frame_count, *frame_shape)


@settings(max_examples=80, deadline=None)
@given(video=nested_videos())
def test_any_nested_video_round_trips(video):
    assert_round_trip(video)


@settings(max_examples=80, deadline=None)
@given(
    video=hnp.arrays(
        np.uint8, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9), elements=st.integers(0, 1)
    )
)
def test_arbitrary_binary_arrays_round_trip(video):
    assert_round_trip(video)


@settings(max_examples=60, deadline=None)
@given(video=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)))
def test_arbitrary_uint8_arrays_round_trip(video):
    out = assert_round_trip(video)
    if video.size and video.max() > 1:
        assert out == zlib.compress(video.tobytes())


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.float32, bool])
def test_other_dtypes_fall_back_to_zlib(dtype):
    video = generator.generate(0, "train", 0, 1, 6)["video"][0].astype(dtype)
    assert video_codec.compress_video(video) == zlib.compress(video.tobytes())


def test_near_misses_are_still_exact():
    video = generator.generate(1, "test", 0, 1, 12)["video"][0]
    frames = video.reshape(12, -1)
    ones = np.flatnonzero(video)
    changes = {
        "extra one": (0, 5),
        "missing one": tuple(divmod(int(ones[-1]), frames.shape[1])),
        "a two": tuple(divmod(int(ones[3]), frames.shape[1])),
    }
    for name, (frame, pixel) in changes.items():
        broken = frames.copy()
        broken[frame, pixel] = 2 if name == "a two" else 1 - broken[frame, pixel]
        assert not takes_fast_path(broken), name
        assert_round_trip(broken.reshape(video.shape))
    # Two pixels swapping the frame they turn on in, and a pixel turning off again.
    swapped = frames.copy()
    first, second = np.flatnonzero(frames[1] != frames[0])[0], np.flatnonzero(frames[0])[0]
    swapped[0, second], swapped[0, first] = 0, 1
    assert takes_fast_path(swapped)  # still a moving-line video, in another order
    assert_round_trip(swapped)
    flicker = frames.copy()
    flicker[5, np.flatnonzero(frames[4])[0]] = 0
    assert not takes_fast_path(flicker)
    assert_round_trip(flicker)


@pytest.mark.parametrize(
    "video",
    [
        np.zeros(0, np.uint8),
        np.zeros((0, 5), np.uint8),
        np.zeros((3, 0), np.uint8),
        np.ones(1, np.uint8),
        np.array(1, np.uint8),
        np.zeros((50, 50, 50, 1), np.uint8),
        np.ones((50, 50, 50, 1), np.uint8),
        np.array([[1], [1]], np.uint8),  # two frames of one pixel: not two new pixels
        np.array([[0, 1], [1, 1]], np.uint8),  # the smallest moving-line video
    ],
    ids=lambda video: f"{video.shape}",
)
def test_edge_cases(video):
    assert_round_trip(video)


def test_views_and_memory_layouts():
    video = generator.generate(2, "train", 0, 1, 20)["video"][0]
    for view in (video[:, ::-1], np.asfortranarray(video), video[..., 0], video.reshape(20, 400)):
        assert_round_trip(view)
    assert takes_fast_path(video[:, ::-1]) and takes_fast_path(video.reshape(20, 400))


@pytest.mark.parametrize("size", [100, 181])
def test_large_moving_line_videos_up_to_the_window(size):
    video = generator.generate(5, "train", 0, 1, size)["video"][0]
    assert takes_fast_path(video)
    assert_round_trip(video)


@pytest.mark.parametrize("frame_size", [3, 258, 259, 517, 32768])
@pytest.mark.parametrize("order", ["first and last first", "last and first first", "spread"])
def test_pixels_at_the_ends_of_frames(frame_size, order):
    frame_count = min(frame_size, 7)
    pixels = {
        "first and last first": [0, frame_size - 1, 1, frame_size - 2],
        "last and first first": [frame_size - 1, 0, frame_size - 2, 1],
        "spread": list(range(0, frame_size, max(1, frame_size // frame_count))),
    }[order][:frame_count]
    video = np.zeros((len(pixels), frame_size), np.uint8)
    for frame, pixel in enumerate(pixels):
        video[frame:, pixel] = 1
    assert takes_fast_path(video)
    assert_round_trip(video)


def test_frames_beyond_the_window_fall_back_to_zlib():
    # A copy of the previous frame cannot reach back more than 32 KiB.
    video = np.zeros((2, 32769), np.uint8)
    video[:, 7] = 1
    video[1, 9] = 1
    assert video_codec.compress_video(video) == zlib.compress(video.tobytes())


def test_size_50_videos_are_smaller_than_zlib_level_6():
    videos = generator.generate(0, "train", 0, 300, 50)["video"]
    ours = [len(assert_round_trip(video)) for video in videos]
    theirs = [len(zlib.compress(video.tobytes(), 6)) for video in videos]
    assert np.mean(ours) <= 520
    assert np.mean(ours) <= np.mean(theirs)


def test_batch_matches_single_videos():
    videos = generator.generate(3, "validation", 0, 4, 10)["video"]
    assert video_codec.compress_videos(videos) == [video_codec.compress_video(video) for video in videos]


@settings(max_examples=60, deadline=None)
@given(
    frequencies=st.lists(st.integers(0, 10**6), min_size=1, max_size=40),
    max_bits=st.integers(4, 15),
)
def test_huffman_code_lengths_form_a_complete_limited_code(frequencies, max_bits):
    frequencies = np.array(frequencies + [0, 0])  # room for the partner of a lone symbol
    if np.count_nonzero(frequencies) > 2**max_bits:
        with pytest.raises(ValueError):
            video_codec.huffman_code_lengths(frequencies, max_bits)
        return
    lengths = video_codec.huffman_code_lengths(frequencies, max_bits)
    used = lengths > 0
    assert np.all(used[frequencies > 0]) and lengths.max() <= max_bits
    assert sum(2.0 ** -lengths[used]) == 1  # complete: inflate rejects anything else


def test_huffman_code_lengths_are_limited_on_fibonacci_frequencies():
    fibonacci = [1, 1]
    while len(fibonacci) < 30:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    lengths = video_codec.huffman_code_lengths(np.array(fibonacci), max_bits=15)
    assert lengths.max() == 15 and sum(2.0**-lengths) == 1


def test_benchmark_reports_every_encoder(capsys):
    summary = video_codec.benchmark(count=3, size=8, repeats=1)
    for name in ("zlib1", "zlib6", "zlib9", "ours"):
        assert summary[f"{name}_videos_per_s"] > 0 and summary[f"{name}_mean_bytes"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")


def test_tensorflow_decodes_the_stream():
    tf = pytest.importorskip("tensorflow")
    videos = generator.generate(4, "train", 0, 3, 50)["video"]
    for video in videos:
        out = video_codec.compress_video(video)
        decoded = tf.io.decode_raw(tf.io.decode_compressed(out, compression_type="ZLIB"), tf.uint8)
        assert np.array_equal(decoded.numpy(), video.reshape(-1))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    split=st.sampled_from(generator.SPLITS),
    start=st.integers(0, 10**12),
    size=st.sampled_from([2, 3, 8, 50, 181, 182, 255]),
)
def test_streams_from_paths_are_the_streams_of_the_drawn_videos(seed, split, start, size):
    count = 2 if size > 100 else 9
    labels, rows = generator.make_paths(seed, split, start, count, size)
    videos = generator.render(labels, rows)
    assert video_codec.compress_paths(labels, rows) == [video_codec.compress_video(video) for video in videos]


def test_streams_from_paths_of_an_empty_batch():
    assert video_codec.compress_paths(np.zeros(0, np.int64), np.zeros((0, 8), np.uint8)) == []
