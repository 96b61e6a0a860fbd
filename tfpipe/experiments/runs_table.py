"""``tfpipe runs ls DIR``: every run under a folder as a table (or JSON), read from the run dirs' files.

One row per run (:func:`tfpipe.experiments.runs.find_runs`), in at most :data:`WIDTH` columns: the
run's folder relative to ``DIR``, the config's name only where it is not the folder's, the config keys
whose values differ between the runs (:func:`~tfpipe.experiments.runs.differing_keys`) under their
shortest distinct dotted suffix (keys every run sets first; those that do not fit are named in one
line below the table and are all in ``--json``), the headline R² of the best checkpoint
(:data:`~tfpipe.experiments.runs.HEADLINE` where recorded, else the ``select_metric``), the Kaggle
``val_r2`` beside it, the headline R² of the latest checkpoint, the checkpoints done of those planned,
and the status: ``finished``, ``running``, ``stopped: REASON``, ``killed``, ``failed: ERROR``, with
``(resumable)`` where the same ``tfpipe train`` command continues it. Every number has 4 significant
digits.
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
KEY_WIDTH = 14
"""Config values in the table: at most this many characters."""
HEADER_WIDTH = 18
WIDTH = 120
"""The table's width in characters."""
STATUS_MIN = 24
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


def shorten(value: Any, width: int = KEY_WIDTH) -> str:
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
    return _cut(text, DETAIL_WIDTH)


def _descending(value: float | None) -> tuple[int, float]:
    return (1, 0.0) if value is None else (0, -value)


def sort_runs(runs: list[RunInfo], by: str, root: str) -> list[RunInfo]:
    """``runs`` ordered by the headline R² of the best (``best_r2``) or latest (``last_r2``) checkpoint
    (highest first, runs without a score last),
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
            return (rank, *_descending(run.r2), name)
        return (*_descending(run.r2 if by == "best_r2" else run.last_headline), name)

    return sorted(runs, key=key)


def number(value: float | None) -> str:
    """4 significant digits everywhere (``0.4312``, ``-132``, ``-1247``, ``-1.5e+05``); ``-`` for none."""
    return "-" if value is None else f"{value:.4g}"


def short_keys(
    keys: list[str], reserved: tuple[str, ...] = ("run", "name", "ckpts", "status")
) -> dict[str, str]:
    """Each dotted key's shortest suffix (whole components) that no other key in ``keys`` ends with and
    that is no other column's name, cut to HEADER_WIDTH characters."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if tail not in reserved and not any(
                other != key and (other == tail or other.endswith("." + tail)) for other in keys
            ):
                break
        out[key] = _cut(tail, HEADER_WIDTH)
    return out


def _names_column(runs: list[RunInfo], root: str) -> bool:
    """A name column only when the config names tell runs apart that their folders do not name."""
    return len({r.name for r in runs}) > 1 and any(
        r.name != relative_name(r, root).rsplit("/", 1)[-1] for r in runs
    )


def table_lines(runs: list[RunInfo], root: str, width: int = WIDTH) -> list[str]:
    """The aligned table in at most ``width`` columns: a header line, one line per run, and a line naming
    the differing keys that did not fit (if any)."""
    from tfpipe.experiments.runs import HEADLINE

    keys = differing_keys(runs)
    everywhere = [k for k in keys if all(k in r.config for r in runs)]  # model-specific keys after these
    keys = everywhere + [k for k in keys if k not in everywhere]
    short = short_keys(keys)
    new = any(r.headline == HEADLINE for r in runs)
    fixed = [("run", [relative_name(r, root) for r in runs], False)]
    if _names_column(runs, root):
        fixed.append(("name", [r.name for r in runs], False))
    scores = [
        ("R²" if new else "best R²", [number(r.r2) for r in runs], True),
        *([("Kaggle R²", [number(r.kaggle_r2) for r in runs], True)] if new else []),
        ("last R²", [number(r.last_headline) for r in runs], True),
        ("ckpts", [f"{r.checkpoints}/{'?' if r.total is None else r.total}" for r in runs], True),
    ]
    used = sum(_width(h, cells) + 2 for h, cells, _ in fixed + scores) + STATUS_MIN
    columns, hidden = list(fixed), []
    for key in keys:
        cells = [shorten(r.config.get(key), KEY_WIDTH) if key in r.config else "" for r in runs]
        w = _width(short[key], cells) + 2
        if used + w <= width:
            columns.append((short[key], cells, False))
            used += w
        else:
            hidden.append(key)
    columns += scores
    room = max(STATUS_MIN, width - sum(_width(h, cells) + 2 for h, cells, _ in columns))
    columns.append(("status", [_cut(status_text(r), room) for r in runs], False))
    widths = [_width(h, cells) for h, cells, _ in columns]

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if right else c.ljust(w)
               for c, w, (_, _, right) in zip(cells, widths, columns, strict=True)]  # fmt: skip
        return "  ".join(out).rstrip()

    rows = [[cells[i] for _, cells, _ in columns] for i in range(len(runs))]
    lines = [line([h for h, _, _ in columns]), *(line(row) for row in rows)]
    if hidden:
        lines.append(_cut(f"(+{len(hidden)} differing keys, all in --json: {', '.join(hidden)})", width))
    return lines


def _width(header: str, cells: list[str]) -> int:
    return max(len(c) for c in [header, *cells])


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


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
    scored = [r for r in runs if r.r2 is not None]
    best = max(scored, key=lambda r: r.r2) if scored else None
    return {
        "dir": root, "runs": len(runs), "states": dict(Counter(r.state for r in runs)),
        "best": None if best is None else {"run": relative_name(best, root), "r2": best.r2,
                                           "headline": best.headline, "kaggle_r2": best.kaggle_r2,
                                           "best_r2": best.best_r2, "checkpoint": best.best_checkpoint},
    }  # fmt: skip


def list_runs(root: str, sort: str = "best_r2") -> list[RunInfo]:
    """The runs under ``root``, sorted; ValueError (one line) if there are none."""
    if not storage.exists(root) and not storage.is_remote(root):
        raise ValueError(f"{root}: no such folder")
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"{root}: no runs (no run dir with a config.yaml at or below it)")
    return sort_runs(runs, sort, root)
