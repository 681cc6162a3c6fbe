"""One writer per model_dir: the run (or export) that writes MODEL_DIR holds MODEL_DIR/.trainer.lock.

The hold is an exclusive flock(2) on that file, which the kernel releases when the holder's process ends,
however it ends (SIGKILL and the out-of-memory killer included): the next command takes it over with no
manual step. The file also holds a JSON note of the holder (command, host, pid, start time), read only to
name the holder in the refusal. A command refused after it took the hold of a folder it made removes the
folder again (nothing written); a hold is taken only on the file the path names at that moment, so a
process that opened the file before it was removed takes no hold on the removed one.

flock is local to one machine's kernel (and to NFS servers that pass locks on). Object stores such as
gs:// have no locks at all (no atomic create-if-absent through tf.io.gfile), so a gs:// model_dir is not
locked: one job per gs:// model_dir is then the user's promise, as docs/training.md says.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from pipeline import cli
from trainer import outputs

LOCK_FILE = outputs.LOCK_FILE


def lock_path(model_dir: str) -> str:
    return os.path.join(model_dir, LOCK_FILE)


def is_lockable(model_dir: str) -> bool:
    """Whether model_dir is on a file system that has locks (a local or mounted folder, not gs://)."""
    return "://" not in model_dir


class Hold:
    """The hold on one model_dir; released by release() or by the end of the process."""

    def __init__(self, model_dir: str, descriptor: int | None, made_folder: bool = False):
        self.model_dir, self.descriptor, self.made_folder = model_dir, descriptor, made_folder

    def release(self):
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing the last descriptor of the file releases the flock
            self.descriptor = None

    def release_untouched(self):
        """Releases the hold of a command refused before it wrote anything: a folder it made is removed again."""
        if self.descriptor is not None and self.made_folder and os.listdir(self.model_dir) == [LOCK_FILE]:
            os.remove(lock_path(self.model_dir))
            os.rmdir(self.model_dir)
        self.release()


def describe_holder(path: str) -> str:
    """'trainer.task (pid 123 on host, since 2026-12-02 18:00:00 UTC)', from the holder's note."""
    try:
        with open(path, encoding="utf-8") as file:
            note = json.loads(file.read() or "{}")
    except (OSError, ValueError):
        note = {}
    if not isinstance(note, dict) or "pid" not in note:
        return "another process (it has not written its note yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(note.get("started", 0)))
    return f"{note.get('command', 'a trainer command')} (pid {note['pid']} on {note.get('host', '?')}, since {since})"


def refuse_if_held(model_dir: str):
    """A UsageError naming the holder when a live process holds model_dir; writes nothing (checked first, so that
    a second command is told that before anything about what the model_dir holds)."""
    path = lock_path(model_dir)
    if not is_lockable(model_dir) or not os.path.isfile(path):
        return
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # removed meanwhile, or unreadable: hold() will say
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise in_use(model_dir, path) from None
    finally:
        os.close(descriptor)


def in_use(model_dir: str, path: str) -> cli.UsageError:
    return cli.UsageError(
        f"--model_dir {model_dir} is in use by {describe_holder(path)}: one run writes a model_dir at a time; "
        "wait for it to end (or stop it), or give another --model_dir"
    )


def hold(model_dir: str, command: str) -> Hold:
    """Takes the hold on model_dir (made if missing) for this process, or a UsageError naming its holder.

    gs:// and other object stores: nothing to hold (see the module's docstring); returns an empty Hold.
    """
    if not is_lockable(model_dir):
        return Hold(model_dir, None)
    made_folder = not os.path.isdir(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    path = lock_path(model_dir)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise cli.UsageError(f"--model_dir {model_dir}: cannot lock {path} ({error.strerror})") from None
            raise in_use(model_dir, path) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(descriptor).st_ino:
            break
        os.close(descriptor)  # the file was removed (by a refused command) after this one opened it: again
    note = {"command": command, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    hold = Hold(model_dir, descriptor, made_folder)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(note) + "\n").encode(), 0)
    except BaseException:  # a full disk: the hold, and a folder made for it, go again
        hold.release_untouched()
        raise
    return hold
