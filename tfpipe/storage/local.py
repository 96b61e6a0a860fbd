"""Local files: the :class:`~tfpipe.storage.base.Backend` of plain paths."""

from __future__ import annotations

import os
import shutil
from typing import IO

from tfpipe.storage.base import FileInfo, StorageError, StorageNotFoundError
from tfpipe.storage.staging import atomic_file, is_temp_name

_COPY_CHUNK = 8 * 1024 * 1024


def _error(path: str, err: OSError) -> StorageError:
    if isinstance(err, FileNotFoundError):
        return StorageNotFoundError(f"{path}: no such file")
    return StorageError(f"{path}: {err.strerror or err}")


def makedirs(path: str) -> None:
    """Create a folder and its parents (StorageError naming the path that failed)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise StorageError(f"{err.filename or path}: {err.strerror or err}") from None


def _make_parent(path: str) -> None:
    parent = os.path.dirname(path)
    if parent:
        makedirs(parent)


class LocalBackend:
    """Plain paths; writes go to a temp beside the target and are renamed into place."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        try:
            if os.path.isdir(path):
                raise StorageError(f"{path}: is a directory")
            return os.path.getsize(path)
        except OSError as err:
            raise _error(path, err) from None

    def list_file_infos(self, prefix: str, suffix: str) -> list[FileInfo]:
        if os.path.isfile(prefix):
            return [FileInfo(prefix, os.path.getsize(prefix))] if prefix.endswith(suffix) else []

        def onerror(err: OSError) -> None:
            if not isinstance(err, FileNotFoundError) or err.filename != prefix:
                raise StorageError(f"{err.filename or prefix}: {err.strerror or err}")

        out: list[FileInfo] = []
        for dirpath, dirnames, filenames in os.walk(prefix, onerror=onerror):
            dirnames.sort()
            for name in filenames:
                if name.endswith(suffix) and not is_temp_name(name):
                    full = os.path.join(dirpath, name)
                    try:
                        out.append(FileInfo(full, os.path.getsize(full)))
                    except FileNotFoundError:
                        continue  # deleted while we listed
        return sorted(out, key=lambda info: info.path)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(name for name in os.listdir(path) if not is_temp_name(name))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StorageError(f"{path}: {err.strerror or err}") from None

    def read_bytes(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as err:
            raise _error(path, err) from None

    def open_binary(self, path: str) -> IO[bytes]:
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as err:
            raise _error(path, err) from None

    def download_file(self, src: str, local_path: str) -> None:
        self._copy(src, local_path, overwrite=True)

    def write_bytes(self, path: str, data: bytes, overwrite: bool) -> None:
        _make_parent(path)
        with atomic_file(path, overwrite=overwrite) as f:
            f.write(data)

    def upload_file(self, local_path: str, dst: str, overwrite: bool) -> None:
        _make_parent(dst)
        self._copy(local_path, dst, overwrite=overwrite)

    def delete(self, path: str, missing_ok: bool) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            if not missing_ok:
                raise StorageNotFoundError(f"{path}: no such file") from None
        except OSError as err:
            raise StorageError(f"{path}: {err.strerror or err}") from None

    def makedirs(self, path: str) -> None:
        makedirs(path)

    @staticmethod
    def _copy(src: str, dst: str, overwrite: bool) -> None:
        try:
            source = open(src, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise _error(src, err) from None
        with source, atomic_file(dst, overwrite=overwrite) as f:
            shutil.copyfileobj(source, f, _COPY_CHUNK)
