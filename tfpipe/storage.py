"""Local paths, ``gs://`` paths and read-only ``hf://`` paths behind one small API.

Every stage of the pipeline reads and writes through this module, so that a path may be a local
file, a Google Cloud Storage object (``gs://bucket/key``) or, read-only, a file of a Hugging Face
dataset (``hf://datasets/OWNER/NAME[@REVISION][/path]``).

Writes are atomic: a reader sees the old content or the new content, never a part. Locally a write
goes to a temporary name in the same folder, is fsync'ed, then ``os.replace``'d into place; a GCS
object is created by a single (multipart or resumable) upload and becomes visible only when the
upload completes. Downloads go to a temporary name beside the destination and are renamed at the end.

GCS goes through ``google-cloud-storage``: one ``storage.Client`` per process (per emulator host and
project), created on first use. With ``STORAGE_EMULATOR_HOST`` set (tests) the client talks to that
endpoint with ``AnonymousCredentials`` and project ``$GOOGLE_CLOUD_PROJECT`` or ``"test"``; otherwise
it uses Application Default Credentials. Every call retries transient errors with the library's
``DEFAULT_RETRY`` bounded by a deadline of ``$TFPIPE_GCS_DEADLINE_S`` seconds (default 30), and every
HTTP request has a timeout (connect ``min(5, deadline)``, read ``min(deadline, 20)`` s between bytes),
so an unreachable endpoint, a silent server or a missing bucket ends in a :class:`StorageError`, never
a hang. Object creation with ``overwrite=False`` uses ``if_generation_match=0`` and the
``ConditionalRetryPolicy`` that retries only such preconditioned requests.

TensorFlow and ``gs://`` (:func:`tf_path`): in production (TPU VMs, GPU hosts, Colab) TensorFlow's
built-in GCS filesystem reads ``gs://`` paths directly and ``tensorflow-io`` is not needed. The
built-in filesystem cannot be pointed at an emulator, so when ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` is
set (tests, see ``tests/gcs_emulator.py``), :func:`tf_path` loads the ``tensorflow-io`` GCS plugin,
which honours that variable. The plugin only takes over ``gs://`` when ``TF_USE_MODULAR_FILESYSTEM=1``
is in the environment before TensorFlow is imported; :func:`tf_path` sets it if TensorFlow is not yet
imported and raises a clear error if it was imported without it. It also fills in the plugin's cache
variables, without which the plugin crashes when an emulator endpoint is set.

``hf://`` paths are listed and read through ``huggingface_hub.HfFileSystem`` (honouring
``HF_ENDPOINT``, read at call time); writing to them raises :class:`StorageError`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import posixpath
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

__all__ = [
    "FileInfo",
    "StorageError",
    "StorageNotFoundError",
    "delete",
    "download_file",
    "exists",
    "gcs_deadline_s",
    "hf_commit",
    "is_remote",
    "join",
    "list_file_infos",
    "list_files",
    "listdir",
    "makedirs",
    "read_bytes",
    "remove_temps",
    "reset_clients",
    "size",
    "split_gs",
    "tf_path",
    "upload_file",
    "write_bytes",
]

GS = "gs://"
HF = "hf://"
_SCHEMES = (GS, HF)
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: Files above this size are uploaded to GCS in resumable chunks of ``RESUMABLE_CHUNK_SIZE``.
RESUMABLE_THRESHOLD = 8 * 1024 * 1024
#: Chunk size of resumable uploads (a multiple of 256 KiB, as GCS requires).
RESUMABLE_CHUNK_SIZE = 8 * 1024 * 1024
#: Default deadline in seconds for one GCS operation, retries included.
DEFAULT_GCS_DEADLINE_S = 30.0

#: Cache settings the tensorflow-io GCS plugin needs when an emulator endpoint is set.
_TF_IO_GCS_CACHE_ENV = {
    "GCS_READ_CACHE_BLOCK_SIZE_MB": "16",
    "GCS_READ_CACHE_MAX_SIZE_MB": "0",
    "GCS_READ_CACHE_MAX_STALENESS": "0",
    "GCS_STAT_CACHE_MAX_AGE": "0",
    "GCS_STAT_CACHE_MAX_ENTRIES": "1024",
}

T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the path and the problem on one line."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The file (object) does not exist; also a ``FileNotFoundError``."""


