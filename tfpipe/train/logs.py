"""What a run reports after each sub-epoch: ``metrics.csv`` and TensorBoard events.

``metrics.csv`` has one row per checkpoint; a sub-epoch redone after a kill replaces its row (rows
from that checkpoint on are dropped before the new one is appended). TensorBoard events go to
``RUN/tb`` (for a ``gs://`` run dir: a local folder uploaded after each flush, since TF's event writer
appends and object stores cannot). MLflow gets the same rows through the checkpoint hook when
``tracking.backend: mlflow`` (:mod:`tfpipe.train.tracking`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time

from tfpipe import storage
from tfpipe.train.rundir import RunDir


def _csv_text(rows: list[dict]) -> str:
    header = ",".join(rows[-1])
    lines = [",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r.values()) for r in rows]
    return "\n".join([header, *lines]) + "\n"


def append_metrics_row(path: str, row: dict) -> None:
    """Add ``row`` (with a ``checkpoint`` key) to a CSV, dropping rows of that checkpoint or later.

    The file is rewritten atomically (small files; works on gs://).
    """
    keep: list[str] = []
    if storage.exists(path):
        lines = storage.read_bytes(path).decode().splitlines()
        keep = [line for line in lines[1:] if line and int(line.split(",", 1)[0]) < row["checkpoint"]]
        if lines and lines[0] != ",".join(row):
            keep = []  # another layout (an older tfpipe): start over rather than mix columns
    text = _csv_text([row])
    header, line = text.splitlines()
    storage.write_bytes(path, "\n".join([header, *keep, line]).encode() + b"\n")


def fmt_r2(value: float | None) -> str:
    """An R² for people: 4 decimals in [-10, 1], else 3 significant digits (``-1.47e+05``); ``-`` if None."""
    if value is None or value != value:
        return "-"
    return f"{value:.4f}" if -10 <= value <= 1 else f"{value:.3g}"


def val_summary(val: dict) -> str:
    """The validation part of a ``[train] ckpt-N`` line: the headline R² first, the Kaggle R² beside it."""
    headline = val.get("val_r2_train_var")
    kaggle = f"Kaggle R² {fmt_r2(val['val_r2'])}, {val['val_near_constant']} near-constant targets"
    if headline is None:  # a state written before the headline existed
        return f"val {kaggle}"
    return f"val R² {fmt_r2(headline)} (train var; {kaggle}; normalised {fmt_r2(val['val_r2_normalized'])})"


class RunLogs:
    """CSV and TensorBoard logging of one training session."""

    def __init__(self, run_dir: str) -> None:
        import tensorflow as tf

        self.run_dir = run_dir
        self.csv = RunDir(run_dir).metrics
        self.tb_dir = RunDir(run_dir).tensorboard
        self.remote = storage.is_remote(run_dir)
        self.tb_local = tempfile.mkdtemp(prefix="tfpipe-tb-") if self.remote else self.tb_dir
        self.writer = tf.summary.create_file_writer(self.tb_local)

    def write(self, row: dict, step: int) -> None:
        import tensorflow as tf

        with self.writer.as_default(step=step):
            for key, value in row.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value)
        self.writer.flush()
        if self.remote:
            for name in os.listdir(self.tb_local):
                storage.upload_file(os.path.join(self.tb_local, name), storage.join(self.tb_dir, name))
        append_metrics_row(self.csv, row)

    def close(self) -> None:
        self.writer.close()
        if self.remote:
            shutil.rmtree(self.tb_local, ignore_errors=True)


class StageProgress:
    """Progress of one sub-epoch, on stderr (stdout ends with the JSON summary).

    On a terminal: Keras' progress bar. Elsewhere (a log file, a notebook cell's captured stream, CI):
    whole lines, at the first update, then every 10 % of the steps or 30 s, and at the end.
    """

    def __init__(self, label: str, steps: int, verbose: int) -> None:
        from tfpipe.console import terminal_stderr

        self.label, self.steps, self.verbose = label, steps, verbose
        self.stream = terminal_stderr()
        self.tty = self.stream.isatty()
        self.start = self.last_time = time.monotonic()
        self.last_done = 0
        self.bar = None
        if verbose and self.tty:
            import keras

            with contextlib.redirect_stdout(self.stream):
                self.bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "main", "lr"])

    def update(self, done: int, loss: float, main: float, lr: float) -> None:
        if not self.verbose:
            return
        if self.bar is not None:
            with contextlib.redirect_stdout(self.stream):
                self.bar.update(done, [("loss", loss), ("main", main), ("lr", lr)])
            return
        now = time.monotonic()
        due = self.last_done == 0 or done >= self.steps or done - self.last_done >= self.steps / 10
        if due or now - self.last_time >= 30:
            print(f"[train] {self.label}: {done}/{self.steps} steps, loss {loss:.4f}, main {main:.4f}, "
                  f"lr {lr:.4g}, {now - self.start:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
            self.last_done, self.last_time = done, now
