"""Download one shard of a raw ClimSim tree (Hugging Face dataset, gs:// or local) to a local folder.

    python -m data_prep.download --src hf://datasets/LEAP/ClimSim_low-res --dst DIR
        --shard I --num-shards N [--months 0001-02..0008-01] [--revision main] [--workers 8]

Lists ``train/YYYY-MM/E3SM-MMF.{mli,mlo}.*.nc`` under SRC (only the month folders in ``--months``,
inclusive), sorts the mli files, takes ``[I::N]`` and downloads each mli file, its mlo partner and
the grid file (``grid-info.nc`` or ``*_grid-info.nc`` at the top, if present) into DIR with the same
layout (``DIR/train/YYYY-MM/...``). ``--shard`` defaults to ``$JOB_COMPLETION_INDEX`` or
``$CLOUD_RUN_TASK_INDEX`` and ``--num-shards`` to ``$CLOUD_RUN_TASK_COUNT``, so one command fans out
over Kubernetes indexed jobs, Cloud Batch or Cloud Run jobs.

A Hugging Face revision is resolved to its commit sha first and all listing and fetching happens at
that commit. Files are fetched with ``huggingface_hub.hf_hub_download`` (``HF_ENDPOINT`` honoured;
the client retries a dropped connection, continuing with a Range request once a 10 MB read chunk has
arrived; the file is written under a temporary name and renamed; its small bookkeeping files go to
``DIR/.cache/huggingface``). Other sources go through :func:`tfpipe.storage.download_file`. Every
fetched file is then checked against the listing: its size, and its sha256 (LFS files), git blob sha1
(small hub files) or md5 (GCS). A file already in DIR with the listed size is skipped, so a re-run
after an interruption fetches only what is missing (resumption is per file); a partial file of a
killed run never has the final name. The last stdout line is a JSON summary; errors are one line on
stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.sharding import COUNT_ENV, SHARD_ENV, ShardEnvError, int_from_env
from tfpipe import storage
from tfpipe.console import ArgumentParser, check_path_arguments
from tfpipe.data.rawtree import parse_raw_file_name, partner_path

PROG = "data_prep.download"
SPLIT = "train"
_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


class DownloadError(RuntimeError):
    """A listing or download problem; the message is one line."""


@dataclass(frozen=True)
class MonthRange:
    """Inclusive range of ``YYYY-MM`` months; None ends are open."""

    first: str | None = None
    last: str | None = None

    def __contains__(self, month: str) -> bool:
        return (self.first is None or month >= self.first) and (self.last is None or month <= self.last)

    def __str__(self) -> str:
        return f"{self.first or ''}..{self.last or ''}"


@dataclass(frozen=True)
class Job:
    """One file to fetch: its path relative to the tree root, size and checksum from the listing."""

    rel: str
    size: int
    checksum: str | None


@dataclass
class DownloadSummary:
    """What a download run did (the JSON summary line)."""

    src: str
    dst: str
    revision: str | None
    commit: str | None
    shard: int
    num_shards: int
    months: str | None
    pairs_listed: int
    pairs: int
    files: int
    downloaded: int
    skipped: int
    bytes_downloaded: int
    bytes_total: int
    seconds: float


# -- arguments ------------------------------------------------------------------------------------------


def _month(text: str) -> str:
    match = _MONTH_RE.match(text)
    if not match or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(f"bad month {text!r}: expected YYYY-MM, e.g. 0001-02")
    return text


def parse_months(text: str) -> MonthRange:
    """``A..B``, ``A..``, ``..B`` or a single ``A`` (YYYY-MM, inclusive)."""
    first, sep, last = text.partition("..")
    if not sep:
        last = first
    months = MonthRange(_month(first) if first else None, _month(last) if last else None)
    if months.first and months.last and months.first > months.last:
        raise argparse.ArgumentTypeError(f"empty month range {text!r}: {months.first} is after {months.last}")
    return months


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--src", required=True, help="hf://datasets/OWNER/NAME, gs://bucket/path or a local raw tree"
    )
    parser.add_argument("--dst", required=True, help="local output folder (the tree layout is kept)")
    parser.add_argument(
        "--shard",
        type=int,
        default=None,
        help="shard index I (default $JOB_COMPLETION_INDEX, $CLOUD_RUN_TASK_INDEX, 0)",
    )
    parser.add_argument(
        "--num-shards", type=int, default=None, help="number of shards N (default $CLOUD_RUN_TASK_COUNT or 1)"
    )
    parser.add_argument(
        "--months", type=parse_months, default=None, help="inclusive month range, e.g. 0001-02..0008-01"
    )
    parser.add_argument(
        "--revision", default=None, help="branch, tag or commit of an hf:// source (default main)"
    )
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads")
    return check_path_arguments(parser)


# -- listing --------------------------------------------------------------------------------------------


def _hf_repo(src: str) -> str:
    parts = src[len("hf://") :].strip("/").split("/")
    if len(parts) != 3 or parts[0] != "datasets" or "@" in parts[2]:
        raise DownloadError(f"{src}: expected hf://datasets/OWNER/NAME (give the revision with --revision)")
    return f"{parts[1]}/{parts[2]}"


def source_root(src: str, revision: str | None) -> tuple[str, str | None]:
    """``(root, commit)``: the tree's root as a storage path and, for Hugging Face, the commit sha.

    A Hugging Face revision is resolved to its commit once, and everything is listed and fetched
    at ``hf://datasets/OWNER/NAME@SHA``, so a branch that moves during the run cannot mix commits.
    """
    if src.startswith("hf://"):
        _hf_repo(src)
        commit = storage.hf_commit(f"{src.rstrip('/')}@{revision or 'main'}")
        return f"{src.rstrip('/')}@{commit}", commit
    if revision is not None:
        raise DownloadError(f"--revision applies to hf:// sources only, not {src}")
    return (src.rstrip("/") or src), None


def list_source(
    root: str, months: MonthRange | None, workers: int
) -> tuple[list[Job], list[Job], list[Job], int]:
    """``(mli, mlo, grid, ignored)``: jobs of the raw files in the selected months and the grid file(s)."""
    top = storage.listdir(root)
    grid = [name for name in top if name == "grid-info.nc" or name.endswith("_grid-info.nc")]
    month_dirs = [m for m in storage.listdir(storage.join(root, SPLIT)) if _MONTH_RE.match(m)]
    month_dirs = [m for m in month_dirs if months is None or m in months]

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(month_dirs) or 1))) as pool:
        listings = list(
            pool.map(lambda m: storage.list_file_infos(storage.join(root, SPLIT, m), ".nc"), month_dirs)
        )
    mli: list[Job] = []
    mlo: list[Job] = []
    ignored = 0
    prefix = root.rstrip("/") + "/" if storage.is_remote(root) else os.path.join(root, "")
    for month, infos in zip(month_dirs, listings, strict=True):
        for info in infos:
            rel = info.path[len(prefix) :].replace(os.sep, "/")
            try:
                kind, when = parse_raw_file_name(rel)
            except ValueError:
                ignored += 1
                continue
            if (
                rel != f"{SPLIT}/{month}/{rel.rsplit('/', 1)[-1]}"
                or f"{when.year:04d}-{when.month:02d}" != month
            ):
                ignored += 1  # not directly in its own month folder
                continue
            (mli if kind == "mli" else mlo).append(Job(rel, info.size, info.checksum))
    grid_jobs = []
    for name in grid:
        for info in storage.list_file_infos(storage.join(root, name)):
            grid_jobs.append(Job(name, info.size, info.checksum))
    return sorted(mli, key=lambda j: j.rel), mlo, grid_jobs, ignored


def select_shard(
    mli: list[Job], mlo: list[Job], shard: int, num_shards: int, src: str
) -> list[tuple[Job, Job]]:
    """The ``[shard::num_shards]`` mli files of the sorted list, each with its mlo partner."""
    by_rel = {job.rel: job for job in mlo}
    pairs = []
    for job in mli[shard::num_shards]:
        partner = partner_path(job.rel)
        if partner not in by_rel:
            raise DownloadError(f"{job.rel} has no mlo partner {partner} in {src}")
        pairs.append((job, by_rel[partner]))
    return pairs


# -- downloading ----------------------------------------------------------------------------------------


def _file_checksum(path: Path, checksum: str) -> str:
    algorithm, _, _ = checksum.partition(":")
    if algorithm == "sha256":
        digest = hashlib.sha256()
    elif algorithm == "git-sha1":
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(f"blob {path.stat().st_size}\0".encode())
    elif algorithm == "md5":
        digest = hashlib.md5(usedforsecurity=False)
    else:
        return checksum  # not one we can compute (e.g. crc32c): the client verified it
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"


class Downloader:
    """Fetches jobs from one source into ``dst``, counting what it did."""

    def __init__(self, src: str, root: str, dst: Path, commit: str | None) -> None:
        self.src, self.root, self.dst, self.commit = src, root, dst, commit
        self.hf_repo = _hf_repo(src) if src.startswith("hf://") else None
        self.lock = threading.Lock()
        self.downloaded = self.skipped = self.bytes_downloaded = 0
        self.cancelled = threading.Event()

    def fetch(self, job: Job) -> None:
        if self.cancelled.is_set():
            return
        target = self.dst / job.rel
        if target.is_file() and target.stat().st_size == job.size:
            with self.lock:
                self.skipped += 1
            return
        target.unlink(missing_ok=True)  # wrong size: fetch it anew
        if self.hf_repo is not None:
            self._fetch_hf(job)
        else:
            storage.download_file(storage.join(self.root, job.rel), str(target))
        actual = target.stat().st_size
        if actual != job.size:
            target.unlink(missing_ok=True)
            raise DownloadError(f"{job.rel}: downloaded {actual} bytes, the listing says {job.size}")
        if job.checksum is not None:
            got = _file_checksum(target, job.checksum)
            if got != job.checksum:
                target.unlink(missing_ok=True)
                raise DownloadError(f"{job.rel}: checksum mismatch (got {got}, expected {job.checksum})")
        with self.lock:
            self.downloaded += 1
            self.bytes_downloaded += actual

    def _fetch_hf(self, job: Job) -> None:
        from huggingface_hub import hf_hub_download

        endpoint = os.environ.get("HF_ENDPOINT") or None
        try:
            hf_hub_download(
                self.hf_repo,
                job.rel,
                repo_type="dataset",
                revision=self.commit,
                local_dir=self.dst,
                endpoint=endpoint.rstrip("/") if endpoint else None,
            )
        except Exception as err:
            message = " ".join(str(err).split())[:300]
            raise DownloadError(f"{self.src}/{job.rel}: {type(err).__name__}: {message}") from None


def run(
    src: str,
    dst: str | os.PathLike[str],
    shard: int,
    num_shards: int,
    months: MonthRange | None = None,
    revision: str | None = None,
    workers: int = 8,
    log=None,
) -> DownloadSummary:
    """Download shard ``shard`` of ``num_shards``; DownloadError or StorageError on failure."""
    t0 = time.perf_counter()
    if storage.is_remote(dst):
        raise DownloadError(f"{dst}: --dst must be a local folder")
    if not 0 <= shard < num_shards:
        raise DownloadError(
            f"--shard {shard} out of range for --num-shards {num_shards} (0..{num_shards - 1})"
        )
    root, commit = source_root(src, revision)
    mli, mlo, grid, ignored = list_source(root, months, workers)
    where = f"{src} (revision {revision or 'main'})" if src.startswith("hf://") else src
    if not mli:
        span = f" for months {months}" if months else ""
        raise DownloadError(f"no raw files ({SPLIT}/YYYY-MM/E3SM-MMF.mli.*.nc) in {where}{span}")
    pairs = select_shard(mli, mlo, shard, num_shards, where)
    jobs = grid + [job for pair in pairs for job in pair]
    out = Path(dst).absolute()
    out.mkdir(parents=True, exist_ok=True)
    downloader = Downloader(src, root, out, commit)
    if log:
        log(
            f"{len(mli)} mli files listed ({ignored} other files ignored); shard {shard}/{num_shards}: "
            f"{len(pairs)} pairs + {len(grid)} grid file(s), {sum(j.size for j in jobs) / 1e6:.1f} MB"
        )
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(downloader.fetch, job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            downloader.cancelled.set()
            for future in futures:
                future.cancel()
            raise failed[0].exception()  # type: ignore[misc]
    return DownloadSummary(
        src=src,
        dst=str(out),
        revision=(revision or "main") if src.startswith("hf://") else None,
        commit=commit,
        shard=shard,
        num_shards=num_shards,
        months=str(months) if months else None,
        pairs_listed=len(mli),
        pairs=len(pairs),
        files=len(jobs),
        downloaded=downloader.downloaded,
        skipped=downloader.skipped,
        bytes_downloaded=downloader.bytes_downloaded,
        bytes_total=sum(job.size for job in jobs),
        seconds=round(time.perf_counter() - t0, 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log = lambda message: print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    try:
        shard, shard_env = (args.shard, None) if args.shard is not None else int_from_env(SHARD_ENV)
        num_shards, _ = (args.num_shards, None) if args.num_shards is not None else int_from_env(COUNT_ENV)
    except ShardEnvError as err:
        parser.error(str(err))
    shard = 0 if shard is None else shard
    num_shards = 1 if num_shards is None else num_shards
    if num_shards < 1:
        parser.error(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        origin = f"${shard_env}" if shard_env else "--shard"
        parser.error(f"{origin}={shard} out of range for --num-shards {num_shards} (0..{num_shards - 1})")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        summary = run(args.src, args.dst, shard, num_shards, args.months, args.revision, args.workers, log)
    except (DownloadError, storage.StorageError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{PROG}: error: {err.filename or args.dst}: {err.strerror or err}", file=sys.stderr)
        return 2
    log(
        f"shard {shard}/{num_shards}: {summary.downloaded} files downloaded "
        f"({summary.bytes_downloaded / 1e6:.1f} MB), {summary.skipped} already present, "
        f"{summary.pairs} pairs in {summary.seconds:.1f} s"
    )
    print(json.dumps(asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