@dataclass(frozen=True)
class FileInfo:
    """A listed file: full path, size in bytes and, where the backend knows it, a checksum.

    ``checksum`` is ``"sha256:HEX"`` (Hugging Face LFS files), ``"git-sha1:HEX"`` (Hugging Face
    files stored in git), ``"md5:HEX"`` or ``"crc32c:HEX"`` (GCS), or None (local files).
    """

    path: str
    size: int
    checksum: str | None = None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# -- paths ------------------------------------------------------------------------------------------


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for ``gs://`` and ``hf://`` paths."""
    return str(path).startswith(_SCHEMES)


def _scheme(path: str) -> str:
    if path.startswith(GS):
        return "gs"
    if path.startswith(HF):
        return "hf"
    if _URL_RE.match(path):
        raise StorageError(f"{path}: unsupported URL scheme (use a local path, gs:// or hf://)")
    return "local"


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path components: ``/`` for ``gs://`` and ``hf://`` (no doubled slashes), ``os.path`` locally."""
    base = os.fspath(base)
    if not is_remote(base):
        return os.path.join(base, *parts)
    out = base
    for part in parts:
        part = part.strip("/")
        if not part:
            continue
        out = out + part if out.endswith("/") else f"{out}/{part}"
    return out


def split_gs(path: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; the key may be empty."""
    if not path.startswith(GS):
        raise StorageError(f"{path}: not a gs:// path")
    bucket, _, key = path[len(GS) :].partition("/")
    if not bucket:
        raise StorageError(f"{path}: gs:// path without a bucket name")
    return bucket, key


def _check_bucket_name(path: str) -> None:
    """A StorageError for a bucket name GCS would reject (checked before any request is made)."""
    bucket = path[len(GS) :].partition("/")[0]
    if bucket and (not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket):
        raise StorageError(
            f"{path}: {bucket!r} is not a valid bucket name "
            "(3-63 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        )


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]|[a-z0-9][a-z0-9._-]{62,220}[a-z0-9]")
"""GCS bucket names (names with dots may be longer: up to 222, in dot-separated parts)."""

# -- GCS client, deadlines and error translation ------------------------------------------------------

_UMASK = os.umask(0)
os.umask(_UMASK)

_CLIENT_LOCK = threading.Lock()
_CLIENTS: dict[tuple[Any, ...], Any] = {}


def gcs_deadline_s() -> float:
    """The deadline of one GCS operation (retries included): ``$TFPIPE_GCS_DEADLINE_S`` or 30."""
    text = os.environ.get("TFPIPE_GCS_DEADLINE_S", "")
    try:
        value = float(text) if text else DEFAULT_GCS_DEADLINE_S
    except ValueError:
        raise StorageError(f"TFPIPE_GCS_DEADLINE_S={text!r}: not a number") from None
    if not value > 0:
        raise StorageError(f"TFPIPE_GCS_DEADLINE_S={text!r}: must be > 0")
    return value


def _timeout() -> tuple[float, float]:
    """(connect, read) timeout of one HTTP request to GCS."""
    deadline = gcs_deadline_s()
    return (min(5.0, deadline), min(deadline, 20.0))


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(gcs_deadline_s())


def _retry_if_generation_specified() -> Any:
    from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

    return ConditionalRetryPolicy(_retry(), is_generation_specified, ["query_params"])


def reset_clients() -> None:
    """Forget cached GCS clients (tests that change ``STORAGE_EMULATOR_HOST`` call this)."""
    with _CLIENT_LOCK:
        _CLIENTS.clear()


def _gcs_client(path: str = "gs://") -> Any:
    """The process's ``storage.Client`` for the current emulator setting, created on first use.

    ``path`` names what was being accessed in the error when no client can be made (no credentials);
    its bucket name is checked first.
    """
    if path.startswith(GS):
        _check_bucket_name(path)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST") or None
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    key = (os.getpid(), emulator, project)
    with _CLIENT_LOCK:
        client = _CLIENTS.get(key)
        if client is not None:
            return client
        try:
            from google.cloud import storage
        except ImportError as err:
            raise StorageError(f"gs:// paths need google-cloud-storage ({err})") from None
        try:
            if emulator:
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project=project or "test", credentials=AnonymousCredentials())
            else:
                client = storage.Client(project=project)
        except Exception as err:  # DefaultCredentialsError, OSError, ...
            message = f"{type(err).__name__}: {_one_line(err)[:300]}"
            raise StorageError(f"{path}: cannot create a GCS client: {message}") from None
        _CLIENTS[key] = client
        return client


def _gcs_error(path: str, err: BaseException) -> StorageError:
    """A one-line StorageError for an exception raised by google-cloud-storage."""
    from google.api_core import exceptions as gexc

    if isinstance(err, gexc.RetryError):
        cause = err.cause if err.cause is not None else err
        return StorageError(
            f"{path}: GCS unreachable ({_endpoint_hint()}; gave up retrying, deadline "
            f"{gcs_deadline_s():g} s): {type(cause).__name__}: {_one_line(cause)[:300]}"
        )
    if isinstance(err, gexc.NotFound):
        bucket, _ = split_gs(path)
        if not _bucket_exists(bucket):
            return StorageNotFoundError(f"gs://{bucket}/: bucket does not exist ({path})")
        return StorageNotFoundError(f"{path}: no such object")
    if isinstance(err, gexc.PreconditionFailed):
        return StorageError(f"{path}: already exists (precondition failed)")
    if isinstance(err, gexc.Forbidden | gexc.Unauthorized):
        return StorageError(f"{path}: permission denied: {_one_line(getattr(err, 'message', err))[:300]}")
    if isinstance(err, gexc.GoogleAPICallError):
        return StorageError(f"{path}: GCS error {err.code}: {_one_line(getattr(err, 'message', err))[:300]}")
    return StorageError(f"{path}: {type(err).__name__}: {_one_line(err)[:300]} ({_endpoint_hint()})")


def _endpoint_hint() -> str:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    return f"emulator {emulator}" if emulator else "storage.googleapis.com"


def _bucket_exists(bucket: str) -> bool:
    from google.api_core import exceptions as gexc

    try:
        return bool(_gcs_client(f"gs://{bucket}/").bucket(bucket).exists(timeout=_timeout(), retry=_retry()))
    except gexc.Forbidden:
        return True  # it exists, we just may not see its metadata
    except Exception:
        return True  # unknown: do not claim it is missing


def _call(path: str, func: Callable[[], T], to_error: Callable[[str, BaseException], StorageError]) -> T:
    """Run ``func``; any failure other than a StorageError becomes ``to_error(path, err)``."""
    try:
        return func()
    except StorageError:
        raise
    except Exception as err:
        raise to_error(path, err) from None


def _gcs_call(path: str, func: Callable[[], T]) -> T:
    """Run ``func`` and turn any GCS or transport failure into a StorageError naming ``path``."""
    return _call(path, func, _gcs_error)


def _blob(path: str) -> Any:
    bucket, key = split_gs(path)
    if not key or key.endswith("/"):
        raise StorageError(f"{path}: not an object path (gs://bucket/key)")
    return _gcs_client(path).bucket(bucket).blob(key)


# -- Hugging Face -------------------------------------------------------------------------------------


def _hf_fs() -> Any:
    """A fresh ``HfFileSystem`` for ``$HF_ENDPOINT`` (no stale listing cache between calls)."""
    try:
        from huggingface_hub import HfFileSystem
    except ImportError as err:
        raise StorageError(f"hf:// paths need huggingface_hub ({err})") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    return HfFileSystem(endpoint=endpoint.rstrip("/") if endpoint else None, skip_instance_cache=True)


def _hf_path(path: str) -> str:
    rest = path[len(HF) :]
    if not rest.startswith(("datasets/", "models/", "spaces/")) or rest.count("/") < 2:
        raise StorageError(f"{path}: expected hf://datasets/OWNER/NAME[@REVISION][/path]")
    return rest


def _hf_missing_entry(err: BaseException) -> bool:
    """True if ``err`` says a file or folder is missing (not the repository or the revision)."""
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    cause = err.__cause__
    return isinstance(err, FileNotFoundError) and not isinstance(
        cause, RepositoryNotFoundError | RevisionNotFoundError | HFValidationError
    )


def _hf_error(path: str, err: BaseException) -> StorageError:
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    cause = err.__cause__ if isinstance(err, FileNotFoundError) and err.__cause__ else err
    if isinstance(cause, RepositoryNotFoundError):
        return StorageNotFoundError(f"{path}: repository does not exist (or is private)")
    if isinstance(cause, RevisionNotFoundError):
        return StorageNotFoundError(f"{path}: revision does not exist")
    if isinstance(cause, HFValidationError):
        return StorageError(f"{path}: invalid repository id: {_one_line(cause)[:200]}")
    if isinstance(err, FileNotFoundError):
        return StorageNotFoundError(f"{path}: no such file")
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return StorageError(f"{path}: {type(err).__name__}: {_one_line(err)[:300]} (endpoint {endpoint})")


def _hf_call(path: str, func: Callable[[], T]) -> T:
    return _call(path, func, _hf_error)


def _read_only(path: str) -> StorageError:
    return StorageError(f"{path}: hf:// paths are read-only")


def _hf_checksum(info: dict[str, Any]) -> str | None:
    lfs = info.get("lfs")
    if lfs and lfs.get("sha256"):
        return f"sha256:{lfs['sha256']}"
    if info.get("blob_id"):
        return f"git-sha1:{info['blob_id']}"
    return None


def hf_commit(path: str) -> str:
    """The commit sha that the revision of an ``hf://`` path (default ``main``) points at now.

    Pin a long job to it (``hf://datasets/OWNER/NAME@SHA/...``) so that a branch moving in the
    meantime cannot mix files of two commits.
    """
    rest = _hf_path(path)
    fs = _hf_fs()
    resolved = _hf_call(path, lambda: fs.resolve_path(rest))
    from huggingface_hub import HfApi

    api = HfApi(endpoint=fs.endpoint)
    info = _hf_call(
        path,
        lambda: api.repo_info(
            resolved.repo_id, repo_type=resolved.repo_type, revision=resolved.revision, timeout=30
        ),
    )
    if not info.sha:
        raise StorageError(f"{path}: the hub did not report a commit sha")
    return str(info.sha)


# -- queries ------------------------------------------------------------------------------------------


def exists(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is an existing file or directory (for GCS: an object or a non-empty prefix).

    A missing GCS bucket or Hugging Face repository raises :class:`StorageError` rather than
    returning False, so a typo in a bucket name is not mistaken for "not written yet".
    """
    path = os.fspath(path)
    kind = _scheme(path)
    if kind == "local":
        return os.path.exists(path)
    if kind == "hf":
        fs = _hf_fs()
        rest = _hf_path(path)
        _hf_call(path, lambda: fs.resolve_path(rest))  # missing repo/revision -> StorageError
        return bool(_hf_call(path, lambda: fs.exists(rest)))
    bucket, key = split_gs(path)
    client = _gcs_client(path)
    if not key:
        found = _gcs_call(path, lambda: client.bucket(bucket).exists(timeout=_timeout(), retry=_retry()))
        return bool(found)
    blob = client.bucket(bucket).blob(key.rstrip("/")) if key.rstrip("/") else None
    if blob is not None and _gcs_call(path, lambda: blob.exists(timeout=_timeout(), retry=_retry())):
        return True
    prefix = key.rstrip("/") + "/"

    def any_below() -> bool:
        listing = client.list_blobs(bucket, prefix=prefix, max_results=1, timeout=_timeout(), retry=_retry())
        return any(True for _ in listing)

    if _gcs_call(path, any_below):
        return True
    if not _bucket_exists(bucket):
        raise StorageNotFoundError(f"gs://{bucket}/: bucket does not exist ({path})")
    return False


def size(path: str | os.PathLike[str]) -> int:
    """Size of a file in bytes; :class:`StorageNotFoundError` if it does not exist."""
    path = os.fspath(path)
    kind = _scheme(path)
    if kind == "local":
        try:
            if os.path.isdir(path):
                raise StorageError(f"{path}: is a directory")
            return os.path.getsize(path)
        except FileNotFoundError:
            raise StorageNotFoundError(f"{path}: no such file") from None
        except OSError as err:
            raise StorageError(f"{path}: {err.strerror or err}") from None
    if kind == "hf":
        fs = _hf_fs()
        info = _hf_call(path, lambda: fs.info(_hf_path(path)))
        if info["type"] != "file":
            raise StorageError(f"{path}: is a directory")
        return int(info["size"])
    blob = _blob(path)

    def get_size() -> int:
        blob.reload(timeout=_timeout(), retry=_retry())
        return int(blob.size)

    return _gcs_call(path, get_size)


def list_file_infos(prefix: str | os.PathLike[str], suffix: str = "") -> list[FileInfo]:
    """Every file below the directory ``prefix`` (recursively) whose name ends with ``suffix``.

    If ``prefix`` names a file, the list holds that file alone (if it matches ``suffix``).
    Sorted by path; paths have the same form as ``prefix`` (a local path as given, ``gs://...`` or
    ``hf://...``). A missing directory gives an empty list; a missing bucket or repository raises.
    Temporary files of this module's atomic writes are left out.
    """
    prefix = os.fspath(prefix)
    kind = _scheme(prefix)
    out: list[FileInfo] = []
    if kind == "local":
        if os.path.isfile(prefix):
            return [FileInfo(prefix, os.path.getsize(prefix))] if prefix.endswith(suffix) else []

        def onerror(err: OSError) -> None:
            if not isinstance(err, FileNotFoundError) or err.filename != prefix:
                raise StorageError(f"{err.filename or prefix}: {err.strerror or err}")

        for dirpath, dirnames, filenames in os.walk(prefix, onerror=onerror):
            dirnames.sort()
            for name in filenames:
                if name.endswith(suffix) and not _is_temp_name(name):
                    full = os.path.join(dirpath, name)
                    try:
                        out.append(FileInfo(full, os.path.getsize(full)))
                    except FileNotFoundError:
                        continue  # deleted while we listed
        return sorted(out, key=lambda info: info.path)
    if kind == "hf":
        fs = _hf_fs()
        rest = _hf_path(prefix).rstrip("/")
        root = HF + rest
        try:
            base = fs.resolve_path(rest).unresolve()
            found = fs.find(rest, detail=True)
        except FileNotFoundError as err:
            if _hf_missing_entry(err):
                return []
            raise _hf_error(prefix, err) from None
        except Exception as err:
            raise _hf_error(prefix, err) from None
        for name, info in found.items():
            if info.get("type") != "file" or not name.endswith(suffix):
                continue
            # `name` is "datasets/OWNER/NAME[@rev]/path"; keep the caller's spelling of the root.
            relative = name[len(base) :].lstrip("/")
            out.append(FileInfo(join(root, relative), int(info["size"]), _hf_checksum(info)))
        return sorted(out, key=lambda info: info.path)
    bucket, key = split_gs(prefix)
    key_prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
    client = _gcs_client(prefix)

    def collect() -> list[FileInfo]:
        infos = []
        listing = client.list_blobs(bucket, prefix=key_prefix or None, timeout=_timeout(), retry=_retry())
        for blob in listing:
            if blob.name.endswith("/") or not blob.name.endswith(suffix):
                continue
            checksum = None
            if blob.md5_hash:
                checksum = "md5:" + base64.b64decode(blob.md5_hash).hex()
            elif blob.crc32c:
                checksum = "crc32c:" + base64.b64decode(blob.crc32c).hex()
            infos.append(FileInfo(f"{GS}{bucket}/{blob.name}", int(blob.size or 0), checksum))
        return infos

    out = _gcs_call(prefix, collect)
    if not out and key.rstrip("/") and not key.endswith("/"):
        # `prefix` may name an object itself (get_blob gives None if it does not exist).
        blob = _gcs_call(
            prefix, lambda: client.bucket(bucket).get_blob(key, timeout=_timeout(), retry=_retry())
        )
        if blob is not None and key.endswith(suffix):
            checksum = "md5:" + base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None
            return [FileInfo(prefix, int(blob.size or 0), checksum)]
    if not out and not _bucket_exists(bucket):
        raise StorageNotFoundError(f"gs://{bucket}/: bucket does not exist ({prefix})")
    return sorted(out, key=lambda info: info.path)


def list_files(prefix: str | os.PathLike[str], suffix: str = "") -> list[str]:
    """Paths of :func:`list_file_infos` (recursive, sorted, same form as ``prefix``)."""
    return [info.path for info in list_file_infos(prefix, suffix)]


def listdir(path: str | os.PathLike[str]) -> list[str]:
    """Sorted names (not paths) of the files and sub-directories directly in ``path``; [] if missing."""
    path = os.fspath(path)
    kind = _scheme(path)
    if kind == "local":
        try:
            return sorted(name for name in os.listdir(path) if not _is_temp_name(name))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StorageError(f"{path}: {err.strerror or err}") from None
    if kind == "hf":
        fs = _hf_fs()
        rest = _hf_path(path).rstrip("/")
        try:
            entries = fs.ls(rest, detail=False)
        except FileNotFoundError as err:
            if _hf_missing_entry(err):
                return []
            raise _hf_error(path, err) from None
        except Exception as err:
            raise _hf_error(path, err) from None
        return sorted(posixpath.basename(str(entry).rstrip("/")) for entry in entries)
    bucket, key = split_gs(path)
    key_prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
    client = _gcs_client(path)

    def collect() -> list[str]:
        listing = client.list_blobs(
            bucket, prefix=key_prefix or None, delimiter="/", timeout=_timeout(), retry=_retry()
        )
        names = [blob.name[len(key_prefix) :] for blob in listing if blob.name != key_prefix]
        names += [p[len(key_prefix) :].rstrip("/") for p in listing.prefixes]
        return names

    names = _gcs_call(path, collect)
    if not names and not _bucket_exists(bucket):
        raise StorageNotFoundError(f"gs://{bucket}/: bucket does not exist ({path})")
    return sorted(set(names))


# -- reading ------------------------------------------------------------------------------------------


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a file (GCS downloads are checksum-verified by the client)."""
    path = os.fspath(path)
    kind = _scheme(path)
    if kind == "local":
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StorageNotFoundError(f"{path}: no such file") from None
        except OSError as err:
            raise StorageError(f"{path}: {err.strerror or err}") from None
    if kind == "hf":
        fs = _hf_fs()
        return _hf_call(path, lambda: fs.cat_file(_hf_path(path)))
    blob = _blob(path)
    return _gcs_call(path, lambda: blob.download_as_bytes(timeout=_timeout(), retry=_retry()))


def open_binary(path: str | os.PathLike[str]) -> IO[bytes]:
    """A streaming binary reader (for files too large to read whole, e.g. Kaggle's train.csv)."""
    path = os.fspath(path)
    kind = _scheme(path)
    if kind == "local":
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise StorageNotFoundError(f"{path}: no such file") from None
        except OSError as err:
            raise StorageError(f"{path}: {err.strerror or err}") from None
    if kind == "hf":
        fs = _hf_fs()
        return _hf_call(path, lambda: fs.open(_hf_path(path), "rb"))
    blob = _blob(path)
    return _gcs_call(path, lambda: blob.open("rb", chunk_size=8 << 20, retry=_retry()))


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """A streaming UTF-8 text reader over :func:`open_binary`."""
    import io

    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="")


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and ".tfpipe-tmp" in name


def local_temp_for(target: str | os.PathLike[str], suffix: str = "") -> str:
    """A new empty local file to write ``target``'s content into before :func:`publish`.

    Beside a local target (so that the rename is atomic), in the system temp folder for a remote one.
    Its name is hidden from :func:`listdir` and :func:`list_files`. ``suffix``: e.g. ``.keras``.
    """
    import tempfile

    target = os.fspath(target)
    folder = None
    if not is_remote(target):
        folder = os.path.dirname(os.path.abspath(target))
        os.makedirs(folder, exist_ok=True)
    name = posixpath.basename(target.rstrip("/"))
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tfpipe-tmp{suffix}", dir=folder)
    os.close(fd)
    os.chmod(path, 0o666 & ~_UMASK)  # mkstemp makes 0600; a published file is as readable as any other
    return path


def remove_temps(folder: str | os.PathLike[str], names: Iterable[str] | None = None) -> list[str]:
    """Delete temporary files that a killed writer of ``names`` (None: of any file) left in ``folder``.

    Only this module's temp names (``.NAME.*.tfpipe-tmp*``) are touched, and with ``names`` only
    those of exactly these targets, so writers of other files in the same folder (another encode
    shard) are safe. Returns the deleted paths; remote folders have no such files (uploads are atomic).
    """
    folder = os.fspath(folder)
    if is_remote(folder) or not os.path.isdir(folder):
        return []
    prefixes = tuple(f".{n}." for n in names) if names is not None else (".",)
    removed = []
    for entry in os.listdir(folder):
        if entry.startswith(prefixes) and ".tfpipe-tmp" in entry:
            path = os.path.join(folder, entry)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


def publish(local: str, target: str | os.PathLike[str]) -> None:
    """Move a finished local file to ``target`` atomically: rename locally, one upload to gs://."""
    target = os.fspath(target)
    if is_remote(target):
        upload_file(local, target)
        os.unlink(local)
    else:
        os.replace(local, target)


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


@contextmanager
def _atomic_local_file(path: str, overwrite: bool = True) -> Iterator[IO[bytes]]:
    """Yield a temp file beside ``path``; on success fsync and move it into place, else remove it."""
    folder = os.path.dirname(path) or "."
    temp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tfpipe-tmp")
    try:
        with open(temp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # fails if `path` exists: create-only, still atomic
            os.unlink(temp)
    except StorageError:
        raise  # from the caller's block (StorageNotFoundError is an OSError too)
    except FileExistsError:
        raise StorageError(f"{path}: already exists") from None
    except OSError as err:
        raise StorageError(f"{err.filename or path}: {err.strerror or err}") from None
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


def download_file(src: str | os.PathLike[str], local_path: str | os.PathLike[str]) -> None:
    """Copy ``src`` (any kind) to the local file ``local_path``, atomically; folders are created."""
    src, local_path = os.fspath(src), os.fspath(local_path)
    if is_remote(local_path):
        raise StorageError(f"{local_path}: download_file needs a local destination")
    kind = _scheme(src)
    parent = os.path.dirname(local_path)
    if parent:
        makedirs(parent)
    if kind == "local":
        try:
            source = open(src, "rb")
        except FileNotFoundError:
            raise StorageNotFoundError(f"{src}: no such file") from None
        except OSError as err:
            raise StorageError(f"{src}: {err.strerror or err}") from None
        with source, _atomic_local_file(local_path) as f:
            while chunk := source.read(8 * 1024 * 1024):
                f.write(chunk)
        return
    if kind == "hf":
        fs = _hf_fs()
        rest = _hf_path(src)
        with _atomic_local_file(local_path) as f:
            _hf_call(src, lambda: fs.get_file(rest, None, outfile=f))
        return
    blob = _blob(src)
    with _atomic_local_file(local_path) as f:

        def fetch() -> None:
            f.seek(0)
            f.truncate()
            blob.download_to_file(f, timeout=_timeout(), retry=_retry())

        _gcs_call(src, fetch)


# -- writing ------------------------------------------------------------------------------------------


def write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (creating local folders).

    With ``overwrite=False`` an existing file is left alone and :class:`StorageError` ("already
    exists") is raised; on GCS this is ``if_generation_match=0`` with a conditional retry policy.
    """
    path = os.fspath(path)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StorageError(f"{path}: write_bytes needs bytes, got {type(data).__name__}")
    kind = _scheme(path)
    if kind == "hf":
        raise _read_only(path)
    if kind == "local":
        parent = os.path.dirname(path)
        if parent:
            makedirs(parent)
        with _atomic_local_file(path, overwrite=overwrite) as f:
            f.write(data)
        return
    blob = _blob(path)
    if overwrite:
        kwargs: dict[str, Any] = {"retry": _retry()}
    else:
        kwargs = {"retry": _retry_if_generation_specified(), "if_generation_match": 0}
    _gcs_call(
        path,
        lambda: blob.upload_from_string(
            bytes(data), content_type="application/octet-stream", timeout=_timeout(), **kwargs
        ),
    )


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
        nbytes = os.path.getsize(local_path)
        if os.path.isdir(local_path):
            raise StorageError(f"{local_path}: is a directory")
    except FileNotFoundError:
        raise StorageNotFoundError(f"{local_path}: no such file") from None
    except OSError as err:
        raise StorageError(f"{local_path}: {err.strerror or err}") from None
    kind = _scheme(dst)
    if kind == "hf":
        raise _read_only(dst)
    if kind == "local":
        if overwrite:
            download_file(local_path, dst)
        else:
            _copy_create_only(local_path, dst)
        return
    bucket, key = split_gs(dst)
    if not key or key.endswith("/"):
        raise StorageError(f"{dst}: not an object path (gs://bucket/key)")
    chunk_size = RESUMABLE_CHUNK_SIZE if nbytes > RESUMABLE_THRESHOLD else None
    blob = _gcs_client(dst).bucket(bucket).blob(key, chunk_size=chunk_size)
    if overwrite:
        kwargs: dict[str, Any] = {"retry": _retry()}
    else:
        kwargs = {"retry": _retry_if_generation_specified(), "if_generation_match": 0}
    _gcs_call(
        dst,
        lambda: blob.upload_from_filename(
            local_path, content_type="application/octet-stream", timeout=_timeout(), **kwargs
        ),
    )


def _copy_create_only(src: str, dst: str) -> None:
    parent = os.path.dirname(dst)
    if parent:
        makedirs(parent)
    with open(src, "rb") as source, _atomic_local_file(dst, overwrite=False) as f:
        while chunk := source.read(8 * 1024 * 1024):
            f.write(chunk)


def delete(path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """Delete one file (object); :class:`StorageNotFoundError` if missing unless ``missing_ok``."""
    path = os.fspath(path)
    kind = _scheme(path)
    if kind == "hf":
        raise _read_only(path)
    if kind == "local":
        try:
            os.unlink(path)
        except FileNotFoundError:
            if not missing_ok:
                raise StorageNotFoundError(f"{path}: no such file") from None
        except OSError as err:
            raise StorageError(f"{path}: {err.strerror or err}") from None
        return
    blob = _blob(path)
    try:
        _gcs_call(path, lambda: blob.delete(timeout=_timeout(), retry=_retry()))
    except StorageNotFoundError as err:
        if not missing_ok or "bucket does not exist" in str(err):
            raise


def makedirs(path: str | os.PathLike[str]) -> None:
    """Create a local folder and its parents; a no-op for ``gs://`` (GCS has no folders)."""
    path = os.fspath(path)
    kind = _scheme(path)
    if kind == "hf":
        raise _read_only(path)
    if kind == "gs":
        split_gs(path)
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise StorageError(f"{err.filename or path}: {err.strerror or err}") from None


# -- TensorFlow -----------------------------------------------------------------------------------------

_TF_IO_LOCK = threading.Lock()
_TF_IO_LOADED = False


def tf_path(path: str | os.PathLike[str]) -> str:
    """``path`` in a form ``tf.io.gfile`` and ``tf.data`` can open.

    Local paths and ``gs://`` paths are returned as they are (``gs://bucket`` gets its trailing
    slash, which TF's GCS filesystems need). When ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` is set, the
    tensorflow-io GCS plugin is loaded first (see the module docstring); production uses TF's
    built-in ``gs://`` support and never imports tensorflow-io. ``hf://`` paths cannot be opened by
    TensorFlow: download them first.
    """
    path = os.fspath(path)
    kind = _scheme(path)
    if kind == "hf":
        raise StorageError(f"{path}: TensorFlow cannot open hf:// paths; download the files first")
    if kind == "local":
        return path
    bucket, key = split_gs(path)
    if os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT"):
        _load_tf_io_gcs_plugin(path)
    return f"{GS}{bucket}/{key}"


def _load_tf_io_gcs_plugin(path: str) -> None:
    """Import tensorflow_io so that its GCS plugin (which honours the emulator endpoint) serves gs://."""
    global _TF_IO_LOADED
    with _TF_IO_LOCK:
        if _TF_IO_LOADED:
            return
        if os.environ.get("TF_USE_MODULAR_FILESYSTEM") != "1":
            if "tensorflow" in sys.modules:
                raise StorageError(
                    f"{path}: CLOUD_STORAGE_EMULATOR_ENDPOINT is set but TensorFlow was imported without "
                    "TF_USE_MODULAR_FILESYSTEM=1; set it before importing tensorflow"
                )
            os.environ["TF_USE_MODULAR_FILESYSTEM"] = "1"
        for name, value in _TF_IO_GCS_CACHE_ENV.items():
            os.environ.setdefault(name, value)
        try:
            import tensorflow_io  # noqa: F401  (registers the gs:// plugin)
        except Exception as err:
            raise StorageError(
                f"{path}: CLOUD_STORAGE_EMULATOR_ENDPOINT is set but the tensorflow-io GCS plugin cannot be "
                f"loaded ({type(err).__name__}: {_one_line(err)[:200]}); pip install tensorflow-io==0.37.1"
            ) from None
        _TF_IO_LOADED = True
