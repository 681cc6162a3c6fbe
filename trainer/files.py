"""Files written whole or not at all, on local disks and gs:// alike.

Each file is written under a temporary name beside its final one and renamed when complete, so a
kill or a full disk midway leaves at most a `*.partial` file, never a truncated file under the real
name. Temporary files left by a killed run are removed by remove_partials.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil

import tensorflow as tf

from pipeline import cli
from trainer import outputs

PARTIAL = outputs.PARTIAL


def write_atomically(path: str, content: str | bytes) -> str:
    partial = path + PARTIAL
    mode = "wb" if isinstance(content, bytes) else "w"
    created = missing_folders(os.path.dirname(path))
    try:
        tf.io.gfile.makedirs(os.path.dirname(path) or ".")
        with tf.io.gfile.GFile(partial, mode) as file:
            file.write(content)
        tf.io.gfile.rename(partial, path, overwrite=True)
    except BaseException:
        remove(partial)
        for folder in created:  # innermost first: a failed write leaves no empty folders behind either
            if tf.io.gfile.isdir(folder) and not tf.io.gfile.listdir(folder):
                remove(folder)
        raise
    return path


def missing_folders(folder: str) -> list[str]:
    """The folders that making `folder` would create, innermost first."""
    missing = []
    while folder and folder not in ("/", ".") and not tf.io.gfile.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder.rstrip("/"))
    return missing


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path) as file:
        return file.read()


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def remove(path: str):
    """Removes a file or a folder tree if it exists (gs:// included)."""
    if not tf.io.gfile.exists(path):
        return
    if "://" in path:
        tf.io.gfile.rmtree(path) if tf.io.gfile.isdir(path) else tf.io.gfile.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def remove_partials(folder: str):
    """Removes what a killed run left half-written in folder: its files under their temporary names
    (outputs.is_partial), and nothing else."""
    if not tf.io.gfile.isdir(folder):
        return
    for name in tf.io.gfile.listdir(folder):
        if outputs.is_partial(name):
            remove(os.path.join(folder, name.rstrip("/")))


@contextlib.contextmanager
def disk_full_is_a_fault(what_to_do: str):
    """A full disk, from Python or from TensorFlow, becomes a one-line FaultError (exit 1) saying what_to_do."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise cli.FaultError(
            f"no space left on the device writing {error.filename or 'a file'}; {what_to_do}"
        ) from None
    except tf.errors.OpError as error:
        if "No space left on device" not in error.message:
            raise
        found = re.search(r"(/\S+?)(?:\.tempstate\d+)?[;:]? No space left", error.message)
        where = os.path.dirname(found.group(1)) if found else "a file"
        raise cli.FaultError(f"no space left on the device writing {where}; {what_to_do}") from None
