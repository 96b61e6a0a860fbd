"""Path schemes and joining: local paths, ``gs://bucket/key`` and ``hf://datasets/OWNER/NAME/...``."""

from __future__ import annotations

import os
import re

from tfpipe.storage.base import StorageError

GS = "gs://"
HF = "hf://"
_SCHEMES = (GS, HF)
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for ``gs://`` and ``hf://`` paths."""
    return str(path).startswith(_SCHEMES)


def scheme(path: str) -> str:
    """``"local"``, ``"gs"`` or ``"hf"``; StorageError for any other URL scheme."""
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
