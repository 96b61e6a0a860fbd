"""``tfpipe runs ls DIR``: every run under a folder as a table (or JSON), read from the run dirs' files.

One row per run (:func:`tfpipe.experiments.runs.find_runs`): the run's folder relative to ``DIR``, the
config keys whose values differ between the runs (:func:`~tfpipe.experiments.runs.differing_keys`,
values shortened), the best and the last validation R², the checkpoints done of those planned, and
the status: ``finished``, ``running``, ``stopped: REASON``, ``killed``, ``failed: ERROR``, with
``(resumable)`` where the same ``tfpipe train`` command continues it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from tfpipe import storage
from tfpipe.experiments.runs import RunInfo, differing_keys, find_runs

SORTS = ("best_r2", "last_r2", "name", "state")
STATE_ORDER = ("running", "finished", "stopped", "killed", "failed", "new", "unknown")
VALUE_WIDTH = 24
DETAIL_WIDTH = 70


def relative_name(run: RunInfo, root: str) -> str:
    """The run dir relative to ``root`` (its folder's name when ``root`` is the run dir itself)."""
    root, path = root.rstrip("/"), run.path.rstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    if path != root:
        return path
    name = path.rsplit("/", 1)[-1]
    return os.path.basename(os.path.abspath(path)) if name in ("", ".", "..") else name


def shorten(value: Any, width: int = VALUE_WIDTH) -> str:
    """A config value in at most ``width`` characters: floats to 4 significant digits, lists and
    mappings as compact JSON, long text cut at the front (paths differ at their end)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def status_text(run: RunInfo) -> str:
    """``finished``, ``stopped: time budget (resumable)``, ``failed: ValueError: ...``, ..."""
    text = run.state
    if run.state in ("stopped", "failed") and run.detail:
        text += f": {run.detail}"
    if run.resumable and run.state != "failed":
        text = "resumable" if run.state == "unknown" else f"{text} (resumable)"
    return text if len(text) <= DETAIL_WIDTH else text[: DETAIL_WIDTH - 1] + "…"


def _descending(value: float | None) -> tuple[int, float]:
    return (1, 0.0) if value is None else (0, -value)


def sort_runs(runs: list[RunInfo], by: str, root: str) -> list[RunInfo]:
    """``runs`` ordered by ``best_r2`` or ``last_r2`` (highest first, runs without a score last),
    ``name`` (the relative folder) or ``state`` (running, finished, stopped, killed, failed, ...;
    then by best R²)."""
    if by not in SORTS:
        raise ValueError(f"--sort {by!r}: not one of {', '.join(SORTS)}")

    def key(run: RunInfo) -> tuple:
        name = relative_name(run, root)
        if by == "name":
            return (name,)
        if by == "state":
            rank = STATE_ORDER.index(run.state) if run.state in STATE_ORDER else len(STATE_ORDER)
            return (rank, *_descending(run.best_r2), name)
        return (*_descending(run.best_r2 if by == "best_r2" else run.last_r2), name)

    return sorted(runs, key=key)


def _r2(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.3e}"  # a diverged run: -6.951e+09


def table_lines(runs: list[RunInfo], root: str) -> list[str]:
    """The aligned table: a header line, then one line per run."""
    keys = differing_keys(runs)
    names = len({r.name for r in runs}) > 1
    header = ["run", *(["name"] if names else []), *keys, "best R²", "last R²", "ckpts", "status"]
    numeric = {"best R²", "last R²", "ckpts"}
    rows = [
        [
            relative_name(r, root), *([r.name] if names else []), *(shorten(r.config.get(k)) for k in keys),
            _r2(r.best_r2), _r2(r.last_r2), f"{r.checkpoints}/{'?' if r.total is None else r.total}",
            status_text(r),
        ]
        for r in runs
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, header, strict=True)
        ]
        return "  ".join(out).rstrip()

    return [line(header), *(line(row) for row in rows)]


def runs_json(runs: list[RunInfo], root: str) -> list[dict[str, Any]]:
    """One object per run: ``run`` (relative folder), ``differs`` (the differing keys' values) and
    every field of :class:`RunInfo` (``config``: the whole flattened config)."""
    keys = differing_keys(runs)
    return [
        {"run": relative_name(r, root), "differs": {k: r.config.get(k) for k in keys}, **r.to_dict()}
        for r in runs
    ]


def summary(runs: list[RunInfo], root: str) -> dict[str, Any]:
    """The last line of the table form: how many runs in which state, and the best one."""
    scored = [r for r in runs if r.best_r2 is not None]
    best = max(scored, key=lambda r: r.best_r2) if scored else None
    return {
        "dir": root, "runs": len(runs), "states": dict(Counter(r.state for r in runs)),
        "best": None if best is None else {"run": relative_name(best, root), "best_r2": best.best_r2,
                                           "checkpoint": best.best_checkpoint},
    }  # fmt: skip


def list_runs(root: str, sort: str = "best_r2") -> list[RunInfo]:
    """The runs under ``root``, sorted; ValueError (one line) if there are none."""
    if not storage.exists(root) and not storage.is_remote(root):
        raise ValueError(f"{root}: no such folder")
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"{root}: no runs (no run dir with a config.yaml at or below it)")
    return sort_runs(runs, sort, root)
