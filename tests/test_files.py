"""trainer.files: a file is written whole or not at all; a full disk is one line saying what to do."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest
import tensorflow as tf

from pipeline import cli
from trainer import files


def test_a_file_is_written_whole_under_its_name_and_its_folders_made(tmp_path):
    path = tmp_path / "a" / "b" / "notes.txt"
    assert files.write_atomically(str(path), "whole\n") == str(path)
    assert path.read_text() == "whole\n" and os.listdir(path.parent) == ["notes.txt"]
    files.write_atomically(str(path), b"again")
    assert path.read_bytes() == b"again" and files.read_text(str(path)) == "again"
    assert files.sha256(str(path)) == hashlib.sha256(b"again").hexdigest()


def test_a_write_that_fails_leaves_no_partial_file_nor_the_folders_it_made(tmp_path):
    with pytest.raises(TypeError):  # content neither text nor bytes: the write fails midway
        files.write_atomically(str(tmp_path / "new" / "deeper" / "x.txt"), 12345)
    assert os.listdir(tmp_path) == []


def test_what_a_killed_run_left_half_written_is_removed_and_nothing_else(tmp_path):
    (tmp_path / "history.csv").write_text("kept")
    (tmp_path / f"history.csv{files.PARTIAL}").write_text("half")
    (tmp_path / f"model.keras{files.PARTIAL}.keras").write_text("half")
    (tmp_path / f"export{files.PARTIAL}").mkdir()
    (tmp_path / f"export{files.PARTIAL}" / "saved_model.pb").write_text("half")
    (tmp_path / f"notes{files.PARTIAL}.txt").write_text("a file of the user's, named alike")
    files.remove_partials(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["history.csv", f"notes{files.PARTIAL}.txt"]
    os.remove(tmp_path / f"notes{files.PARTIAL}.txt")
    files.remove_partials(str(tmp_path / "missing"))  # nothing to do
    files.remove(str(tmp_path / "history.csv"))
    files.remove(str(tmp_path / "history.csv"))  # already gone: no error
    assert os.listdir(tmp_path) == []


def test_a_full_disk_from_python_or_tensorflow_is_a_fault_naming_where(tmp_path):
    full = pytest.raises(cli.FaultError, match=r"^no space left on the device writing /d/f; free some")
    with full, files.disk_full_is_a_fault("free some space"):
        raise OSError(errno.ENOSPC, "No space left on device", "/d/f")
    message = "/m/ckpt/state/variables.data-00000-of-00001.tempstate123; No space left on device"
    with pytest.raises(cli.FaultError, match=r"writing /m/ckpt/state; resume"), files.disk_full_is_a_fault("resume"):
        raise tf.errors.ResourceExhaustedError(None, None, message)
    with pytest.raises(PermissionError), files.disk_full_is_a_fault("x"):  # other errors stay what they are
        raise PermissionError(errno.EACCES, "Permission denied")
