"""Local paths, ``gs://`` paths and read-only ``hf://`` paths behind one small API.

Every stage of the pipeline reads and writes through this package, so that a path may be a local
file, a Google Cloud Storage object (``gs://bucket/key``) or, read-only, a file of a Hugging Face
dataset (``hf://datasets/OWNER/NAME[@REVISION][/path]``). Each function here hands the path to the
backend of its scheme (:class:`~tfpipe.storage.base.Backend`): :mod:`~tfpipe.storage.local`,
:mod:`~tfpipe.storage.gcs` (google-cloud-storage: client, deadlines, retries, error mapping) or
:mod:`~tfpipe.storage.hf` (huggingface_hub). :func:`tf_path` (:mod:`~tfpipe.storage.tf`) gives
TensorFlow its form of a path. Importing this package imports neither TensorFlow nor the clients.

Writes are atomic: a reader sees the old content or the new content, never a part. A file is
written whole under a temporary name (:mod:`~tfpipe.storage.staging`: the one temp naming, hidden
from listings) and then published by :func:`publish`: fsync'ed and renamed into place (and the
folder fsync'ed) locally, or uploaded in a single request to GCS, where an object becomes visible
only when its upload completes. Downloads go to a temporary name beside the destination and are
renamed at the end.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from tfpipe.storage.base import Backend, FileInfo, StorageError, StorageNotFoundError
from tfpipe.storage.gcs import (
    DEFAULT_GCS_DEADLINE_S,
    RESUMABLE_CHUNK_SIZE,
    RESUMABLE_THRESHOLD,
    GcsBackend,
    gcs_deadline_s,
    reset_clients,
)
from tfpipe.storage.hf import HfBackend, hf_commit
from tfpipe.storage.local import LocalBackend
from tfpipe.storage.paths import GS, HF, check_path, is_remote, join, scheme, split_gs
from tfpipe.storage.staging import (
    fsync_file,
    is_temp_name,
    local_temp_for,
    publish_local,
    remove_dead_temps,
    remove_temps,
)
from tfpipe.storage.tf import tf_path

__all__ = [
    "DEFAULT_GCS_DEADLINE_S",
    "GS",
    "HF",
    "RESUMABLE_CHUNK_SIZE",
    "RESUMABLE_THRESHOLD",
    "FileInfo",
    "StorageError",
    "StorageNotFoundError",
    "check_path",
    "delete",
    "download_file",
    "exists",
    "gcs_deadline_s",
    "hf_commit",
    "is_remote",
    "is_temp_name",
    "join",
    "list_file_infos",
    "list_files",
    "listdir",
    "local_temp_for",
    "makedirs",
    "open_binary",
    "open_text",
    "publish",
    "read_bytes",
    "remove_temps",
    "reset_clients",
    "size",
    "split_gs",
    "staged_output",
    "tf_path",
    "upload_file",
    "write_bytes",
]

_BACKENDS: dict[str, Backend] = {"local": LocalBackend(), "gs": GcsBackend(), "hf": HfBackend()}


def _backend(path: str) -> Backend:
    """The backend of ``path``'s scheme (StorageError for an unsupported one)."""
    return _BACKENDS[scheme(path)]


# -- queries --------------------------------------------------------------------------------------------


