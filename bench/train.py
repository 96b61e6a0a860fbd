"""Benchmark: ``tfpipe.train`` throughput, time from a fresh resume to the first step, checkpoint saves.

    python bench/train.py                        # < 5 min on 2 CPU cores
    TFPIPE_BENCH_QUICK=1 python bench/train.py   # no reference-size model (for the tests)

Setup, in a temporary folder: ``prepare_demo_data(days=0.5)`` (36 time steps x 384 columns =
13 824 samples in 9 files; 7 train files, 2 validation files with ``configs/tiny.yaml``).

* ``train_samples_per_s``: ``tfpipe.train.train`` on ``configs/tiny.yaml`` (+ ``epochs=2``) for
  ``squeezeformer_tiny`` (the config as it is) and ``mlp`` (``model.name=mlp``: the config's MLP,
  i.e. the default units 768-640-512-640-640), in process. ``tfpipe.train.loop.StageProgress``, which
  the loop looks up at call time, is replaced by a subclass that stamps its creation (after the sub-epoch's
  dataset and iterator are made, just before the first step) and every update (after each
  ``steps_per_execution`` chunk, whose loss has been read back, so the steps are done). A sub-epoch's
  training time is creation to last update: the steps plus the input pipeline's start, without
  validation, logs and checkpointing. The rate is the samples of every sub-epoch but the first (which
  carries tracing and XLA compilation) over their training time. ``sub_epoch_seconds`` are the
  run's ``metrics.csv`` ``seconds`` (dataset + steps + validation, no checkpoint save);
  ``compile_overhead_s`` is the first sub-epoch's training time minus its steps at the steady rate.
  Full mode adds ``squeezeformer_reference`` (``model.d_model=384 model.n_blocks=12 model.n_heads=8
  model.head_units=2048``, ``data.batch_size=16``, ``steps_per_execution=2``): the same loop, stopped
  by the progress subclass (an exception, so no validation or checkpoint) after a few chunks; the rate
  is over the chunks after the first.
* ``resume_to_first_step_s``: on the squeezeformer run directory above (a checkpoint after 2 or 3
  sub-epochs), ``python -m tfpipe.train --config configs/tiny.yaml ... --run-dir RUN --resume latest
  --stop-after-sub-epochs 1`` started in a fresh process. Its progress lines (stderr, not a terminal:
  after the first chunk of ``steps_per_execution`` = 10 steps, then every 10 % of the sub-epoch) are
  read with arrival times: ``resume_to_first_progress_s`` is from ``Popen`` to the first line (10 steps
  done); ``resume_to_first_step_s`` subtracts 9 steps at that process's own steady step time (from its
  later lines), i.e. it is the time until the first step has completed. ``resume_process_s``: the whole
  process (that sub-epoch, validation, checkpoint, best.keras export and exit). Goal: < 60 s.
* ``resume_breakdown_s``: the same resume (run directory put back as it was) in another fresh
  process, ``python -c`` code that imports everything ``tfpipe.train`` imports, wraps the functions
  that training looks up at call time (``load_config``, ``choose_strategy``, ``resolve_sources``,
  ``build_normalized_model``, ``tf.train.Checkpoint.restore``, ``make_train_dataset``,
  ``StageProgress``, and, called only while the train step is traced, ``total_loss`` and
  ``AdamW.apply_gradients``) to print wall-clock stamps on stderr, then calls
  ``tfpipe.cli.main.train_main`` with the same arguments (the package is not changed). The XLA lines that
  TensorFlow logs on stderr with ``TF_CPP_MIN_LOG_LEVEL=0`` (``XLA service ... initialized`` when the
  first compilation starts, ``Compiled cluster using XLA!`` when it is done) split tracing from
  compiling.
* ``checkpoint_save_s``: ``tf.train.CheckpointManager.save`` (max_to_keep 3, as in a run) of the tiny
  squeezeformer and its AdamW (built as ``train`` builds them), the median of the saves after the
  first (``checkpoint_first_save_s`` beside; the first save of a process is slower);
  ``checkpoint_bytes``: ``ckpt-N.index`` + ``ckpt-N.data-*``; ``checkpoint_restore_s``: restoring it
  into the same objects. Full mode adds ``reference_checkpoint_save_s``/``_bytes`` (12 x 384, 57 M
  parameters + AdamW slots).

Progress and the breakdown go to stderr; the last stdout line is JSON: ``{"train_samples_per_s":
{...}, "resume_to_first_step_s", "checkpoint_save_s", "checkpoint_bytes", ...}``. Timings are wall
clock on whatever else the machine runs: compare them on the same machine.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfpipe.config import load_config  # noqa: E402
from tfpipe.demo_data import prepare_demo_data  # noqa: E402
from tfpipe.train import train  # noqa: E402

QUICK = os.environ.get("TFPIPE_BENCH_QUICK", "") not in ("", "0")
TINY = str(REPO / "configs" / "tiny.yaml")
DAYS = 0.25 if QUICK else 0.5
SUB_EPOCHS = 2 if QUICK else 3
"""Sub-epochs run in process per model (the first carries compilation)."""
COMMON = ["epochs=2"]
MODELS = {"squeezeformer_tiny": [], "mlp": ["model.name=mlp"]}
REFERENCE = ["model.d_model=384", "model.n_blocks=12", "model.n_heads=8", "model.head_units=2048"]
REFERENCE_RUN = [*REFERENCE, "data.batch_size=16", "steps_per_execution=2"]
REFERENCE_UPDATES = 4
"""Progress updates (chunks of 2 steps) before the reference-size run is stopped."""
RESUME_GOAL_S = 60.0
CHECKPOINT_SAVES = 5


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


# ---------------------------------------------------------------- training throughput in process


class StopTraining(Exception):
    """Raised from a progress update to end a run early (the reference-size model)."""


@contextlib.contextmanager
def progress_clock(stop_after_updates: int | None = None) -> Iterator[list[dict]]:
    """Swap the training loop's ``StageProgress`` for a subclass that records, per sub-epoch, its
    creation time, target (steps) and the ``(current, time)`` of every update."""
    import tfpipe.train.loop as loop

    original = loop.StageProgress
    bars: list[dict] = []

    class ClockedProgress(original):
        def __init__(self, label, steps, verbose):
            super().__init__(label, steps, verbose)
            self._record = {"created": time.perf_counter(), "target": steps, "updates": []}
            bars.append(self._record)

        def update(self, done, *args):
            self._record["updates"].append((done, time.perf_counter()))
            super().update(done, *args)
            if stop_after_updates is not None and len(self._record["updates"]) >= stop_after_updates:
                raise StopTraining

    loop.StageProgress = ClockedProgress
    try:
        yield bars
    finally:
        loop.StageProgress = original


def normalization_of(config):
    """The Normalization layer ``train`` builds for ``config`` (from the first source's statistics)."""
    from tfpipe.data.normalize import Normalization
    from tfpipe.data.schema import get_schema
    from tfpipe.data.stats import load_stats

    data = config.data
    stats = load_stats(data.stats_path, schema=data.schema)
    return Normalization.from_stats(get_schema(data.schema), stats, tuple(data.representations))


def model_params(config) -> int:
    """Parameters of the config's model (built as ``train`` builds it; BatchNorm statistics and the
    normalisation's statistics included)."""
    from tfpipe.models import build_normalized_model

    params = int(build_normalized_model(config.model, normalization_of(config)).count_params())
    keras.backend.clear_session()
    return params


def train_throughput(name: str, data: str, run_dir: Path, extra: list[str]) -> dict:
    config = load_config(TINY, [f"data.sources.0.path={data}", f"run_dir={run_dir}", *COMMON, *extra])
    batch = config.data.batch_size
    t0 = time.perf_counter()
    with progress_clock() as bars:
        train(config, stop_after_sub_epochs=SUB_EPOCHS, verbose=0)
    total = time.perf_counter() - t0
    keras.backend.clear_session()
    spans = [(bar["target"], bar["updates"][-1][1] - bar["created"]) for bar in bars]
    steady_steps = sum(steps for steps, _ in spans[1:])
    steady_s = sum(seconds for _, seconds in spans[1:])
    step_s = steady_s / steady_steps
    with open(run_dir / "metrics.csv") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    result = {
        "samples_per_s": sig(steady_steps * batch / steady_s),
        "batch_size": batch,
        "params": model_params(config),
        "sub_epoch_train_s": [sig(s) for _, s in spans],
        "sub_epoch_steps": [steps for steps, _ in spans],
        "sub_epoch_seconds": seconds,
        "compile_overhead_s": sig(spans[0][1] - spans[0][0] * step_s),
    }
    say(
        f"{name:20s} batch {batch}: {result['params']:>10,d} params, {result['samples_per_s']:8.1f} "
        f"samples/s (sub-epochs after the first), first sub-epoch {spans[0][1]:.1f} s "
        f"(+{result['compile_overhead_s']:.1f} s over steady), metrics.csv seconds {seconds}, "
        f"whole run {total:.1f} s"
    )
    return result


def reference_throughput(data: str, run_dir: Path) -> dict:
    config = load_config(TINY, [f"data.sources.0.path={data}", f"run_dir={run_dir}", *COMMON, *REFERENCE_RUN])
    batch = config.data.batch_size
    t0 = time.perf_counter()
    with progress_clock(stop_after_updates=REFERENCE_UPDATES) as bars, contextlib.suppress(StopTraining):
        train(config, verbose=0)
    keras.backend.clear_session()
    bar = bars[0]
    (first, t_first), (last, t_last) = bar["updates"][0], bar["updates"][-1]
    result = {
        "samples_per_s": sig((last - first) * batch / (t_last - t_first)),
        "batch_size": batch,
        "timed_steps": last - first,
        "first_chunk_s": sig(t_first - bar["created"]),
    }
    say(
        f"{'squeezeformer_ref':20s} batch {batch}: {result['samples_per_s']:8.2f} samples/s over "
        f"{last - first} steps; first chunk of {first} steps (trace + XLA compile) "
        f"{result['first_chunk_s']:.1f} s; {time.perf_counter() - t0:.1f} s in all"
    )
    return result


# ---------------------------------------------------------------- checkpoint saves


def checkpoint_cost(data: str, folder: Path, extra: list[str], saves: int) -> dict:
    """Save the model + AdamW of a config ``saves`` times with a CheckpointManager, then restore."""
    from tfpipe.models import build_normalized_model
    from tfpipe.schedule import make_optimizer

    config = load_config(TINY, [f"data.sources.0.path={data}", *extra])
    keras.utils.set_random_seed(config.seed)
    net = build_normalized_model(config.model, normalization_of(config))
    optimizer = make_optimizer(config.optim, 1000)
    optimizer.build(net.trainable_variables)
    ckpt = tf.train.Checkpoint(model=net, optimizer=optimizer)
    manager = tf.train.CheckpointManager(ckpt, str(folder), max_to_keep=3, checkpoint_name="ckpt")
    times = []
    for n in range(1, saves + 1):
        t0 = time.perf_counter()
        path = manager.save(checkpoint_number=n)
        times.append(time.perf_counter() - t0)
    size = sum(p.stat().st_size for p in folder.glob(f"ckpt-{saves}.*"))
    t0 = time.perf_counter()
    ckpt.restore(path).assert_existing_objects_matched()
    restore_s = time.perf_counter() - t0
    params = int(net.count_params())
    del ckpt, manager, optimizer, net
    keras.backend.clear_session()
    shutil.rmtree(folder)
    return {
        "save_s": sig(statistics.median(times[1:]) if len(times) > 1 else times[0]),
        "first_save_s": sig(times[0]),
        "restore_s": sig(restore_s),
        "bytes": size,
        "params": params,
    }


# ---------------------------------------------------------------- resume in a fresh process

INSTRUMENTED = r"""
import sys, time
def mark(name, value=""):
    print(f"[bench-mark] {time.time():.6f} {name} {value}", file=sys.stderr, flush=True)
mark("python_up")
import keras
import tensorflow as tf
import tfpipe.config, tfpipe.data.pipeline, tfpipe.predict
import tfpipe.cli.main, tfpipe.train.loop, tfpipe.train.session, tfpipe.train.step
mark("imports_done")
def wrap(owner, name, label):
    fn = getattr(owner, name)
    def wrapper(*args, **kwargs):
        mark(label + "_start")
        out = fn(*args, **kwargs)
        mark(label + "_end")
        return out
    setattr(owner, name, wrapper)
wrap(tfpipe.config, "load_config", "config")
wrap(tfpipe.train.session, "choose_strategy", "strategy")
wrap(tfpipe.train.session, "resolve_sources", "data")
wrap(tfpipe.train.step, "build_normalized_model", "model")
wrap(tf.train.Checkpoint, "restore", "restore")
wrap(tfpipe.data.pipeline, "make_train_dataset", "dataset")
wrap(tfpipe.train.step, "total_loss", "loss")  # called once, while tracing the forward pass
wrap(keras.optimizers.AdamW, "apply_gradients", "apply")  # traced once, after the backward pass
class MarkedProgress(tfpipe.train.loop.StageProgress):
    def __init__(self, *args):
        super().__init__(*args)
        mark("progbar")
    def update(self, done, *args):
        mark("update", done)
        super().update(done, *args)
tfpipe.train.loop.StageProgress = MarkedProgress
sys.exit(tfpipe.cli.main.train_main(sys.argv[1:], prog="python -m tfpipe.train"))
"""
XLA_START = "XLA service"
XLA_DONE = "Compiled cluster using XLA"
PROGRESS = re.compile(rb"\] epoch \d+ sub-epoch \d+: (\d+)/(\d+) steps")
"""The training loop's progress lines on stderr (not a terminal)."""


def run_timed(command: list[str]) -> dict:
    """Run ``command`` in REPO; wall-clock (``time.time``) stamps of its progress updates and stderr
    lines, as they arrive (progress bars and logs are on stderr; stdout has the JSON summary)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}  # TF's default: keep the XLA log lines
    start = time.time()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    updates: list[tuple[float, int]] = []
    lines: list[tuple[float, str]] = []
    out_text: list[bytes] = []

    def read_stdout() -> None:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            out_text.append(chunk)

    def read_stderr() -> None:
        pending = b""
        while chunk := os.read(proc.stderr.fileno(), 65536):
            now = time.time()
            updates.extend((now, int(m.group(1))) for m in PROGRESS.finditer(chunk))
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lines.extend((now, line.decode(errors="replace").rstrip()) for line in complete)
        if pending:
            lines.append((time.time(), pending.decode(errors="replace")))

    threads = [threading.Thread(target=read_stdout), threading.Thread(target=read_stderr)]
    for t in threads:
        t.start()
    rc = proc.wait()
    end = time.time()
    for t in threads:
        t.join()
    if rc != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise RuntimeError(f"{' '.join(command[:3])} ... exited with {rc}:\n{tail}")
    return {"start": start, "end": end, "updates": updates, "lines": lines, "stdout": b"".join(out_text)}


def first_step(updates: list[tuple[float, int]], start: float) -> tuple[float, float, float]:
    """(time to the first update, to the end of the first step, steady seconds per step)."""
    (t1, n1), (t_last, n_last) = updates[0], updates[-1]
    step_s = (t_last - t1) / (n_last - n1)
    return t1 - start, t1 - start - (n1 - 1) * step_s, step_s


def resume_args(data: str, run_dir: Path) -> list[str]:
    return [
        "--config", TINY, f"data.sources.0.path={data}", *COMMON, "--run-dir", str(run_dir),
        "--resume", "latest", "--stop-after-sub-epochs", "1",
    ]  # fmt: skip


def resume_plain(data: str, run_dir: Path) -> dict:
    run = run_timed([sys.executable, "-m", "tfpipe.train", *resume_args(data, run_dir)])
    to_update, to_step, step_s = first_step(run["updates"], run["start"])
    summary = json.loads(run["stdout"].decode(errors="replace").strip().splitlines()[-1])
    assert summary["resumed_from"] and summary["sub_epochs_run"] == 1, summary
    result = {
        "to_first_step_s": sig(to_step),
        "to_first_progress_s": sig(to_update),
        "first_progress_steps": run["updates"][0][1],
        "steady_step_s": sig(step_s),
        "process_s": sig(run["end"] - run["start"]),
    }
    say(
        f"resume (python -m tfpipe.train, {summary['resumed_from']}): first progress update "
        f"({result['first_progress_steps']} steps) {to_update:.1f} s after Popen, first step done ~ "
        f"{to_step:.1f} s (steady {step_s * 1000:.0f} ms/step), process {result['process_s']:.1f} s"
    )
    return result


def resume_breakdown(data: str, run_dir: Path) -> dict:
    run = run_timed([sys.executable, "-c", INSTRUMENTED, *resume_args(data, run_dir)])
    marks: dict[str, float] = {}
    updates: list[tuple[float, int]] = []
    for arrived, line in run["lines"]:
        if "[bench-mark] " in line:  # a progress bar without a newline may precede it
            line = line[line.index("[bench-mark] ") :]
            _, stamp, name, *value = line.split()
            if name == "update":
                updates.append((float(stamp), int(value[0])))
            else:
                marks.setdefault(name, float(stamp))
        elif XLA_START in line and "xla_start" not in marks:
            marks["xla_start"] = arrived
        elif XLA_DONE in line and "xla_done" not in marks:
            marks["xla_done"] = arrived
    to_update, to_step, step_s = first_step(updates, run["start"])
    first_steps = updates[0][1]
    t = {**marks, "start": run["start"], "first_update": updates[0][0]}
    stages = [
        ("process_start", "start", "python_up", "interpreter start until the first line of code"),
        ("imports", "python_up", "imports_done", "tensorflow, keras, tfpipe.train and what train imports"),
        ("config", "imports_done", "config_end", "argument parsing + load_config"),
        ("strategy", "config_end", "strategy_end", "choose_strategy (devices)"),
        ("data_resolve", "strategy_end", "model_start", "resolve_sources (manifests, stats, grid), plan"),
        ("model_build", "model_start", "restore_start", "build_model + AdamW build + managers"),
        ("restore", "restore_start", "restore_end", "tf.train.Checkpoint.restore of the latest"),
        (
            "dataset",
            "restore_end",
            "progbar",
            "config.yaml, TensorBoard writer, make_train_dataset, iterator",
        ),
    ]
    if {"loss_start", "apply_start", "apply_end", "xla_start", "xla_done"} <= set(marks):
        stages += [
            ("trace_forward", "progbar", "loss_start", "tracing run_steps and the forward pass"),
            ("trace_loss_backward", "loss_start", "apply_start", "tracing the losses and the gradients"),
            ("trace_optimizer", "apply_start", "apply_end", "tracing AdamW.apply_gradients"),
            ("graph_to_xla", "apply_end", "xla_start", "rest of the trace, graph optimisation, to XLA"),
            ("xla_compile", "xla_start", "xla_done", "XLA compilation of the forward+backward"),
            ("first_steps", "xla_done", "first_update", f"{first_steps} steps + input pipeline fill"),
        ]
    else:
        stages += [("trace_compile_steps", "progbar", "first_update", f"tracing, XLA, {first_steps} steps")]
    breakdown = {name: sig(t[b] - t[a]) for name, a, b, _ in stages}
    say(f"resume breakdown (instrumented process; {step_s * 1000:.0f} ms/step steady):")
    for name, a, b, note in stages:
        say(f"  {name:20s} {t[b] - t[a]:7.2f} s   (end at {t[b] - run['start']:6.2f} s)  {note}")
    say(f"  first step done ~ {to_step:.2f} s; first progress update {to_update:.2f} s")
    say(f"  process exits at {run['end'] - run['start']:.2f} s (sub-epoch, validation, checkpoint, export)")
    breakdown["to_first_step"] = sig(to_step)
    breakdown["process"] = sig(run["end"] - run["start"])
    return breakdown


# ---------------------------------------------------------------- main


def main() -> None:
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfpipe-bench-train-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data = prepare_demo_data(work / "demo", days=DAYS, seed=0, quiet=True)
        say(f"demo data ({DAYS} days) in {time.perf_counter() - t0:.1f} s")

        throughput = {name: train_throughput(name, data, work / name, x) for name, x in MODELS.items()}

        # Both resumes start from the same checkpoint in the same run dir (its path is in the config).
        run_dir, saved = work / "squeezeformer_tiny", work / "squeezeformer_tiny-saved"
        shutil.copytree(run_dir, saved)
        plain = resume_plain(data, run_dir)
        shutil.rmtree(run_dir)
        shutil.copytree(saved, run_dir)
        breakdown = resume_breakdown(data, run_dir)

        tiny_ckpt = checkpoint_cost(data, work / "ckpt-tiny", [], CHECKPOINT_SAVES)
        say(
            f"checkpoint (tiny squeezeformer + AdamW, {tiny_ckpt['params']:,d} params): save "
            f"{tiny_ckpt['save_s'] * 1000:.0f} ms (first {tiny_ckpt['first_save_s'] * 1000:.0f} ms), "
            f"restore {tiny_ckpt['restore_s'] * 1000:.0f} ms, {tiny_ckpt['bytes']:,d} bytes"
        )
        reference_ckpt = None
        if not QUICK:
            reference_ckpt = checkpoint_cost(data, work / "ckpt-ref", REFERENCE, 2)
            say(
                f"checkpoint (reference squeezeformer + AdamW, {reference_ckpt['params']:,d} params): save "
                f"{reference_ckpt['save_s']:.2f} s (first {reference_ckpt['first_save_s']:.2f} s), "
                f"restore {reference_ckpt['restore_s']:.2f} s, {reference_ckpt['bytes']:,d} bytes"
            )
            throughput["squeezeformer_reference"] = reference_throughput(data, work / "reference")
            throughput["squeezeformer_reference"]["params"] = reference_ckpt["params"]

    say(f"total {time.perf_counter() - t_start:.0f} s")
    report = {
        "train_samples_per_s": {name: r["samples_per_s"] for name, r in throughput.items()},
        "resume_to_first_step_s": plain["to_first_step_s"],
        "resume_to_first_progress_s": plain["to_first_progress_s"],
        "resume_process_s": plain["process_s"],
        "resume_goal_s": RESUME_GOAL_S,
        "resume_breakdown_s": breakdown,
        "checkpoint_save_s": tiny_ckpt["save_s"],
        "checkpoint_first_save_s": tiny_ckpt["first_save_s"],
        "checkpoint_restore_s": tiny_ckpt["restore_s"],
        "checkpoint_bytes": tiny_ckpt["bytes"],
    }
    if reference_ckpt is not None:
        report["reference_checkpoint_save_s"] = reference_ckpt["save_s"]
        report["reference_checkpoint_bytes"] = reference_ckpt["bytes"]
    report["details"] = {
        name: {k: v for k, v in r.items() if k != "samples_per_s"} for name, r in throughput.items()
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
