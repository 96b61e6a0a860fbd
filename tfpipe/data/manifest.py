"""Shard manifests: the commit marker of an encoded shard, and how readers find complete data.

``data_prep.encode`` publishes a shard's TFRecord files first and ``DST/manifest-IIIII-of-NNNNN.json``
last. A file that no manifest lists (a killed run, a temporary name) is never read: readers go
through :func:`read_manifests`, which returns only shards whose manifest exists, and refuses a shard
set that is not one consistent, complete set: manifests of different ``--num-shards``, or of other
encode parameters (source, schema, stride, ...), are an error; so are missing shards, unless the
reader allows a partial set (``--allow-partial``, ``data.allow_partial``), which is logged. Every
listed file must be there with the size its manifest records (one listing: a stat locally, the
listing's sizes on gs://), so a truncated or lost file is refused before anything reads it, partial
set or not; a changed byte of the same size is caught by the records' CRCs when read.

A manifest records what produced it (:meth:`Manifest.producer`), so a re-run with other parameters
is refused instead of being skipped as complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field

from tfpipe import storage
from tfpipe.data.records import LAYOUT_VERSION

MANIFEST_RE = re.compile(r"manifest-(\d{5})-of-(\d{5})\.json$")
ENCODER = "tfpipe-encode 2"
"""What wrote a manifest (bumped when the same options would give other bytes)."""
log = logging.getLogger(__name__)


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
    float64_targets: str = "ptend_q0002"
    precision: str = (
        "inputs and targets float32; state_q0002 levels also float64 (x64) so that "
        "ptend_q0002 = -state_q0002/1200 is exact in float64; ptend_q0002 targets also float64 (y64) "
        "so that the truth keeps values below float32's range"
    )
    blocks_per_file: int | None = None
    block_size: int | None = None
    on_bad_values: str | None = None
    encoder: str | None = None

    def producer(self) -> dict:
        """The parameters that fix this shard's content (None: an older manifest did not record it).

        ``--src`` is compared resolved (:func:`source_key`): ``raw`` and ``$PWD/raw`` are one source.
        """
        return {
            "--src": source_key(self.source), "--format": self.format, "--schema": self.schema,
            "--stride": self.stride, "--num-shards": self.num_shards,
            "--blocks-per-file": self.blocks_per_file, "--block-size": self.block_size,
            "--on-bad-values": self.on_bad_values, "encoder": self.encoder,
        }  # fmt: skip

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


def source_key(src: str) -> str:
    """``src`` as a manifest records and compares it: a local path resolved (absolute, symbolic links
    followed), a gs:// or hf:// URL as it is."""
    return src if not src or storage.is_remote(src) else os.path.realpath(src)


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


def differences(a: dict, b: dict) -> list[str]:
    """``--option A vs B`` for each producer parameter both record and that differs."""
    return [
        f"{k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] is not None and b.get(k) is not None and a[k] != b[k]
    ]


def _no_shards(folder: str) -> ManifestError:
    if folder.endswith(".csv"):
        return ManifestError(f"{folder}: a CSV file, not encoded shards: encode it first "
                             "(python -m data_prep.encode --format kaggle-csv)")  # fmt: skip
    if not storage.is_remote(folder) and not storage.exists(folder):
        return ManifestError(f"{folder}: no such folder")
    names = storage.listdir(folder) if storage.exists(folder) else []
    if "train" in names or any(n.endswith(".nc") for n in names):
        return ManifestError(f"{folder}: a raw netCDF tree, not encoded shards: run "
                             "python -m data_prep.encode on it first")  # fmt: skip
    return ManifestError(
        f"{folder}: no encoded shards (no manifest-*-of-*.json; run python -m data_prep.encode)"
    )


def read_manifests(folder: str, schema: str | None = None, allow_partial: bool = False) -> list[Manifest]:
    """The manifests of the complete shard set under ``folder``, in shard order.

    Raises ManifestError when there is none, when the manifests are not one consistent set (another
    ``--num-shards``, schema, source, stride, ...), when shards are missing (unless ``allow_partial``:
    then a warning names them), when ``schema`` is given and differs, or when a file a manifest
    lists is missing or not of its recorded size (never excused by ``allow_partial``).
    """
    listing = storage.list_file_infos(folder)
    paths = sorted(i.path for i in listing if i.path.endswith(".json") and MANIFEST_RE.search(i.path))
    if not paths:
        raise _no_shards(folder)
    manifests = [Manifest.from_json(storage.read_bytes(p).decode(), p) for p in paths]
    first, first_path = manifests[0], paths[0]
    for m, path in zip(manifests[1:], paths[1:], strict=True):
        differ = differences(first.producer(), m.producer())
        if differ:
            raise ManifestError(
                f"{folder}: {path.rsplit('/', 1)[-1]} and {first_path.rsplit('/', 1)[-1]} "
                "are not one shard set "
                f"({'; '.join(differ)}): re-encode into another folder, or delete the stale manifests"
            )
    missing = sorted(set(range(first.num_shards)) - {m.shard for m in manifests})
    if missing:
        names = ", ".join(manifest_name(i, first.num_shards) for i in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        what = f"{len(missing)} of {first.num_shards} shards are missing ({names}{more})"
        if not allow_partial:
            raise ManifestError(
                f"{folder}: {what}: run data_prep.encode for them, or allow a partial set "
                "(--allow-partial, data.allow_partial: true)"
            )
        log.warning(
            "%s: %s; using the %d complete shards (allowed partial set)", folder, what, len(manifests)
        )
    if schema is not None and first.schema != schema:
        raise ManifestError(f"{folder}: data has schema {first.schema!r}, expected {schema!r}")
    _check_sizes(folder, manifests, paths, {_key(i.path): i.size for i in listing})
    return manifests


def _key(path: str) -> str:
    """``path`` in one spelling (local paths normalised; remote ones have one already)."""
    return path if storage.is_remote(path) else os.path.normpath(path)


def _check_sizes(folder: str, manifests: list[Manifest], paths: list[str], sizes: dict[str, int]) -> None:
    """ManifestError naming the first file a manifest lists that is missing or not of its recorded size."""
    for manifest, where in zip(manifests, paths, strict=True):
        for entry in manifest.files:
            path = storage.join(folder, entry.name)
            found = sizes.get(_key(path))
            if found is None:  # not in the listing (below a linked folder, say): ask for the file itself
                try:
                    found = storage.size(path)
                except storage.StorageNotFoundError:
                    pass
            if found is None:
                problem = "missing"
            elif found != entry.bytes:
                problem = f"{found} bytes, but {where.rsplit('/', 1)[-1]} records {entry.bytes}"
            else:
                continue
            raise ManifestError(
                f"{path}: {problem} (damaged or changed since it was encoded): re-encode shard "
                f"{manifest.shard} (python -m data_prep.encode --overwrite)"
            )


def data_files(folder: str, manifests: list[Manifest]) -> list[str]:
    """Full paths of every TFRecord file of ``manifests``, in shard then file order."""
    return [storage.join(folder, f.name) for m in manifests for f in m.files]
