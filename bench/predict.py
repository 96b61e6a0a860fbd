"""Benchmark: ``tfpipe.predict`` end to end vs the model alone on the same samples in memory.

    python bench/predict.py           (TFPIPE_BENCH_QUICK=1: a few steps, for tests)

Setup, in a temporary folder: ``STEPS`` time steps of synthetic raw data (384 samples each) encoded
as the test set; every ``TRAIN_STRIDE``-th step encoded again as a small training set with its
``stats.json``; ``configs/tiny.yaml`` (a 2-block Squeezeformer, d = 64) trained for one sub-epoch by
``tfpipe.train.train``, which writes the run directory (``config.yaml``, ``best.keras``).

Then, for each batch size in ``BATCH_SIZES``, several times, back to back:

- ``predict(RUN/best.keras, TEST, OUT.parquet, batch_size=B)``: read → model (its first layer
  normalises) → float64
  post-processing → parquet. Light wrappers around names that ``tfpipe.predict`` looks up at call
  time stamp every stage of every batch (the code path itself is unchanged);
- the model alone: the same XLA-compiled forward as predict (``tf.function(jit_compile=True,
  reduce_retracing=True)`` of ``model(x, training=False)["pred"]``, then ``.numpy()``) over the same
  batches, already in memory as tensors, compiled beforehand for every shape predict compiles.

Throughput is the steady state, on the same batches on both sides: every batch except the first
(which carries loading the model and XLA compilation) and the last (a partial batch is compiled once
more). ``io_overhead_fraction = 1 - samples_per_s / model_only_samples_per_s`` (goal < ``GOAL``),
both rates from the pair of measurements with the median overhead (the machine is shared: pairs
taken back to back cancel most of the drift in load). ``cpu_io_overhead_fraction`` is the same from
process CPU time (all threads), which other processes disturb less; ``outside_forward_fraction``
is the share of predict's steady wall time spent outside the forward call (read, post-processing,
checks, parquet), measured within each call, so drift between calls does not touch it (it leaves
out the forward's slowdown from sharing the cores with tf.data). The whole call's rate and its
start-up (load + compile, before the first batch is written) are reported beside. A per-stage
breakdown always goes to stderr; above the goal, also a cProfile of one predict call. The last stdout
line is JSON: ``{"samples_per_s", "model_only_samples_per_s", "io_overhead_fraction", "samples", ...}``
for the first batch size, the others under ``"by_batch_size"``; compare the fractions across
machines (both sides measured in the same run).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

import tfpipe.predict.batches  # noqa: E402
import tfpipe.predict.core  # noqa: E402

STAGE_HOMES = {
    "load_for_inference": tfpipe.predict.core, "ParquetSink": tfpipe.predict.core,
    "_encoded_batches": tfpipe.predict.batches, "physical_predictions": tfpipe.predict.batches,
}  # fmt: skip
"""Each wrapped name and the module of ``tfpipe.predict`` that looks it up at call time."""
from data_prep.encode import EncodeConfig, encode_shard  # noqa: E402
from data_prep.stats import compute_stats  # noqa: E402
from data_prep.synth import synthesize  # noqa: E402
from tfpipe.config import load_config  # noqa: E402
from tfpipe.data.manifest import data_files, read_manifests  # noqa: E402
from tfpipe.data.pipeline import make_predict_dataset  # noqa: E402
from tfpipe.data.schema import NCOL  # noqa: E402
from tfpipe.predict import load_for_inference, predict  # noqa: E402
from tfpipe.train import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("TFPIPE_BENCH_QUICK", "") not in ("", "0")
STEPS = 3 if QUICK else 42
"""Test-set time steps (x 384 samples): 16 128 samples, not a multiple of 1024 (so the last batch is
partial, as with Kaggle's 625 000 test rows). Fewer samples and more repeats beat noise best here."""
TRAIN_STRIDE = 1 if QUICK else 6
BATCH_SIZES = {256: 1} if QUICK else {1024: 7, 256: 3}
"""Batch size -> repeats (predict call, then the model alone); the first is the headline."""
GOAL = 0.2
STAGES = ("read", "forward", "post", "check", "write")
STAGE_NOTES = {
    "read": "next(): wait for tf.data (parse), ids decode, .numpy() of x64",
    "forward": "XLA forward + .numpy()",
    "post": "physical_predictions (float64 inverse transform, q0002 rule, zero weights)",
    "check": "np.isfinite check + generator hand-over",
    "write": "ParquetSink.write (pyarrow arrays + row group)",
}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- setup


def build(work: Path) -> tuple[str, str]:
    """(test data folder, ``best.keras``): synthetic data, encoded, with stats, and a tiny trained run."""
    raw, test, train_data, run = work / "raw", work / "test", work / "train", work / "run"
    t0 = time.perf_counter()
    synthesize(raw, days=STEPS / 72, seed=0)
    encode_shard(EncodeConfig(str(raw), str(test), 0, 1, blocks_per_file=8, progress=False))
    encode_shard(
        EncodeConfig(str(raw), str(train_data), 0, 1, stride=TRAIN_STRIDE, blocks_per_file=1, progress=False)
    )
    (train_data / "stats.json").write_text(compute_stats(str(train_data)).to_json())
    say(f"data: {STEPS} steps ({STEPS * NCOL} test samples) in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    config = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"data.sources.0.path={train_data}", f"run_dir={run}", "epochs=1", "data.sub_epochs=1"],
    )
    summary = train(config, verbose=0)
    say(f"trained {config.model.name} for {summary['step']} steps in {time.perf_counter() - t0:.1f} s")
    return str(test), str(run / "best.keras")


# ---------------------------------------------------------------- predict with stage clocks


class StageClock:
    """Wall-clock stamps of each batch's stages inside one ``predict`` call.

    Wraps names that ``tfpipe.predict`` looks up at call time (``load_for_inference``, the encoded
    batch generator, ``physical_predictions``, ``ParquetSink``). ``ParquetSink`` is required (its
    writes mark the batches); another name that is missing is left out and its stage reads as 0
    (the totals stay exact).
    """

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.start = self.load_s = 0.0

    def _wrappers(self) -> dict:
        clock = self
        out = {}
        if hasattr(STAGE_HOMES["load_for_inference"], "load_for_inference"):
            load = STAGE_HOMES["load_for_inference"].load_for_inference

            def timed_load(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return load(*args, **kwargs)
                finally:
                    clock.load_s = time.perf_counter() - t0

            out["load_for_inference"] = timed_load
        if hasattr(STAGE_HOMES["_encoded_batches"], "_encoded_batches"):
            batches = STAGE_HOMES["_encoded_batches"]._encoded_batches

            def timed_batches(*args, **kwargs) -> Iterator:
                it = batches(*args, **kwargs)
                while True:
                    t0 = time.perf_counter()
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    clock.batches.append({"read0": t0, "read1": time.perf_counter(), "rows": len(item[0])})
                    yield item

            out["_encoded_batches"] = timed_batches
        if hasattr(STAGE_HOMES["physical_predictions"], "physical_predictions"):
            physical = STAGE_HOMES["physical_predictions"].physical_predictions

            def timed_physical(*args, **kwargs):
                t0 = time.perf_counter()
                result = physical(*args, **kwargs)
                if clock.batches:
                    clock.batches[-1].update(post0=t0, post1=time.perf_counter())
                return result

            out["physical_predictions"] = timed_physical

        class TimedSink(STAGE_HOMES["ParquetSink"].ParquetSink):
            def write(self, ids, values) -> None:
                t0 = time.perf_counter()
                super().write(ids, values)
                stamps = {"write0": t0, "write1": time.perf_counter(), "cpu1": time.process_time()}
                if clock.batches and "write1" not in clock.batches[-1]:
                    clock.batches[-1].update(stamps, rows=len(ids))
                else:  # no generator stamps: one record per written batch
                    clock.batches.append({**stamps, "rows": len(ids)})

        out["ParquetSink"] = TimedSink
        return out

    @contextlib.contextmanager
    def attached(self) -> Iterator[StageClock]:
        wrappers = self._wrappers()
        saved = {name: getattr(STAGE_HOMES[name], name) for name in wrappers}
        for name, fn in wrappers.items():
            setattr(STAGE_HOMES[name], name, fn)
        try:
            self.start = time.perf_counter()
            yield self
        finally:
            for name, fn in saved.items():
                setattr(STAGE_HOMES[name], name, fn)

    def stages(self, i: int) -> dict[str, float]:
        """Seconds of each stage of batch ``i`` (missing stamps: the time falls into ``forward``)."""
        b = self.batches[i]
        begin = self.batches[i - 1]["write1"] if i else self.start
        read1 = b.get("read1", begin)
        post0, post1 = b.get("post0", b["write0"]), b.get("post1", b["write0"])
        return {
            "read": read1 - b.get("read0", read1),
            "forward": post0 - read1,
            "post": post1 - post0,
            "check": b["write0"] - post1,
            "write": b["write1"] - b["write0"],
            "loop": b.get("read0", begin) - begin,
        }


def timed_predict(checkpoint: str, data: str, out: str, batch: int) -> tuple[StageClock, float]:
    """One ``predict`` call with stage clocks; (clock, call seconds)."""
    clock = StageClock()
    with clock.attached():
        summary = predict(checkpoint, data, out, batch_size=batch)
        seconds = time.perf_counter() - clock.start
    rows = sum(b["rows"] for b in clock.batches)
    assert rows == summary["rows"], (rows, summary)
    return clock, seconds


# ---------------------------------------------------------------- the model alone


def memory_batches(model_norm, data: str, batch: int) -> list[tf.Tensor]:
    """predict's model inputs for ``data`` as in-memory tensors, batch by batch, in predict's order."""
    files = data_files(data, read_manifests(data, schema=model_norm.schema.name))
    return [b["inputs"] for b in make_predict_dataset(files, model_norm.schema, batch, with_targets=False)]


def compiled_forward(model, xs: list[tf.Tensor]):
    """The forward of ``tfpipe.predict.iter_predictions``, compiled for every batch shape in ``xs``."""

    @tf.function(jit_compile=True, reduce_retracing=True)
    def forward(x):
        return model(x, training=False)["pred"]

    for x in (xs[0], xs[-1]):  # predict's order: full batches, then the partial one
        forward(x).numpy()
    return forward


def model_only_seconds(forward, xs: list[tf.Tensor], steady: range) -> tuple[float, float]:
    """(wall, process CPU) seconds of the forward over the batches ``steady``."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in steady:
        forward(xs[i]).numpy()
    return time.perf_counter() - t0, time.process_time() - c0


# ---------------------------------------------------------------- report


def profile_predict(checkpoint: str, data: str, out: str, batch: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    predict(checkpoint, data, out, batch_size=batch)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


def breakdown(clock: StageClock, steady: range, model_s: float, batch: int) -> None:
    """Per-stage time of the steady batches of one predict call, vs the model alone."""
    per = {k: sum(clock.stages(i)[k] for i in steady) for k in (*STAGES, "loop")}
    total = sum(per.values())
    n = len(steady)
    say(f"  batch {batch}: stages of {n} steady batches ({total:.2f} s; model alone {model_s:.2f} s)")
    for k in (*STAGES, "loop"):
        note = STAGE_NOTES.get(k, "generator/loop bookkeeping")
        share, ms = 100 * per[k] / total, 1e3 * per[k] / n
        say(f"    {k:8s} {per[k]:7.3f} s {share:5.1f} %  {ms:7.2f} ms/batch  {note}")
    parts = " + ".join(f"{k} {per[k]:.2f}" for k in (*STAGES[:1], *STAGES[2:]))
    say(
        f"    over the model alone: {total - model_s:+.2f} s = {parts} + forward difference "
        f"{per['forward'] - model_s:+.2f} (tf.data threads share the cores, plus noise)"
    )
    forward_first = clock.stages(0)["forward"]
    say(
        f"    start-up: load_for_inference {clock.load_s:.2f} s; first batch forward {forward_first:.2f} s "
        f"(XLA compile); last batch ({clock.batches[-1]['rows']} rows) forward "
        f"{clock.stages(len(clock.batches) - 1)['forward']:.2f} s; steady forward "
        f"{1e3 * per['forward'] / n:.1f} ms/batch vs {1e3 * model_s / n:.1f} ms/batch alone"
    )


def measure(checkpoint: str, data: str, work: Path, batch: int, repeats: int) -> dict:
    model, _, norm = load_for_inference(checkpoint)
    xs = memory_batches(norm, data, batch)
    if len(xs) < 3:
        raise SystemExit(f"{len(xs)} batches of {batch}: need at least 3 (first, steady, last)")
    steady = range(1, len(xs) - 1)
    rows = sum(int(xs[i].shape[0]) for i in steady)
    samples = sum(int(x.shape[0]) for x in xs)
    forward = compiled_forward(model, xs)
    runs = []
    for run in range(repeats):
        if run % 2:  # alternate the order within a pair, so that a trend in load cancels out
            model_s, model_cpu = model_only_seconds(forward, xs, steady)
        clock, call_s = timed_predict(checkpoint, data, str(work / "out.parquet"), batch)
        if not run % 2:
            model_s, model_cpu = model_only_seconds(forward, xs, steady)
        first, last = clock.batches[steady[0] - 1], clock.batches[steady[-1]]
        predict_s, predict_cpu = last["write1"] - first["write1"], last["cpu1"] - first["cpu1"]
        outside = sum(clock.stages(i)[k] for i in steady for k in (*STAGES, "loop") if k != "forward")
        runs.append(
            {
                "predict_s": predict_s, "model_s": model_s, "call_s": call_s, "clock": clock,
                "overhead": 1 - model_s / predict_s, "cpu_overhead": 1 - model_cpu / predict_cpu,
                "outside": outside / predict_s,
            }
        )  # fmt: skip
        say(
            f"batch {batch} run {run}: predict {rows / predict_s:7.1f} samples/s steady "
            f"({samples / call_s:.1f} for the whole {call_s:.1f} s call), model alone "
            f"{rows / model_s:7.1f} samples/s: overhead {runs[-1]['overhead']:.3f} wall, "
            f"{runs[-1]['cpu_overhead']:.3f} CPU time, {runs[-1]['outside']:.3f} of the time outside forward"
        )
    # the run with the median overhead: both rates from the same, back-to-back pair of measurements
    pair = sorted(runs, key=lambda r: r["overhead"])[(len(runs) - 1) // 2]
    clock = pair["clock"]
    result = {
        "samples_per_s": round(rows / pair["predict_s"], 1),
        "model_only_samples_per_s": round(rows / pair["model_s"], 1),
        "io_overhead_fraction": round(pair["overhead"], 4),
        "samples": samples,
        "batch_size": batch,
        "cpu_io_overhead_fraction": round(statistics.median(r["cpu_overhead"] for r in runs), 4),
        "outside_forward_fraction": round(statistics.median(r["outside"] for r in runs), 4),
        "call_samples_per_s": round(samples / statistics.median(r["call_s"] for r in runs), 1),
        "startup_s": round(clock.batches[0]["write1"] - clock.start - pair["predict_s"] / len(steady), 2),
    }
    breakdown(clock, steady, pair["model_s"], batch)
    return result


def main() -> None:
    t_start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tfpipe-bench-predict-") as tmp:
        work = Path(tmp)
        data, checkpoint = build(work)
        for batch, repeats in BATCH_SIZES.items():
            results[batch] = measure(checkpoint, data, work, batch, repeats)
        for batch in BATCH_SIZES:
            if results[batch]["io_overhead_fraction"] > GOAL and not QUICK:
                say(f"batch {batch}: io overhead above {GOAL}; cProfile of one predict call, by own time")
                say(profile_predict(checkpoint, data, str(work / "out.parquet"), batch))
    say(f"total {time.perf_counter() - t_start:.0f} s")
    first, *others = BATCH_SIZES
    report = dict(results[first])
    if others:
        report["by_batch_size"] = {str(b): results[b] for b in others}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
