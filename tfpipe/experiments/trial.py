"""One sweep trial as a child process: ``python -m tfpipe.experiments.trial`` trains, the sweep prunes.

Each trial trains in a fresh interpreter, so nothing of one trial reaches the next: op determinism,
a TPU system's initialisation, GPU memory, Keras' global state. The child runs ``train()`` with an
``on_checkpoint`` hook that, after every committed sub-epoch, writes ``{"checkpoint": N, "value": V}``
(V: the config's ``select_metric``) as one JSON line to a pipe and waits for the sweep's answer on
another: ``prune`` stops the run there with the reason ``pruned`` (its ``status.json`` and MLflow run
say so), ``go`` lets it continue. The last line is ``{"summary": ...}`` (``train``'s summary) or
``{"error": "Type: first line"}``. Its stdout and stderr go to ``RUN/sweep/{UTC time}-attempt{N}.log``
(N: the Optuna trial number).

The sweep (:class:`TrialProcess`) reports each value to Optuna and answers; a SIGTERM or Ctrl-C it
receives is forwarded (SIGTERM: the trainer stops after its current chunk of steps; a second Ctrl-C:
SIGINT, it aborts). The child gets SIGTERM when the sweep process dies (Linux), so a killed sweep
leaves no trainer behind; :func:`wait_for_orphan` lets the next sweep wait for one still stopping.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tfpipe.experiments.trainproc import Attempt, Result

LOG_FOLDER = "sweep"
MODULE = "tfpipe.experiments.trial"


class TrialProcess:
    """A running child trial: ``--config CONFIG overrides`` (with ``run_dir=``) trained in ``run_dir``."""

    def __init__(self, config: str, overrides: list[str], run_dir: str, metric: str, number: int,
                 parent_run_id: str | None = None) -> None:  # fmt: skip
        report_r, report_w = os.pipe()
        reply_r, reply_w = os.pipe()
        args = ["--report-fd", str(report_w), "--reply-fd", str(reply_r), "--metric", metric,
                *(["--mlflow-parent-run-id", parent_run_id] if parent_run_id else []),
                "--config", config, *overrides]  # fmt: skip
        try:
            self.attempt = Attempt(args, run_dir, number, module=MODULE, folder=LOG_FOLDER,
                                   pass_fds=(report_w, reply_r))  # fmt: skip
        finally:
            os.close(report_w)
            os.close(reply_r)
        self._reports: TextIO = os.fdopen(report_r)
        self._replies: TextIO = os.fdopen(reply_w, "w")

    def run(self, on_report: Callable[[int, float], bool]) -> tuple[dict | None, str | None, Result]:
        """Answer the child's reports (``on_report(checkpoint, value)`` True: prune) until it ends:
        (its summary or None, its error line or None, how the process ended)."""
        summary = error = None
        try:
            for line in self._reports:  # ends when the child exits (EOF)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if "checkpoint" in message:
                    prune = on_report(int(message["checkpoint"]), float(message["value"]))
                    try:
                        self._replies.write("prune\n" if prune else "go\n")
                        self._replies.flush()
                    except BrokenPipeError:  # the child died meanwhile
                        pass
                summary = message.get("summary", summary)
                error = message.get("error", error)
        finally:
            self._reports.close()
            try:
                self._replies.close()
            except BrokenPipeError:
                pass
        return summary, error, self.attempt.finish()


class Forward:
    """SIGTERM / SIGINT while a trial runs: forwarded to the child (SIGTERM first, then SIGINT)."""

    def __init__(self, attempt: Attempt, say: Callable[[str], None]) -> None:
        self.attempt, self.say = attempt, say
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Forward:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        first = len(self.received) == 1
        what = "the trial stops after its current chunk of steps (Ctrl-C again aborts it)"
        self.say(f"{signal.Signals(signum).name}: {what if first else 'aborting the trial'}")
        self.attempt.signal(signal.SIGTERM if first else signal.SIGINT)


def wait_for_orphan(run_dir: str, say: Callable[[str], None], timeout_s: float = 600.0) -> None:
    """If a trainer on this host still trains ``run_dir`` (left by a killed sweep: it got SIGTERM and
    stops after its current chunk), wait until it has stopped, at most ``timeout_s``."""
    from tfpipe.train.status import live_session

    status = live_session(run_dir)
    if status is None or status.get("host") != socket.gethostname():
        return  # another host's trainer: the child refuses with the busy message
    say(f"waiting for pid {status.get('pid')}, a trainer of a dead sweep process, to stop in {run_dir}")
    deadline = time.monotonic() + timeout_s
    while live_session(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.5)


# -- the child ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="one tfpipe sweep trial (internal)")
    p.add_argument("--report-fd", type=int, required=True)
    p.add_argument("--reply-fd", type=int, required=True)
    p.add_argument("--metric", required=True)
    p.add_argument("--mlflow-parent-run-id", default=None)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    return p


def main(argv: list[str] | None = None) -> int:
    """The child: train with the reporting hook; exit 0, 2 (bad input), 130 (aborted) or 1."""
    from tfpipe.console import stop_on_signals

    prog = f"python -m {MODULE}"
    stop_on_signals(prog)  # until train() installs its own handlers
    args = _parser().parse_intermixed_args(argv)
    reports, replies = os.fdopen(args.report_fd, "w"), os.fdopen(args.reply_fd)

    def send(message: dict) -> None:
        try:
            reports.write(json.dumps(message) + "\n")
            reports.flush()
        except BrokenPipeError:  # the sweep is gone (this process got SIGTERM too)
            pass

    def hook(row: dict) -> str | None:
        value = row.get(args.metric)
        if value is None or not math.isfinite(float(value)):
            return None
        send({"checkpoint": int(row["checkpoint"]), "value": float(value)})
        return "pruned" if replies.readline().strip() == "prune" else None

    from tfpipe import storage
    from tfpipe.config import ConfigError, load_config
    from tfpipe.train.status import first_line
    from tfpipe.train.tracking import nested_under

    try:
        config = load_config(args.config, args.overrides)
        from tfpipe.train import train

        with nested_under(args.mlflow_parent_run_id):
            summary = train(config, verbose=0, on_checkpoint=hook)
    except KeyboardInterrupt:
        send({"error": "aborted (Ctrl-C twice)"})
        return 130
    except (ConfigError, storage.StorageError, OSError, ValueError) as err:
        send({"error": f"{type(err).__name__}: {first_line(err)}"})
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        send({"error": f"{type(err).__name__}: {first_line(err)}"})
        raise
    send({"summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
