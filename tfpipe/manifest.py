"""Shard manifests: the commit marker of an encoded shard, and how readers find complete data.

``data_prep.encode`` publishes a shard's TFRecord files first and ``DST/manifest-IIIII-of-NNNNN.json``
last. A file that no manifest lists (a killed run, a temporary name) is never read: readers go
through :func:`read_manifests`, which returns only shards whose manifest exists.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

from tfpipe import storage
from tfpipe.records import LAYOUT_VERSION

MANIFEST_RE = re.compile(r"manifest-(\d{5})-of-(\d{5})\.json$")


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or does not match its files or the expected schema."""


@dataclass
class FileEntry:
    name: str
    """File name relative to the data folder."""
    bytes: int
    sha256: str
    records: int
    samples: int
    time_min: int | None = None
    """Earliest sample time (seconds since 0001-01-01); None when unknown (Kaggle CSV) or not recorded."""
    time_max: int | None = None


@dataclass
class Manifest:
    """What one encode shard wrote (JSON on disk)."""

    shard: int
    num_shards: int
    schema: str
    format: str
    source: str
    stride: int
    n_inputs: int
    n_targets: int
    has_targets: bool
    files: list[FileEntry]
    source_files: list[str]
    dropped_samples: int = 0
    bad_values: list[dict] = field(default_factory=list)
    layout_version: int = LAYOUT_VERSION
    float64_columns: str = "state_q0002"
    precision: str = (
        "inputs and targets float32; state_q0002 levels also float64 (x64) so that "
        "ptend_q0002 = -state_q0002/1200 is exact in float64"
    )

    @property
    def samples(self) -> int:
        return sum(f.samples for f in self.files)

    def to_json(self) -> str:
        data = asdict(self)
        data["samples"] = self.samples
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
            data.pop("samples", None)
            data["files"] = [FileEntry(**f) for f in data["files"]]
            manifest = cls(**data)
        except (ValueError, TypeError, KeyError) as err:
            raise ManifestError(f"{where}: not a valid manifest ({err})") from None
        if manifest.layout_version != LAYOUT_VERSION:
            raise ManifestError(
                f"{where}: record layout version {manifest.layout_version}, "
                f"this tfpipe reads {LAYOUT_VERSION}"
            )
        return manifest


def manifest_name(shard: int, num_shards: int) -> str:
    return f"manifest-{shard:05d}-of-{num_shards:05d}.json"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(manifest: Manifest, folder: str, check_hashes: bool = True) -> str | None:
    """None when every listed file exists with its size (and hash); else what is wrong."""
    for entry in manifest.files:
        path = storage.join(folder, entry.name)
        if not storage.exists(path):
            return f"{path}: missing"
        if storage.size(path) != entry.bytes:
            return f"{path}: size {storage.size(path)}, manifest says {entry.bytes}"
        if check_hashes and sha256_of(storage.read_bytes(path)) != entry.sha256:
            return f"{path}: sha256 differs from the manifest"
    return None


def read_manifests(folder: str, schema: str | None = None) -> list[Manifest]:
    """The manifests of all complete shards under ``folder``, in shard order.

    Raises ManifestError when there is none, when shards disagree on ``num_shards`` or schema,
    or when ``schema`` is given and differs.
    """
    paths = [p for p in storage.list_files(folder, suffix=".json") if MANIFEST_RE.search(p)]
    if not paths:
        raise ManifestError(f"{folder}: no encoded shards (no manifest-*-of-*.json)")
    manifests = [Manifest.from_json(storage.read_bytes(p).decode(), p) for p in sorted(paths)]
    schemas = {m.schema for m in manifests}
    if len(schemas) > 1:
        raise ManifestError(f"{folder}: shards of different schemas {sorted(schemas)}")
    if schema is not None and schemas != {schema}:
        raise ManifestError(f"{folder}: data has schema {schemas.pop()!r}, expected {schema!r}")
    return manifests


def data_files(folder: str, manifests: list[Manifest]) -> list[str]:
    """Full paths of every TFRecord file of ``manifests``, in shard then file order."""
    return [storage.join(folder, f.name) for m in manifests for f in m.files]
