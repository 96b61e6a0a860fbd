"""Benchmark: the training input pipeline vs batches from memory and vs pandas CSV reading.

    python bench/pipeline.py          (TFPIPE_BENCH_QUICK=1: a small dataset, for tests)

Builds a dataset in a temporary folder (two days of synthetic raw data, encoded as one shard,
plus ``stats.json``), then measures, alternating and several times (best run of each):

- the training pipeline ``make_train_dataset`` (parse, shuffle, batch 1024 of raw float32 columns
  and the space-time targets; one sub-epoch, 10 % of the samples held out) with default threading
  and with a private tf.data thread pool of 1 and of 2 threads. Normalisation is not here: it is
  the model's first layer (``tfpipe.data.normalize.Normalization``) and runs on the accelerator;
- the upper bound: the same arrays (the pipeline's own first batches) from memory,
  ``tf.data.Dataset.from_tensor_slices(...).batch(1024)``;
- what Kaggle notebooks did: ``pandas.read_csv`` of the same samples (written to CSV beforehand,
  Kaggle column layout), then the normalisation they did on the host in numpy (z-scores, 3
  representations, soft clip). ``pandas_read_only`` is read_csv to float32 arrays alone, the same
  output as our pipeline's, reported beside it.

When the pipeline misses a goal (``GOAL_VS_MEMORY``, ``GOAL_VS_PANDAS``) a stage-by-stage breakdown
goes to stderr. The last stdout line is JSON: ``{"samples_per_s", "ratio_vs_memory",
"ratio_vs_pandas_csv", "ratio_vs_pandas_read_only", "bytes_per_s", "samples_per_s_by_threads":
{"1", "2"}}``; compare the ratios across machines (all sides measured in the same run).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data_prep.encode import EncodeConfig, encode_shard  # noqa: E402
from data_prep.stats import compute_stats  # noqa: E402
from data_prep.synth import synthesize  # noqa: E402
from tfpipe.config import DataConfig, SourceConfig  # noqa: E402
from tfpipe.data.normalize import Normalization, channel_layout, soft_clip64  # noqa: E402
from tfpipe.data.pipeline import (  # noqa: E402
    TRAIN_KEYS,
    Source,
    aux_targets,
    make_train_dataset,
    parsed_blocks,
    resolve_sources,
    shuffle_samples,
)
from tfpipe.data.records import parse_block  # noqa: E402
from tfpipe.data.sampling import plan_stage  # noqa: E402
from tfpipe.data.schema import NCOL, get_schema  # noqa: E402
from tfpipe.evaluate.export import export_parquet  # noqa: E402

QUICK = os.environ.get("TFPIPE_BENCH_QUICK", "") not in ("", "0")
STEPS = 16 if QUICK else 144
BLOCKS_PER_FILE = 4 if QUICK else 16
REPEATS = 2 if QUICK else 3
BATCH = 1024
MEMORY_BATCHES = 2 if QUICK else 16
"""Pipeline batches kept in memory for the upper bound (repeated to the pipeline's sample count)."""
CSV_ROWS = 1024 if QUICK else 8192
GOAL_VS_MEMORY = 0.5
GOAL_VS_PANDAS = 20.0
AUTOTUNE = tf.data.AUTOTUNE


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_data(work: Path) -> Path:
    """Synthetic raw tree → one encoded shard + stats.json; returns the encoded folder."""
    raw, data = work / "raw", work / "encoded"
    t0 = time.perf_counter()
    synthesize(raw, days=STEPS / 72, seed=0)
    encode_shard(EncodeConfig(str(raw), str(data), 0, 1, blocks_per_file=BLOCKS_PER_FILE, progress=False))
    (data / "stats.json").write_text(compute_stats(str(data)).to_json())
    say(f"built {STEPS} steps ({STEPS * NCOL} samples) in {time.perf_counter() - t0:.1f} s")
    return data


def consume(ds: tf.data.Dataset) -> tuple[int, float]:
    """(samples, seconds) of one pass over training elements ``(inputs, targets, mask, aux)``."""
    t0 = time.perf_counter()
    samples = 0
    for inputs, *_ in ds:
        samples += int(inputs.shape[0])
    return samples, time.perf_counter() - t0


def pipeline(cfg: DataConfig, sources: list[Source], threads: int | None) -> tf.data.Dataset:
    plan = plan_stage({s.name: s.train_files for s in sources}, [1.0], BATCH, 1, 0, 0, 0, cfg.sub_epochs)
    ds = make_train_dataset(sources, cfg, 0, 0, 0, plan)
    if threads is not None:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        ds = ds.with_options(options)
    return ds


def memory_arrays(cfg: DataConfig, sources: list[Source]) -> tuple:
    """The first ``MEMORY_BATCHES`` training batches of the pipeline as numpy arrays."""
    batches = list(pipeline(cfg, sources, None).take(MEMORY_BATCHES))
    return tuple(np.concatenate([b[i].numpy() for b in batches]) for i in range(4))


def memory_dataset(arrays: tuple, samples: int) -> tf.data.Dataset:
    repeats = max(1, round(samples / len(arrays[0])))
    return tf.data.Dataset.from_tensor_slices(arrays).repeat(repeats).batch(BATCH, drop_remainder=True)


# ---------------------------------------------------------------- pandas + numpy baseline


def write_csv(data: Path, work: Path, rows: int) -> Path:
    """The first ``rows`` samples as a Kaggle-layout CSV (sample_id, inputs, targets; float64 text)."""
    import pyarrow.parquet as pq

    parquet, csv = work / "samples.parquet", work / "samples.csv"
    export_parquet(str(data), str(parquet))
    table = next(pq.ParquetFile(parquet).iter_batches(batch_size=rows))
    table.to_pandas().drop(columns=["ncol", "time"]).to_csv(csv, index=False)
    parquet.unlink()
    return csv


def numpy_normalise(values: np.ndarray, norm: Normalization) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``[n, inputs + targets]`` → (``[n, 60, C]`` features, ``[n, T]`` targets), float32."""
    v = norm.values64
    n_in = norm.schema.n_inputs
    x, y = values[:, :n_in], values[:, n_in:]
    column = (x - v["input_mean"]) / v["input_std"]
    reps = {
        "column": column,
        "variable": (x - v["variable_mean"]) / v["variable_std"],
        "log": np.sign(column) * np.log1p(np.abs(column)),
    }
    layout = channel_layout(norm.schema)
    features = np.concatenate([reps[r][:, layout] for r in norm.representations], axis=-1)
    targets = (y - v["target_mean"]) / v["target_scale"]
    return (
        soft_clip64(features, norm.feature_clip).astype(np.float32),
        soft_clip64(targets, norm.target_clip).astype(np.float32),
    )


def pandas_pass(csv: Path, norm: Normalization) -> tuple[int, float, float, np.ndarray]:
    """(rows, read_csv + float32 seconds, numpy normalisation seconds, values) of the whole file."""
    import pandas as pd

    t0 = time.perf_counter()
    values = pd.read_csv(csv).iloc[:, 1:].to_numpy(np.float64)
    values.astype(np.float32)  # the raw float32 columns our pipeline delivers
    t1 = time.perf_counter()
    for start in range(0, len(values), BATCH):  # in batches: whole-file temporaries would be slower
        numpy_normalise(values[start : start + BATCH], norm)
    return len(values), t1 - t0, time.perf_counter() - t1, values


def check_same_work(values: np.ndarray, norm: Normalization) -> None:
    """The numpy baseline computes what the model's normalisation layer computes (on a few rows)."""
    rows = values[:256]
    want = norm(tf.constant(rows[:, : norm.schema.n_inputs], tf.float32)).numpy()
    got, _ = numpy_normalise(rows, norm)
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        raise SystemExit(
            f"numpy baseline differs from the model layer: max |diff| {np.abs(got - want).max()}"
        )


# ---------------------------------------------------------------- breakdown


def _rate(ds: tf.data.Dataset, block: int) -> float:
    """Samples per second of one pass over blocks or batches (scalar records count ``block`` each)."""
    t0 = time.perf_counter()
    samples = 0
    for element in ds:
        leaf = tf.nest.flatten(element)[0]
        samples += int(leaf.shape[0]) if leaf.shape.rank else block
    return samples / (time.perf_counter() - t0)


def breakdown(source: Source, cfg: DataConfig) -> None:
    """Samples/s of the training path rebuilt stage by stage from public parts, plus op costs."""
    schema = get_schema(cfg.schema)
    paths = source.train_paths

    def records() -> tf.data.Dataset:
        files = tf.data.Dataset.from_tensor_slices(paths)
        return files.interleave(
            lambda p: tf.data.TFRecordDataset(p, buffer_size=8 << 20),
            cycle_length=min(cfg.cycle_length, len(paths)),
            num_parallel_calls=AUTOTUNE,
            deterministic=False,
        )

    def parsed() -> tf.data.Dataset:
        return parsed_blocks(paths, schema, cfg, True, TRAIN_KEYS, ordered=False)

    def shuffled() -> tf.data.Dataset:
        return shuffle_samples(parsed(), cfg.shuffle_buffer, seed=1).rebatch(BATCH, drop_remainder=True)

    def with_aux(b: dict) -> dict:
        aux, aux_mask = aux_targets(source.lat, source.lon, b["ncol"], b["time"])
        return {"inputs": b["inputs"], "targets": b["targets"], "aux": aux, "aux_mask": aux_mask}

    stages: list[tuple[str, Callable[[], tf.data.Dataset]]] = [
        ("read records", records),
        ("+ parse", parsed),
        ("+ two-stage shuffle of raw samples + rebatch", shuffled),
        ("+ space-time targets (= make_train_dataset)", lambda: shuffled().map(with_aux, AUTOTUNE)),
        ("  alt: no shuffle", lambda: parsed().rebatch(BATCH, True).map(with_aux, AUTOTUNE)),
    ]
    options = tf.data.Options()
    options.deterministic = False
    best: dict[str, float] = {}
    for _ in range(1 if QUICK else 2):
        for name, make in stages:
            best[name] = max(
                best.get(name, 0.0), _rate(make().with_options(options).prefetch(AUTOTUNE), NCOL)
            )
    say("stage breakdown (cumulative; parallel stages overlap, so added µs are approximate):")
    previous = None
    for name, _ in stages:
        us = 1e6 / best[name]
        alt = name.startswith("  ")
        added = "" if previous is None or alt else f"  ({us - previous:+.1f} µs)"
        say(f"  {name:50s} {best[name]:10.0f} samples/s {us:6.1f} µs/sample{added}")
        previous = previous if alt else us
    record = next(iter(tf.data.TFRecordDataset(paths[:1])))
    b = parse_block(record, schema)
    ops = {
        "parse_block": lambda: parse_block(record, schema),
        "aux_targets": lambda: aux_targets(source.lat, source.lon, b["ncol"], b["time"]),
    }
    say(f"per block of {NCOL} samples (tf.function, this machine's threads):")
    for name, op in ops.items():
        fn = tf.function(op)
        fn()
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        say(f"  {name:25s} {(time.perf_counter() - t0) / 20 * 1e3:7.2f} ms")


# ---------------------------------------------------------------- main


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tfpipe-bench-pipeline-") as tmp:
        work = Path(tmp)
        data = build_data(work)
        cfg = DataConfig(sources=[SourceConfig(name="bench", path=str(data))], sub_epochs=1, val_fraction=0.1)
        sources = resolve_sources(cfg)
        (source,) = sources
        norm = Normalization.from_stats(get_schema(cfg.schema), compute_stats(str(data)))
        train_bytes = sum(os.path.getsize(f) for f in source.train_paths)
        csv = write_csv(data, work, CSV_ROWS)
        say(f"{len(source.train_files)} training files ({train_bytes / 1e6:.0f} MB); CSV of {CSV_ROWS} rows "
            f"({csv.stat().st_size / 1e6:.0f} MB)")  # fmt: skip

        consume(pipeline(cfg, sources, None).take(2))  # warm-up: tracing, page cache
        samples, _ = consume(pipeline(cfg, sources, None))
        arrays = memory_arrays(cfg, sources)
        consume(memory_dataset(arrays, samples))
        *_, values = pandas_pass(csv, norm)
        check_same_work(values, norm)

        keys = ("default", "1", "2", "memory", "pandas", "pandas_read_only")
        runs: dict[str, list[float]] = {k: [] for k in keys}
        pandas_split: list[tuple[float, float]] = []
        for rep in range(1, REPEATS + 1):
            for key, threads in (("default", None), ("1", 1), ("2", 2)):
                n, seconds = consume(pipeline(cfg, sources, threads))
                runs[key].append(n / seconds)
            n, seconds = consume(memory_dataset(arrays, samples))
            runs["memory"].append(n / seconds)
            n, read_s, norm_s, _ = pandas_pass(csv, norm)
            runs["pandas"].append(n / (read_s + norm_s))
            runs["pandas_read_only"].append(n / read_s)
            pandas_split.append((read_s, norm_s))
            say(f"run {rep}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in runs.items()))

        best = {k: max(v) for k, v in runs.items()}
        median = {k: statistics.median(v) for k, v in runs.items()}
        ratio_memory = best["default"] / best["memory"]
        ratio_pandas = best["default"] / best["pandas"]
        read_s, norm_s = min(pandas_split, key=sum)
        say(f"best samples/s: {json.dumps({k: round(v) for k, v in best.items()})}")
        rates = f"read_csv {CSV_ROWS / read_s:.0f} rows/s, numpy normalisation {CSV_ROWS / norm_s:.0f} rows/s"
        say(f"pandas: {rates}")
        say(f"median ratios: vs memory {median['default'] / median['memory']:.3f}, "
            f"vs pandas {median['default'] / median['pandas']:.1f}, "
            f"vs pandas read only {median['default'] / median['pandas_read_only']:.1f}")  # fmt: skip
        if ratio_memory < GOAL_VS_MEMORY or ratio_pandas < GOAL_VS_PANDAS:
            say(f"below goal (vs memory {ratio_memory:.3f} < {GOAL_VS_MEMORY} or vs pandas "
                f"{ratio_pandas:.1f} < {GOAL_VS_PANDAS})")  # fmt: skip
            breakdown(source, cfg)

    result = {
        "samples_per_s": round(best["default"], 1),
        "ratio_vs_memory": round(ratio_memory, 3),
        "ratio_vs_pandas_csv": round(ratio_pandas, 2),
        "ratio_vs_pandas_read_only": round(best["default"] / best["pandas_read_only"], 2),
        "bytes_per_s": round(train_bytes * best["default"] / samples, 1),
        "samples_per_s_by_threads": {"1": round(best["1"], 1), "2": round(best["2"], 1)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
