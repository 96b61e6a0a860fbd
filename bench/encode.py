"""Benchmark: encoding a raw tree to TFRecords vs only reading the same netCDF files.

    python bench/encode.py            (TFPIPE_BENCH_QUICK=1: a few steps, for tests)

Synthesises three days (216 steps, 700 MB: a real shard holds weeks) of raw files into a temporary
folder, then alternates, several times, (a) a read-only pass (one process opens every mli/mlo file and
reads the variables the schema needs, :func:`data_prep.raw.read_variables`, no encoding) and (b) the full
encode (``encode_shard``, one shard, no progress bar) into a fresh folder, with ``--workers 1`` (one
reader process, the writer on a thread) and ``--workers 2`` (two reader processes, one per core here;
their start-up is timed too). Throughput is netCDF input bytes per second (best run of each). When
encoding falls below ``GOAL_RATIO`` of the read-only speed, a cProfile of one encode goes to stderr.
The last stdout line is JSON: ``{"encode_mb_per_s", "read_only_mb_per_s", "ratio_vs_read_only",
"ratio_vs_read_only_by_workers", "bytes_per_sample_ratio", "samples"}``, the first and third for the
best worker count; the ratios are what to compare across machines (both sides measured in the same run).
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.encode import EncodeConfig, encode_shard, list_raw_pairs  # noqa: E402
from data_prep.raw import read_variables  # noqa: E402
from data_prep.synth import synthesize  # noqa: E402
from tfpipe.data.schema import NCOL, get_schema  # noqa: E402

QUICK = os.environ.get("TFPIPE_BENCH_QUICK", "") not in ("", "0")
STEPS = 6 if QUICK else 216
REPEATS = 2 if QUICK else 5
SCHEMA = "kaggle"
GOAL_RATIO = 0.85
WORKERS = (1, 2)


def read_only(pairs: list[tuple[str, str]]) -> float:
    """Seconds to read every variable the schema needs from every (mli, mlo) pair."""
    schema = get_schema(SCHEMA)
    t0 = time.perf_counter()
    for mli, mlo in pairs:
        read_variables(mli, schema.mli_variables)
        read_variables(mlo, schema.mlo_variables)
    return time.perf_counter() - t0


def encode(src: Path, work: Path, run: int, workers: int = 1) -> tuple[float, int, int]:
    """(seconds, TFRecord bytes, samples) of one full encode of ``src`` into a new folder."""
    dst = work / f"encoded-{run}"
    config = EncodeConfig(str(src), str(dst), 0, 1, schema=SCHEMA, workers=workers, progress=False)
    t0 = time.perf_counter()
    summary = encode_shard(config)
    seconds = time.perf_counter() - t0
    for path in dst.iterdir():
        path.unlink()
    dst.rmdir()
    return seconds, summary.bytes, summary.samples


def profile_encode(src: Path, work: Path) -> str:
    """The top functions (by own time) of one profiled encode."""
    profiler = cProfile.Profile()
    profiler.enable()
    encode(src, work, -1)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tfpipe-bench-encode-") as tmp:
        work = Path(tmp)
        src = work / "raw"
        t0 = time.perf_counter()
        synthesize(src, days=STEPS / 72, seed=0)
        pairs = list_raw_pairs(str(src), 1)
        raw_bytes = sum(os.path.getsize(p) for pair in pairs for p in pair)
        print(
            f"synthesised {len(pairs)} steps, {raw_bytes / 1e6:.0f} MB of mli+mlo in "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        encode(src, work, 0)  # warm-up: imports (TF protobufs, crc32c) and the page cache
        read_only(pairs)

        reads: list[float] = []
        encodes: dict[int, list[float]] = {w: [] for w in WORKERS}
        encoded_bytes = samples = 0
        for run in range(1, REPEATS + 1):
            reads.append(read_only(pairs))
            for workers in WORKERS:
                seconds, encoded_bytes, samples = encode(src, work, run, workers)
                encodes[workers].append(seconds)
            times = ", ".join(f"encode --workers {w} {encodes[w][-1]:.3f} s" for w in WORKERS)
            print(f"run {run}: read-only {reads[-1]:.3f} s, {times}", file=sys.stderr)

        read_mb_s = raw_bytes / 1e6 / min(reads)
        ratios = {w: min(reads) / min(encodes[w]) for w in WORKERS}
        best = max(WORKERS, key=ratios.__getitem__)
        encode_mb_s, ratio = read_mb_s * ratios[best], ratios[best]
        for w in WORKERS:
            print(
                f"--workers {w}: encode {read_mb_s * ratios[w]:.0f} MB/s vs read-only {read_mb_s:.0f} MB/s "
                f"(best ratio {ratios[w]:.3f}; median ratio "
                f"{statistics.median(reads) / statistics.median(encodes[w]):.3f})",
                file=sys.stderr,
            )
        if ratio < GOAL_RATIO:
            print(f"encode below {GOAL_RATIO} x read-only; profile of one encode:", file=sys.stderr)
            print(profile_encode(src, work), file=sys.stderr)

    assert samples == len(pairs) * NCOL, (samples, len(pairs))
    result = {
        "encode_mb_per_s": round(encode_mb_s, 1),
        "read_only_mb_per_s": round(read_mb_s, 1),
        "ratio_vs_read_only": round(ratio, 3),
        "ratio_vs_read_only_by_workers": {str(w): round(ratios[w], 3) for w in WORKERS},
        "bytes_per_sample_ratio": round((encoded_bytes / samples) / (raw_bytes / samples), 3),
        "samples": samples,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
