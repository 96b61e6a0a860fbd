"""What every storage backend implements, and the errors and the listing record they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol, TypeVar

T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the path and the problem on one line."""

    __module__ = "tfpipe.storage"  # its public home (tracebacks, pickling)


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The file (object) does not exist; also a ``FileNotFoundError``."""

    __module__ = "tfpipe.storage"


@dataclass(frozen=True)
class FileInfo:
    """A listed file: full path, size in bytes and, where the backend knows it, a checksum.

    ``checksum`` is ``"sha256:HEX"`` (Hugging Face LFS files), ``"git-sha1:HEX"`` (Hugging Face
    files stored in git), ``"md5:HEX"`` or ``"crc32c:HEX"`` (GCS), or None (local files).
    """

    __module__ = "tfpipe.storage"

    path: str
    size: int
    checksum: str | None = None


class Backend(Protocol):
    """One path scheme (local, ``gs://``, ``hf://``); paths are given whole, scheme included.

    Every failure is a :class:`StorageError` naming the path; a missing file or object is a
    :class:`StorageNotFoundError`. Writes are atomic: a reader sees the old or the new content.
    """

    def exists(self, path: str) -> bool: ...

    def size(self, path: str) -> int: ...

    def list_file_infos(self, prefix: str, suffix: str) -> list[FileInfo]: ...

    def listdir(self, path: str) -> list[str]: ...

    def read_bytes(self, path: str) -> bytes: ...

    def open_binary(self, path: str) -> IO[bytes]: ...

    def download_file(self, src: str, local_path: str) -> None:
        """Copy ``src`` to the local file ``local_path`` (whose folder exists), atomically."""

    def write_bytes(self, path: str, data: bytes, overwrite: bool) -> None: ...

    def upload_file(self, local_path: str, dst: str, overwrite: bool) -> None:
        """Copy the existing local file ``local_path`` to ``dst``, atomically."""

    def delete(self, path: str, missing_ok: bool) -> None: ...

    def makedirs(self, path: str) -> None: ...


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def call(path: str, func: Callable[[], T], to_error: Callable[[str, BaseException], StorageError]) -> T:
    """Run ``func``; any failure other than a StorageError becomes ``to_error(path, err)``."""
    try:
        return func()
    except StorageError:
        raise
    except Exception as err:
        raise to_error(path, err) from None
