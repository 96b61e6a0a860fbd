"""``gs://`` paths through ``google-cloud-storage``: client, deadlines, retries and error mapping.

One ``storage.Client`` per process (per emulator host and project), created on first use. With
``STORAGE_EMULATOR_HOST`` set (tests) the client talks to that endpoint with ``AnonymousCredentials``
and project ``$GOOGLE_CLOUD_PROJECT`` or ``"test"``; otherwise it uses Application Default
Credentials. Every call retries transient errors with the library's ``DEFAULT_RETRY`` bounded by a
deadline of ``$TFPIPE_GCS_DEADLINE_S`` seconds (default 30), and every HTTP request has a timeout
(connect ``min(5, deadline)``, read ``min(deadline, 20)`` s between bytes), so an unreachable
endpoint, a silent server or a missing bucket ends in a :class:`StorageError`, never a hang. Object
creation with ``overwrite=False`` uses ``if_generation_match=0`` and the ``ConditionalRetryPolicy``
that retries only such preconditioned requests. An object becomes visible only when its single
(multipart or resumable) upload completes, so GCS writes are atomic.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable
from typing import IO, Any

from tfpipe.storage.base import FileInfo, StorageError, StorageNotFoundError, T, call, one_line
from tfpipe.storage.paths import GS, check_bucket_name, split_gs
from tfpipe.storage.staging import atomic_file

#: Files above this size are uploaded to GCS in resumable chunks of ``RESUMABLE_CHUNK_SIZE``.
RESUMABLE_THRESHOLD = 8 * 1024 * 1024
#: Chunk size of resumable uploads (a multiple of 256 KiB, as GCS requires).
RESUMABLE_CHUNK_SIZE = 8 * 1024 * 1024
#: Default deadline in seconds for one GCS operation, retries included.
DEFAULT_GCS_DEADLINE_S = 30.0


_CLIENT_LOCK = threading.Lock()
_CLIENTS: dict[tuple[Any, ...], Any] = {}

# -- deadlines, retries, client ---------------------------------------------------------------------


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


def _write_kwargs(overwrite: bool) -> dict[str, Any]:
    """Retry policy (and precondition) of an object creation; create-only is ``if_generation_match=0``."""
    if overwrite:
        return {"retry": _retry()}
    from google.cloud.storage.retry import ConditionalRetryPolicy, is_generation_specified

    policy = ConditionalRetryPolicy(_retry(), is_generation_specified, ["query_params"])
    return {"retry": policy, "if_generation_match": 0}


def _check_bucket_name(path: str) -> None:
    """A StorageError for a bucket name GCS would reject (checked before any request is made)."""
    check_bucket_name(path)


def reset_clients() -> None:
    """Forget cached GCS clients (tests that change ``STORAGE_EMULATOR_HOST`` call this)."""
    with _CLIENT_LOCK:
        _CLIENTS.clear()


def _client(path: str = "gs://") -> Any:
    """The process's ``storage.Client`` for the current emulator setting, created on first use.

    ``path`` names what was being accessed in the error when no client can be made (no credentials);
    its bucket name is checked first.
    """
    if path.startswith(GS) and path != GS:
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
            message = f"{type(err).__name__}: {one_line(err)[:300]}"
            raise StorageError(f"{path}: cannot create a GCS client: {message}") from None
        _CLIENTS[key] = client
        return client


# -- errors ---------------------------------------------------------------------------------------------


def _error(path: str, err: BaseException) -> StorageError:
    """A one-line StorageError for an exception raised by google-cloud-storage."""
    from google.api_core import exceptions as gexc

    if isinstance(err, gexc.RetryError):
        cause = err.cause if err.cause is not None else err
        return StorageError(
            f"{path}: GCS unreachable ({_endpoint_hint()}; gave up retrying, deadline "
            f"{gcs_deadline_s():g} s): {type(cause).__name__}: {one_line(cause)[:300]}"
        )
    if isinstance(err, gexc.NotFound):
        bucket, _ = split_gs(path)
        if not _bucket_exists(bucket):
            return _missing_bucket(bucket, path)
        return StorageNotFoundError(f"{path}: no such object")
    if isinstance(err, gexc.PreconditionFailed):
        return StorageError(f"{path}: already exists (precondition failed)")
    if isinstance(err, gexc.Forbidden | gexc.Unauthorized):
        return StorageError(f"{path}: permission denied: {one_line(getattr(err, 'message', err))[:300]}")
    if isinstance(err, gexc.GoogleAPICallError):
        return StorageError(f"{path}: GCS error {err.code}: {one_line(getattr(err, 'message', err))[:300]}")
    return StorageError(f"{path}: {type(err).__name__}: {one_line(err)[:300]} ({_endpoint_hint()})")


def _missing_bucket(bucket: str, path: str) -> StorageNotFoundError:
    return StorageNotFoundError(f"gs://{bucket}/: bucket does not exist ({path})")


def _endpoint_hint() -> str:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    return f"emulator {emulator}" if emulator else "storage.googleapis.com"


def _bucket_exists(bucket: str) -> bool:
    from google.api_core import exceptions as gexc

    try:
        return bool(_client(f"gs://{bucket}/").bucket(bucket).exists(timeout=_timeout(), retry=_retry()))
    except gexc.Forbidden:
        return True  # it exists, we just may not see its metadata
    except Exception:
        return True  # unknown: do not claim it is missing


def _call(path: str, func: Callable[[], T]) -> T:
    """Run ``func`` and turn any GCS or transport failure into a StorageError naming ``path``."""
    return call(path, func, _error)


def _blob(path: str, chunk_size: int | None = None) -> Any:
    bucket, key = split_gs(path)
    if not key or key.endswith("/"):
        raise StorageError(f"{path}: not an object path (gs://bucket/key)")
    return _client(path).bucket(bucket).blob(key, chunk_size=chunk_size)


def _checksum(blob: Any) -> str | None:
    if blob.md5_hash:
        return "md5:" + base64.b64decode(blob.md5_hash).hex()
    if blob.crc32c:
        return "crc32c:" + base64.b64decode(blob.crc32c).hex()
    return None


# -- the backend ------------------------------------------------------------------------------------------


class GcsBackend:
    """``gs://bucket/key`` objects; a "folder" is a key prefix ending in ``/``."""

    def exists(self, path: str) -> bool:
        """An object or a non-empty prefix; a missing bucket raises (a typo is not "not written yet")."""
        bucket, key = split_gs(path)
        client = _client(path)
        if not key:
            return bool(_call(path, lambda: client.bucket(bucket).exists(timeout=_timeout(), retry=_retry())))
        blob = client.bucket(bucket).blob(key.rstrip("/")) if key.rstrip("/") else None
        if blob is not None and _call(path, lambda: blob.exists(timeout=_timeout(), retry=_retry())):
            return True
        prefix = key.rstrip("/") + "/"

        def any_below() -> bool:
            listing = client.list_blobs(
                bucket, prefix=prefix, max_results=1, timeout=_timeout(), retry=_retry()
            )
            return any(True for _ in listing)

        if _call(path, any_below):
            return True
        if not _bucket_exists(bucket):
            raise _missing_bucket(bucket, path)
        return False

    def size(self, path: str) -> int:
        blob = _blob(path)

        def get_size() -> int:
            blob.reload(timeout=_timeout(), retry=_retry())
            return int(blob.size)

        return _call(path, get_size)

    def list_file_infos(self, prefix: str, suffix: str) -> list[FileInfo]:
        bucket, key = split_gs(prefix)
        key_prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
        client = _client(prefix)

        def collect() -> list[FileInfo]:
            listing = client.list_blobs(bucket, prefix=key_prefix or None, timeout=_timeout(), retry=_retry())
            return [
                FileInfo(f"{GS}{bucket}/{blob.name}", int(blob.size or 0), _checksum(blob))
                for blob in listing
                if not blob.name.endswith("/") and blob.name.endswith(suffix)
            ]

        out = _call(prefix, collect)
        if not out and key.rstrip("/") and not key.endswith("/"):
            # `prefix` may name an object itself (get_blob gives None if it does not exist).
            blob = _call(
                prefix, lambda: client.bucket(bucket).get_blob(key, timeout=_timeout(), retry=_retry())
            )
            if blob is not None and key.endswith(suffix):
                checksum = "md5:" + base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None
                return [FileInfo(prefix, int(blob.size or 0), checksum)]
        if not out and not _bucket_exists(bucket):
            raise _missing_bucket(bucket, prefix)
        return sorted(out, key=lambda info: info.path)

    def listdir(self, path: str) -> list[str]:
        bucket, key = split_gs(path)
        key_prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
        client = _client(path)

        def collect() -> list[str]:
            listing = client.list_blobs(
                bucket, prefix=key_prefix or None, delimiter="/", timeout=_timeout(), retry=_retry()
            )
            names = [blob.name[len(key_prefix) :] for blob in listing if blob.name != key_prefix]
            names += [p[len(key_prefix) :].rstrip("/") for p in listing.prefixes]
            return names

        names = _call(path, collect)
        if not names and not _bucket_exists(bucket):
            raise _missing_bucket(bucket, path)
        return sorted(set(names))

    def read_bytes(self, path: str) -> bytes:
        """The whole object (downloads are checksum-verified by the client)."""
        blob = _blob(path)
        return _call(path, lambda: blob.download_as_bytes(timeout=_timeout(), retry=_retry()))

    def open_binary(self, path: str) -> IO[bytes]:
        blob = _blob(path)
        return _call(path, lambda: blob.open("rb", chunk_size=8 << 20, retry=_retry()))

    def download_file(self, src: str, local_path: str) -> None:
        blob = _blob(src)
        with atomic_file(local_path) as f:

            def fetch() -> None:
                f.seek(0)
                f.truncate()
                blob.download_to_file(f, timeout=_timeout(), retry=_retry())

            _call(src, fetch)

    def write_bytes(self, path: str, data: bytes, overwrite: bool) -> None:
        """One multipart upload; ``overwrite=False``: StorageError "already exists" if the object does."""
        blob = _blob(path)
        kwargs = _write_kwargs(overwrite)
        _call(
            path,
            lambda: blob.upload_from_string(
                bytes(data), content_type="application/octet-stream", timeout=_timeout(), **kwargs
            ),
        )

    def upload_file(self, local_path: str, dst: str, overwrite: bool) -> None:
        """One upload; the object appears only when it completes.

        Files above ``RESUMABLE_THRESHOLD`` go up as a resumable upload in ``RESUMABLE_CHUNK_SIZE``
        chunks (each chunk retried on its own).
        """
        big = os.path.getsize(local_path) > RESUMABLE_THRESHOLD
        blob = _blob(dst, chunk_size=RESUMABLE_CHUNK_SIZE if big else None)
        kwargs = _write_kwargs(overwrite)
        _call(
            dst,
            lambda: blob.upload_from_filename(
                local_path, content_type="application/octet-stream", timeout=_timeout(), **kwargs
            ),
        )

    def delete(self, path: str, missing_ok: bool) -> None:
        blob = _blob(path)
        try:
            _call(path, lambda: blob.delete(timeout=_timeout(), retry=_retry()))
        except StorageNotFoundError as err:
            if not missing_ok or "bucket does not exist" in str(err):
                raise

    def makedirs(self, path: str) -> None:
        """A no-op (GCS has no folders) once the path is checked."""
        split_gs(path)
