"""``tfpipe launch``'s progress: one line per run, read from its run dir (:func:`~.runs.read_run`).

On a terminal the lines are redrawn in place (cursor up, clear line); otherwise (a log file, a CI
job) a run's line is printed again only when its state, checkpoint count or attempt changes. Events
(an attempt that resumes a checkpoint) are one line each, above the board (:meth:`Board.note`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from typing import TextIO

from tfpipe.experiments.runs import HEADLINE, RunInfo, read_run
from tfpipe.experiments.zoo import RunSpec


def scores(info: RunInfo | None) -> str:
    """``best R² 0.6123 (Kaggle -1.2e+06)`` (the headline R², see :mod:`~.runs`), or the select metric of
    an older run, 4 significant digits."""
    if info is None or info.r2 is None:
        return f"best R² {'-':>7}"
    kaggle = ""
    if info.headline == HEADLINE and info.kaggle_r2 is not None:
        kaggle = f" (Kaggle {info.kaggle_r2:.4g})"
    return f"best R² {info.r2:>7.4g}{kaggle}"


class Board:
    """The launcher's view of every run: its own state (queued, running, retrying, ...) and the run dir's."""

    def __init__(self, specs: list[RunSpec], stream: TextIO | None, interval_s: float = 1.0) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.state = {name: "queued" for name in self.specs}
        self.attempts = dict.fromkeys(self.specs, 0)
        self.info: dict[str, RunInfo | None] = dict.fromkeys(self.specs)
        self.stream = stream
        self.tty = bool(stream is not None and stream.isatty())
        self.interval_s = interval_s
        self._drawn = 0
        self._printed: dict[str, tuple] = {}
        self._last = 0.0
        self._width = max(len(name) for name in self.specs)

    def read(self, name: str) -> RunInfo | None:
        """Re-read run ``name`` from its run dir (None while it has no ``config.yaml``)."""
        try:
            self.info[name] = read_run(self.specs[name].run_dir)
        except (ValueError, OSError, RuntimeError):  # no config.yaml yet, or storage trouble: keep the last
            pass
        return self.info[name]

    def set(self, name: str, state: str, attempts: int | None = None) -> None:
        self.state[name] = state
        if attempts is not None:
            self.attempts[name] = attempts

    def line(self, name: str) -> str:
        info, state = self.info[name], self.state[name]
        if state == "running" and info is not None and info.state not in ("running", "finished"):
            state = "starting"  # the run dir still shows the previous session
        done = f"{info.checkpoints}/{info.total if info.total is not None else '?'}" if info else "-"
        return (f"{name:<{self._width}}  {state:<9}  sub-epochs {done:>7}  {scores(info)}  "
                f"attempts {self.attempts[name]}")  # fmt: skip

    def note(self, text: str) -> None:
        """One event line (on a terminal: above the board, which is drawn again below it)."""
        if self.stream is None:
            return
        if self.tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the board's first line, clear below
            self._drawn = 0
        self.stream.write(text + "\n")
        if self.tty:
            self.draw()
        self.stream.flush()

    def started(self, name: str, attempt: int) -> None:
        """Attempt ``attempt`` of run ``name`` starts: say so when it resumes a checkpoint."""
        info = self.read(name)
        if info is not None and info.checkpoints > 0 and info.state != "finished":
            self.note(f"[launch] {name}: attempt {attempt} resumes from its latest checkpoint "
                      f"(ckpt-{info.checkpoints} of {info.total or '?'})")  # fmt: skip

    def refresh(self, names: Iterable[str] = (), force: bool = False) -> None:
        """Re-read ``names`` (at most every ``interval_s`` unless ``force``) and redraw."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        for name in names:
            self.read(name)
        self.draw()

    def draw(self) -> None:
        if self.stream is None:
            return
        lines = {name: self.line(name) for name in self.specs}
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{text[:width]}\n" for text in lines.values()))
            self._drawn = len(lines)
        else:
            for name, text in lines.items():
                info = self.info[name]
                key = (self.state[name], info.checkpoints if info else -1, self.attempts[name])
                if self._printed.get(name) != key:
                    self._printed[name] = key
                    self.stream.write(text + "\n")
        self.stream.flush()
