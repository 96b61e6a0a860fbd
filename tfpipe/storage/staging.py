"""Temporary files and atomic publishing: the one naming of temps and the one local publish step.

Every file the pipeline writes is first written whole under a temporary name, then published:
fsync'ed and renamed into place (a local target) or uploaded in one request (``gs://``, see
:func:`tfpipe.storage.publish`). A reader therefore sees the old content or the new content,
never a part, and a killed writer leaves at most a temp file, which listings hide and
:func:`remove_temps` deletes.

A temp for the target ``NAME`` is ``.NAME.PID-HOST-RANDOM.tfpipe-tmp[SUFFIX]``: hidden, beside the
target (so that the rename is atomic), and naming its target and its writer (process id, and a
hash of the host name), so that a writer deletes only the leftovers of the files it writes, and
publishing ``NAME`` deletes the temps of ``NAME`` whose writer, on this host, is dead
(:func:`remove_dead_temps`). A temp for a temp (a copy staged into a staged file) is named after
the final target, never ``...tfpipe-tmp...tfpipe-tmp``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import socket
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO

from tfpipe.storage.base import StorageError
from tfpipe.storage.paths import is_remote

TEMP_MARK = ".tfpipe-tmp"
_TEMP_RE = re.compile(r"\.(?P<target>.+)\.[^./]+\.tfpipe-tmp.*", re.DOTALL)
#: Temps of the shard writer of earlier versions (``.part-...-JJJJJ.tmp-PID``), still cleaned up.
_LEGACY_TEMP_RE = re.compile(r"\.(?P<target>.+)\.tmp-[0-9]+")
_WRITER_RE = re.compile(r"\.(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{6})-[0-9a-f]{8}\.tfpipe-tmp")
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temp_name(target_name: str, suffix: str = "") -> str:
    """A new temp name for the file ``target_name`` (a base name).

    ``.NAME.PID-HOST-RANDOM.tfpipe-tmp[SUFFIX]``; ``target_name`` may itself be a temp name: the new
    name is then one of its final target (never a doubled suffix).
    """
    target_name = temp_target(target_name) or target_name
    return f".{target_name}.{os.getpid()}-{_HOST}-{uuid.uuid4().hex[:8]}{TEMP_MARK}{suffix}"


def temp_target(name: str) -> str | None:
    """The target's base name if ``name`` is a temp name (:func:`temp_name`), else None."""
    match = _TEMP_RE.fullmatch(name) or _LEGACY_TEMP_RE.fullmatch(name)
    return match["target"] if match else None


def is_temp_name(name: str) -> bool:
    """True if the base name ``name`` is a temp of an unfinished write (listings leave these out)."""
    return temp_target(name) is not None


def new_temp_file(folder: str, target_name: str, suffix: str = "") -> str:
    """Create an empty temp file for ``target_name`` in ``folder`` and return its path.

    Its mode is that of any new file (``0o666`` less the umask), so a published file is as
    readable as any other.
    """
    while True:
        path = os.path.join(folder, temp_name(target_name, suffix))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path


def local_temp_for(target: str | os.PathLike[str], suffix: str = "") -> str:
    """A new empty local file to write ``target``'s content into before :func:`tfpipe.storage.publish`.

    Beside a local target (so that the rename is atomic; its folder is created), in the system temp
    folder for a remote one. Its name is hidden from listings. ``suffix``: e.g. ``.keras``.
    """
    target = os.fspath(target)
    if is_remote(target):
        folder = tempfile.gettempdir()
    else:
        folder = os.path.dirname(os.path.abspath(target))
        os.makedirs(folder, exist_ok=True)
    return new_temp_file(folder, posixpath.basename(target.rstrip("/")), suffix)


def fsync_file(path: str) -> None:
    """Flush a closed file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_local(temp: str, target: str, overwrite: bool = True) -> None:
    """fsync the closed file ``temp``, move it to ``target`` (same folder) and fsync the folder.

    With ``overwrite=False`` an existing ``target`` is left alone (``FileExistsError``). OSError on
    failure; ``temp`` is then left for the caller to delete.
    """
    fsync_file(temp)
    if overwrite:
        os.replace(temp, target)
    else:
        os.link(temp, target)  # fails if `target` exists: create-only, still atomic
        os.unlink(temp)
    _fsync_dir(os.path.dirname(target) or ".")
    name = os.path.basename(target)
    remove_dead_temps(os.path.dirname(target) or ".", temp_target(name) or name)


def _writer_dead(name: str) -> bool:
    """True if the temp ``name`` was written by a process of this host that no longer runs.

    A temp of another host, of an older naming or of a live process (this one included) is kept.
    """
    match = _WRITER_RE.search(name)
    if match is None or match["host"] != _HOST:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: another user's live process
        return False
    return False


def remove_dead_temps(folder: str, target_name: str) -> list[str]:
    """Delete the temps of ``target_name`` in the local ``folder`` whose writer is dead (killed runs)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if temp_target(entry) == target_name and _writer_dead(entry):
                path = os.path.join(folder, entry)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
    return removed


@contextmanager
def atomic_file(path: str, overwrite: bool = True) -> Iterator[IO[bytes]]:
    """Yield a temp file beside the local ``path``; on success publish it there, else delete it.

    Failures are StorageErrors naming the file (``"PATH: already exists"`` with ``overwrite=False``).
    """
    temp = None
    try:
        temp = new_temp_file(os.path.dirname(path) or ".", os.path.basename(path))
        with open(temp, "wb") as f:
            yield f
        publish_local(temp, path, overwrite)
    except StorageError:
        raise  # from the caller's block (StorageNotFoundError is an OSError too)
    except FileExistsError:
        raise StorageError(f"{path}: already exists") from None
    except OSError as err:
        raise StorageError(f"{err.filename or path}: {err.strerror or err}") from None
    finally:
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


def remove_temps(
    folder: str | os.PathLike[str], names: Iterable[str] | None = None, *, prefix: str = ""
) -> list[str]:
    """Delete temp files that killed writers left in ``folder``; returns the deleted paths.

    Only temps of targets whose name starts with ``prefix`` and, with ``names``, is one of
    ``names`` are touched, so writers of other files in the same folder (another encode shard)
    are safe. Remote folders have no such files (uploads are atomic).
    """
    folder = os.fspath(folder)
    if is_remote(folder) or not os.path.isdir(folder):
        return []
    wanted = set(names) if names is not None else None
    removed = []
    for entry in os.listdir(folder):
        target = temp_target(entry)
        if target is None or not target.startswith(prefix) or (wanted is not None and target not in wanted):
            continue
        path = os.path.join(folder, entry)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed
