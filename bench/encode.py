"""Benchmark: encoding a raw tree to TFRecords vs only reading the same netCDF files.

    python bench/encode.py            (TFPIPE_BENCH_QUICK=1: a few steps, for tests)

Synthesises one day (72 steps) of raw files into a temporary folder, then alternates, several
times, (a) a read-only pass (open every mli/mlo file and read the variables the schema needs,
:func:`data_prep.raw.read_variables`, no encoding) and (b) the full encode (``encode_shard``, one
shard, one worker, no progress bar) into a fresh folder. Throughput is netCDF input bytes per second
(best run of each). When encoding falls below ``GOAL_RATIO`` of the read-only speed, a cProfile of
one encode goes to stderr. The last stdout line is JSON: ``{"encode_mb_per_s", "read_only_mb_per_s",
"ratio_vs_read_only", "bytes_per_sample_ratio", "samples"}``; the ratios are what to compare across
machines (both sides measured in the same run).
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
from tfpipe.schema import NCOL, get_schema  # noqa: E402

QUICK = os.environ.get("TFPIPE_BENCH_QUICK", "") not in ("", "0")
STEPS = 6 if QUICK else 72
REPEATS = 2 if QUICK else 5
SCHEMA = "kaggle"
GOAL_RATIO = 0.85


def read_only(pairs: list[tuple[str, str]]) -> float:
    """Seconds to read every variable the schema needs from every (mli, mlo) pair."""
    schema = get_schema(SCHEMA)
    t0 = time.perf_counter()
    for mli, mlo in pairs:
        read_variables(mli, schema.mli_variables)
        read_variables(mlo, schema.mlo_variables)
    return time.perf_counter() - t0


def encode(src: Path, work: Path, run: int) -> tuple[float, int, int]:
    """(seconds, TFRecord bytes, samples) of one full encode of ``src`` into a new folder."""
    dst = work / f"encoded-{run}"
    config = EncodeConfig(str(src), str(dst), 0, 1, schema=SCHEMA, workers=1, progress=False)
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

        reads, encodes = [], []
        encoded_bytes = samples = 0
        for run in range(1, REPEATS + 1):
            reads.append(read_only(pairs))
            seconds, encoded_bytes, samples = encode(src, work, run)
            encodes.append(seconds)
            print(f"run {run}: read-only {reads[-1]:.3f} s, encode {seconds:.3f} s", file=sys.stderr)

        read_mb_s = raw_bytes / 1e6 / min(reads)
        encode_mb_s = raw_bytes / 1e6 / min(encodes)
        ratio = encode_mb_s / read_mb_s
        print(
            f"best: read-only {read_mb_s:.0f} MB/s, encode {encode_mb_s:.0f} MB/s (ratio {ratio:.3f}); "
            f"median ratio {statistics.median(reads) / statistics.median(encodes):.3f}",
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
        "bytes_per_sample_ratio": round((encoded_bytes / samples) / (raw_bytes / samples), 3),
        "samples": samples,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