def exists(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is an existing file or directory (for GCS: an object or a non-empty prefix).

    A missing GCS bucket or Hugging Face repository raises :class:`StorageError` rather than
    returning False, so a typo in a bucket name is not mistaken for "not written yet".
    """
    path = os.fspath(path)
    return _backend(path).exists(path)


def size(path: str | os.PathLike[str]) -> int:
    """Size of a file in bytes; :class:`StorageNotFoundError` if it does not exist."""
    path = os.fspath(path)
    return _backend(path).size(path)


def list_file_infos(prefix: str | os.PathLike[str], suffix: str = "") -> list[FileInfo]:
    """Every file below the directory ``prefix`` (recursively) whose name ends with ``suffix``.

    If ``prefix`` names a file, the list holds that file alone (if it matches ``suffix``).
    Sorted by path; paths have the same form as ``prefix`` (a local path as given, ``gs://...`` or
    ``hf://...``). A missing directory gives an empty list; a missing bucket or repository raises.
    Temporary files of unfinished writes are left out.
    """
    prefix = os.fspath(prefix)
    return _backend(prefix).list_file_infos(prefix, suffix)


def list_files(prefix: str | os.PathLike[str], suffix: str = "") -> list[str]:
    """Paths of :func:`list_file_infos` (recursive, sorted, same form as ``prefix``)."""
    return [info.path for info in list_file_infos(prefix, suffix)]


def listdir(path: str | os.PathLike[str]) -> list[str]:
    """Sorted names (not paths) of the files and sub-directories directly in ``path``; [] if missing."""
    path = os.fspath(path)
    return _backend(path).listdir(path)


# -- reading --------------------------------------------------------------------------------------------


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a file (GCS downloads are checksum-verified by the client)."""
    path = os.fspath(path)
    return _backend(path).read_bytes(path)


def open_binary(path: str | os.PathLike[str]) -> IO[bytes]:
    """A streaming binary reader (for files too large to read whole, e.g. Kaggle's train.csv)."""
    path = os.fspath(path)
    return _backend(path).open_binary(path)


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """A streaming UTF-8 text reader over :func:`open_binary`."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="")


def download_file(src: str | os.PathLike[str], local_path: str | os.PathLike[str]) -> None:
    """Copy ``src`` (any kind) to the local file ``local_path``, atomically; folders are created."""
    src, local_path = os.fspath(src), os.fspath(local_path)
    if is_remote(local_path):
        raise StorageError(f"{local_path}: download_file needs a local destination")
    backend = _backend(src)
    parent = os.path.dirname(local_path)
    if parent:
        makedirs(parent)
    backend.download_file(src, local_path)


# -- writing --------------------------------------------------------------------------------------------


def write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (creating local folders).

    With ``overwrite=False`` an existing file is left alone and :class:`StorageError` ("already
    exists") is raised; on GCS this is ``if_generation_match=0`` with a conditional retry policy.
    """
    path = os.fspath(path)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StorageError(f"{path}: write_bytes needs bytes, got {type(data).__name__}")
    _backend(path).write_bytes(path, data, overwrite)


def upload_file(
    local_path: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = True
) -> None:
    """Copy the local file ``local_path`` to ``dst`` (local or ``gs://``), atomically.

    GCS: files above ``RESUMABLE_THRESHOLD`` go up as a resumable upload in ``RESUMABLE_CHUNK_SIZE``
    chunks (each chunk retried on its own); the object appears only when the upload completes.
    """
    local_path, dst = os.fspath(local_path), os.fspath(dst)
    if is_remote(local_path):
        raise StorageError(f"{local_path}: upload_file needs a local source")
    try:
        os.path.getsize(local_path)
        if os.path.isdir(local_path):
            raise StorageError(f"{local_path}: is a directory")
    except FileNotFoundError:
        raise StorageNotFoundError(f"{local_path}: no such file") from None
    except OSError as err:
        raise StorageError(f"{local_path}: {err.strerror or err}") from None
    _backend(dst).upload_file(local_path, dst, overwrite)


def delete(path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """Delete one file (object); :class:`StorageNotFoundError` if missing unless ``missing_ok``."""
    path = os.fspath(path)
    _backend(path).delete(path, missing_ok)


def makedirs(path: str | os.PathLike[str]) -> None:
    """Create a local folder and its parents; a no-op for ``gs://`` (GCS has no folders)."""
    path = os.fspath(path)
    _backend(path).makedirs(path)


# -- publishing a finished local file ---------------------------------------------------------------------


def publish(local: str, target: str | os.PathLike[str]) -> None:
    """Move the finished, closed local file ``local`` (from :func:`local_temp_for`) to ``target``.

    The file is fsync'ed first. A local target is then replaced by a rename (and its folder
    fsync'ed); a ``gs://`` target is created by one upload, after which ``local`` is deleted.
    Either way a reader never sees a part of the file. On failure ``local`` is left to the caller.
    """
    target = os.fspath(target)
    if is_remote(target):
        fsync_file(local)
        upload_file(local, target)
        os.unlink(local)
        # the local temps of this name that killed writers left in the system temp folder
        remove_dead_temps(os.path.dirname(local), target.rstrip("/").rsplit("/", 1)[-1])
    else:
        publish_local(local, target)


@contextmanager
def staged_output(target: str | os.PathLike[str], suffix: str = "") -> Iterator[str]:
    """Yield a local temporary path; on success it is published to ``target``, on error deleted."""
    local = local_temp_for(target, suffix)
    try:
        yield local
        publish(local, target)
    finally:
        if os.path.exists(local):
            os.unlink(local)
