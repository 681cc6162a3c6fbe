"""pipeline.show's drawing: every frame pixel for pixel (no resampling), even separators, labelled tiles."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import SMALL, run_command, run_in_process
from PIL import Image

from pipeline import generator, show


def sequences(count: int, size: int):
    made = generator.generate(7, "train", 0, count, size)
    return [(video[..., 0], int(label)) for video, label in zip(made["video"], made["label"], strict=True)]


def drawn(frame: np.ndarray, scale: int) -> np.ndarray:
    return np.where(np.kron(frame, np.ones((scale, scale), np.uint8)) > 0, show.LIT, show.UNLIT).astype(np.uint8)


def find(image: np.ndarray, block: np.ndarray) -> list[tuple[int, int]]:
    """Where block appears in image, exactly."""
    height, width = block.shape
    first_row = block[0].tobytes()
    found = []
    for top in range(image.shape[0] - height + 1):
        row = image[top].tobytes()
        left = row.find(first_row)
        while left != -1:
            if np.array_equal(image[top : top + height, left : left + width], block):
                found.append((top, left))
            left = row.find(first_row, left + 1)
    return found


def test_a_grid_holds_each_frame_pixel_for_pixel_between_separators_of_one_width():
    rng = np.random.default_rng(0)
    frames = list(rng.integers(0, 2, (5, 7, 7), np.uint8))
    grid = show.frame_grid(frames, columns=3, scale=2)
    cell = 7 * 2 + show.GAP
    assert grid.shape == (2 * cell + show.GAP, 3 * cell + show.GAP)
    for index, frame in enumerate(frames):
        top, left = show.GAP + (index // 3) * cell, show.GAP + (index % 3) * cell
        np.testing.assert_array_equal(grid[top : top + 14, left : left + 14], drawn(frame, 2))
    separators = np.ones(grid.shape, bool)
    for row in range(2):
        for column in range(3):
            top, left = show.GAP + row * cell, show.GAP + column * cell
            separators[top : top + 14, left : left + 14] = False
    assert (grid[separators] == show.SEPARATOR).all()


@pytest.mark.parametrize("size, count", [(50, 2), (8, 3), (3, 2)])
def test_a_png_holds_every_frame_unresampled_in_rows_of_equal_length(tmp_path, size, count):
    drawn_sequences = sequences(count, size)
    show.draw_png(drawn_sequences, str(tmp_path / "strips.png"))
    with Image.open(tmp_path / "strips.png") as file:
        image = np.asarray(file.convert("L"))
    scale = -(-show.FRAME_PIXELS // size)
    columns = show.balanced_columns(size, size * scale, show.MAX_WIDTH)
    assert image.shape[1] <= show.MAX_WIDTH + 200  # the grid within MAX_WIDTH, plus the labels' margin
    for video, _ in drawn_sequences:
        grid = show.frame_grid(list(video), columns, scale)
        assert find(image, grid), "a sequence's frames are not in the image as drawn"


def test_a_gif_shows_each_frame_of_each_sequence_under_its_label(tmp_path):
    drawn_sequences = sequences(3, 8)
    show.draw_gif(drawn_sequences, str(tmp_path / "moving.gif"))
    scale = -(-2 * show.FRAME_PIXELS // 8)
    with Image.open(tmp_path / "moving.gif") as file:
        assert file.n_frames == 8
        for frame in range(8):
            file.seek(frame)
            image = np.asarray(file.convert("L"))
            for video, _ in drawn_sequences:
                places = find(image, drawn(video[frame], scale))
                assert places, f"frame {frame} of a sequence is not in the picture"
                top, left = places[0]
                band = image[max(0, top - show.LABEL_HEIGHT) : top - show.GAP, left : left + 8 * scale]
                assert (band < 128).sum() > 10, "no label above the tile"
            assert (image[: show.TITLE_HEIGHT] < 128).sum() > 10, "no frame number on top"


@pytest.mark.slow
def test_show_draws_png_strips_and_gif_animations(small_data_dir, tmp_path):
    from PIL import Image

    png, gif = tmp_path / "strips.png", tmp_path / "moving.gif"
    (tmp_path / "strips.png.partial.png").write_text("a file of the user's")  # named as show's drafts once were
    for out in (png, gif):
        result = run_command("-m", "pipeline.show", f"--data_dir={small_data_dir}", "--num=3", f"--out={out}")
        assert result.returncode == 0, result.stderr
        assert "drew 3 train sequences" in result.stderr
    with Image.open(png) as image:
        assert image.width > 3 * image.height / 2  # strips of frames are wide
    with Image.open(gif) as image:
        assert image.n_frames == SMALL["size"]  # one GIF frame per video frame
    assert sorted(os.listdir(tmp_path)) == ["moving.gif", "strips.png", "strips.png.partial.png"]  # no leftovers
    assert (tmp_path / "strips.png.partial.png").read_text() == "a file of the user's"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out={tmp}/x.jpg"], "--out must end in .png or .gif"),
        (["--out={tmp}/missing/x.png"], "does not exist"),
        (["--out={tmp}/x.png", "--split=dev"], "--split 'dev' not in the dataset"),
        (["--out={tmp}/x.png", "--size=9"], "no moving_line/size_9"),
        (["--out={tmp}/x.png", "--num=0"], "expected a number >= 1"),
    ],
)
def test_bad_show_flags_get_one_line_and_exit_2(small_data_dir, tmp_path, flags, message, capfd):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    result = run_in_process("pipeline.show", [f"--data_dir={small_data_dir}", *flags], capfd)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # the refusal alone: nothing said about reading first
    assert line.startswith("pipeline.show: error: ") and message in line, result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_asking_for_more_sequences_than_a_split_holds_draws_them_all_and_says_so(tiny_built_data_dir, tmp_path, capfd):
    result = run_in_process(
        "pipeline.show",
        [f"--data_dir={tiny_built_data_dir}", "--split=test", "--num=10", f"--out={tmp_path}/x.png"],
        capfd,
    )
    assert result.returncode == 0, result.stderr
    reading, drew = result.stderr.strip().splitlines()
    assert reading.startswith("[pipeline.show] reading 8 test sequences (all it holds: --num 10 is more) from ")
    assert drew.startswith("[pipeline.show] drew 8 test sequences (")


def test_show_on_an_empty_data_dir_says_to_generate_first(tmp_path, capfd):
    result = run_in_process("pipeline.show", [f"--data_dir={tmp_path}", f"--out={tmp_path}/x.png"], capfd)
    assert result.returncode == 2 and "run `python -m pipeline.generate` first" in result.stderr
