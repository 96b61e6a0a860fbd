"""``hf://`` paths, read-only, through ``huggingface_hub.HfFileSystem``.

A path is ``hf://datasets/OWNER/NAME[@REVISION][/path]`` (or ``models/``, ``spaces/``). The hub is
``$HF_ENDPOINT`` (read at call time) or huggingface.co. Every write raises :class:`StorageError`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from typing import IO, Any

from tfpipe.storage.base import FileInfo, StorageError, StorageNotFoundError, T, call, one_line
from tfpipe.storage.paths import HF, join
from tfpipe.storage.staging import atomic_file


def _fs() -> Any:
    """A fresh ``HfFileSystem`` for ``$HF_ENDPOINT`` (no stale listing cache between calls)."""
    try:
        from huggingface_hub import HfFileSystem
    except ImportError as err:
        raise StorageError(f"hf:// paths need huggingface_hub ({err})") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    return HfFileSystem(endpoint=endpoint.rstrip("/") if endpoint else None, skip_instance_cache=True)


def _hf_path(path: str) -> str:
    """``hf://datasets/O/N/x`` -> ``datasets/O/N/x`` (the form HfFileSystem takes)."""
    rest = path[len(HF) :]
    if not rest.startswith(("datasets/", "models/", "spaces/")) or rest.count("/") < 2:
        raise StorageError(f"{path}: expected hf://datasets/OWNER/NAME[@REVISION][/path]")
    return rest


def _missing_entry(err: BaseException) -> bool:
    """True if ``err`` says a file or folder is missing (not the repository or the revision)."""
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    cause = err.__cause__
    return isinstance(err, FileNotFoundError) and not isinstance(
        cause, RepositoryNotFoundError | RevisionNotFoundError | HFValidationError
    )


def _error(path: str, err: BaseException) -> StorageError:
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    cause = err.__cause__ if isinstance(err, FileNotFoundError) and err.__cause__ else err
    if isinstance(cause, RepositoryNotFoundError):
        return StorageNotFoundError(f"{path}: repository does not exist (or is private)")
    if isinstance(cause, RevisionNotFoundError):
        return StorageNotFoundError(f"{path}: revision does not exist")
    if isinstance(cause, HFValidationError):
        return StorageError(f"{path}: invalid repository id: {one_line(cause)[:200]}")
    if isinstance(err, FileNotFoundError):
        return StorageNotFoundError(f"{path}: no such file")
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return StorageError(f"{path}: {type(err).__name__}: {one_line(err)[:300]} (endpoint {endpoint})")


def _call(path: str, func: Callable[[], T]) -> T:
    return call(path, func, _error)


def _listing(path: str, func: Callable[[], T], missing: T) -> T:
    """``func()``, or ``missing`` if the folder does not exist (a missing repository still raises)."""
    try:
        return func()
    except FileNotFoundError as err:
        if _missing_entry(err):
            return missing
        raise _error(path, err) from None
    except Exception as err:
        raise _error(path, err) from None


def _checksum(info: dict[str, Any]) -> str | None:
    lfs = info.get("lfs")
    if lfs and lfs.get("sha256"):
        return f"sha256:{lfs['sha256']}"
    if info.get("blob_id"):
        return f"git-sha1:{info['blob_id']}"
    return None


def _read_only(path: str) -> StorageError:
    return StorageError(f"{path}: hf:// paths are read-only")


def hf_commit(path: str) -> str:
    """The commit sha that the revision of an ``hf://`` path (default ``main``) points at now.

    Pin a long job to it (``hf://datasets/OWNER/NAME@SHA/...``) so that a branch moving in the
    meantime cannot mix files of two commits.
    """
    rest = _hf_path(path)
    fs = _fs()
    resolved = _call(path, lambda: fs.resolve_path(rest))
    from huggingface_hub import HfApi

    api = HfApi(endpoint=fs.endpoint)
    info = _call(
        path,
        lambda: api.repo_info(
            resolved.repo_id, repo_type=resolved.repo_type, revision=resolved.revision, timeout=30
        ),
    )
    if not info.sha:
        raise StorageError(f"{path}: the hub did not report a commit sha")
    return str(info.sha)


class HfBackend:
    """Files of a Hugging Face repository; every write raises StorageError ("read-only")."""

    def exists(self, path: str) -> bool:
        """A missing repository or revision raises rather than returning False."""
        fs = _fs()
        rest = _hf_path(path)
        _call(path, lambda: fs.resolve_path(rest))  # missing repo/revision -> StorageError
        return bool(_call(path, lambda: fs.exists(rest)))

    def size(self, path: str) -> int:
        fs = _fs()
        info = _call(path, lambda: fs.info(_hf_path(path)))
        if info["type"] != "file":
            raise StorageError(f"{path}: is a directory")
        return int(info["size"])

    def list_file_infos(self, prefix: str, suffix: str) -> list[FileInfo]:
        fs = _fs()
        rest = _hf_path(prefix).rstrip("/")
        root = HF + rest
        listing = _listing(
            prefix, lambda: (fs.resolve_path(rest).unresolve(), fs.find(rest, detail=True)), None
        )
        if listing is None:
            return []
        base, found = listing
        out = []
        for name, info in found.items():
            if info.get("type") != "file" or not name.endswith(suffix):
                continue
            # `name` is "datasets/OWNER/NAME[@rev]/path"; keep the caller's spelling of the root.
            relative = name[len(base) :].lstrip("/")
            out.append(FileInfo(join(root, relative), int(info["size"]), _checksum(info)))
        return sorted(out, key=lambda info: info.path)

    def listdir(self, path: str) -> list[str]:
        fs = _fs()
        rest = _hf_path(path).rstrip("/")
        entries = _listing(path, lambda: fs.ls(rest, detail=False), [])
        return sorted(posixpath.basename(str(entry).rstrip("/")) for entry in entries)

    def read_bytes(self, path: str) -> bytes:
        fs = _fs()
        return _call(path, lambda: fs.cat_file(_hf_path(path)))

    def open_binary(self, path: str) -> IO[bytes]:
        fs = _fs()
        return _call(path, lambda: fs.open(_hf_path(path), "rb"))

    def download_file(self, src: str, local_path: str) -> None:
        fs = _fs()
        rest = _hf_path(src)
        with atomic_file(local_path) as f:
            _call(src, lambda: fs.get_file(rest, None, outfile=f))

    def write_bytes(self, path: str, data: bytes, overwrite: bool) -> None:
        raise _read_only(path)

    def upload_file(self, local_path: str, dst: str, overwrite: bool) -> None:
        raise _read_only(dst)

    def delete(self, path: str, missing_ok: bool) -> None:
        raise _read_only(path)

    def makedirs(self, path: str) -> None:
        raise _read_only(path)
