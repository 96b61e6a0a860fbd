"""Path schemes and joining: local paths, ``gs://bucket/key`` and ``hf://datasets/OWNER/NAME/...``.

A ``gs://`` URL is checked in one place: :func:`scheme` (which every storage operation and
:func:`join` go through) refuses one without a bucket (``gs://``, ``gs:///x``) and a mangled
prefix (``gs:``, ``gs:/x``, e.g. ``gs://`` with its slashes stripped) instead of treating it as a
local path or taking the next path component as the bucket; :func:`check_path`, which the
commands apply to their path arguments up front, also checks the bucket name.
"""

from __future__ import annotations

import os
import re

from tfpipe.storage.base import StorageError

GS = "gs://"
HF = "hf://"
_SCHEMES = (GS, HF)
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MANGLED_RE = re.compile(r"^(gs|hf):(/(?!/)|$)")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]|[a-z0-9][a-z0-9._-]{62,220}[a-z0-9]")
"""GCS bucket names (names with dots may be longer: up to 222, in dot-separated parts)."""


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for ``gs://`` and ``hf://`` paths."""
    return str(path).startswith(_SCHEMES)


def scheme(path: str) -> str:
    """``"local"``, ``"gs"`` or ``"hf"``; StorageError for any other URL scheme, for ``gs://``
    without a bucket and for a ``gs:``/``hf:`` prefix without its two slashes."""
    if path.startswith(GS):
        if not path[len(GS) :].partition("/")[0]:
            raise StorageError(f"{path}: gs:// URL without a bucket name (gs://BUCKET/PATH)")
        return "gs"
    if path.startswith(HF):
        return "hf"
    if _URL_RE.match(path):
        raise StorageError(f"{path}: unsupported URL scheme (use a local path, gs:// or hf://)")
    mangled = _MANGLED_RE.match(path)
    if mangled:
        raise StorageError(f"{path}: not a {mangled[1]}:// URL (write {mangled[1]}://...)")
    return "local"


def check_bucket_name(path: str) -> None:
    """A StorageError for a ``gs://`` path whose bucket name GCS would reject (or that has none)."""
    scheme(path)
    bucket = path[len(GS) :].partition("/")[0]
    if not BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise StorageError(
            f"{path}: {bucket!r} is not a valid bucket name "
            "(3-63 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        )


def check_path(path: str | os.PathLike[str]) -> str:
    """``path`` if it is a local path, a well-formed ``gs://BUCKET[/key]`` or an ``hf://`` URL; else
    StorageError naming it. Commands apply this to every path argument before doing anything."""
    path = os.fspath(path)
    if scheme(path) == "gs":
        check_bucket_name(path)
    return path


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path components: ``/`` for ``gs://`` and ``hf://`` (no doubled slashes), ``os.path`` locally."""
    base = os.fspath(base)
    if scheme(base) == "local":
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
    scheme(path)
    bucket, _, key = path[len(GS) :].partition("/")
    return bucket, key
