"""What a folder of runs holds: each run's config, scores, checkpoints and status, read from its files.

The one reader behind ``tfpipe runs ls``, ``tfpipe launch``'s progress lines and ``tfpipe
export-models``' selection. A run dir is any folder with a ``config.yaml`` (local or ``gs://``); it
needs no database: ``metrics.csv``, ``best.json``, ``checkpoints/ckpt-N.state.json`` and
``status.json`` (:mod:`tfpipe.train.status`) say everything. Which checkpoints count is the train
package's rule (:func:`tfpipe.train.checkpoints.available_checkpoints`: listed in the manager's index
and committed by their state record), so a table and a resume never disagree.

The headline R² is ``val_r2_train_var`` (R² with the training variance as denominator, in the range
of the Kaggle score and not wrecked by near-constant validation targets) where the run recorded it,
else the config's ``select_metric``; the Kaggle ``val_r2`` is kept beside it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from tfpipe import storage
from tfpipe.config import flatten_tree
from tfpipe.train.checkpoints import RunState, TrainError, available_checkpoints, read_state
from tfpipe.train.rundir import CONFIG, RunDir
from tfpipe.train.status import effective_state, read_status

HEADLINE = "val_r2_train_var"
"""The headline validation metric where a run recorded it (older runs: their ``select_metric``)."""
KAGGLE = "val_r2"


@dataclass
class RunInfo:
    """One run dir as ``tfpipe runs ls`` shows it."""

    path: str
    name: str
    config: dict[str, Any]
    """The resolved config, flattened to dotted keys."""
    state: str
    """``finished``, ``running``, ``stopped``, ``killed``, ``failed``, ``new`` (nothing trained yet)
    or ``unknown`` (an older tfpipe wrote no status)."""
    detail: str = ""
    """The stop reason or the first line of the error."""
    best_r2: float | None = None
    """The ``select_metric`` of the best checkpoint (what picked ``best.keras``)."""
    last_r2: float | None = None
    """The ``select_metric`` of the latest checkpoint."""
    r2: float | None = None
    """The headline R² of the best checkpoint (:data:`HEADLINE`, else ``best_r2``)."""
    kaggle_r2: float | None = None
    """The Kaggle ``val_r2`` of the best checkpoint."""
    last_headline: float | None = None
    """The headline R² of the latest checkpoint."""
    headline: str = "val_r2"
    """Which metric ``r2`` and ``last_headline`` are: :data:`HEADLINE` or the ``select_metric``."""
    checkpoints: int = 0
    """Committed checkpoints (sub-epochs done)."""
    total: int | None = None
    """Sub-epochs planned."""
    best_checkpoint: str | None = None
    resumable: bool = False
    """Not finished and with a checkpoint to continue from."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "name": self.name, "state": self.state, "detail": self.detail,
            "best_r2": self.best_r2, "last_r2": self.last_r2, "r2": self.r2, "kaggle_r2": self.kaggle_r2,
            "last_headline": self.last_headline, "headline": self.headline, "checkpoints": self.checkpoints,
            "total": self.total, "best_checkpoint": self.best_checkpoint, "resumable": self.resumable,
            "config": self.config,
        }  # fmt: skip


def _json(path: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, RuntimeError, ValueError):
        return None


def _states(run_dir: str) -> tuple[RunState | None, RunState | None]:
    """(the newest readable committed checkpoint's state, the best checkpoint's state): discovery by
    the train package's rules; an unreadable newest state falls back to the one before, as a resume does."""
    latest = None
    for n in reversed(available_checkpoints(run_dir)):
        try:
            latest = read_state(run_dir, n)
            break
        except TrainError:  # corrupt, or written by another version
            continue
    if latest is None or latest.best_checkpoint in (None, latest.checkpoint):
        return latest, latest
    try:  # the best checkpoint's state outlives its rotation (drop_stale_states keeps it)
        return latest, read_state(run_dir, latest.best_checkpoint)
    except TrainError:
        return latest, None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_run(run_dir: str) -> RunInfo:
    """A run's :class:`RunInfo` (ValueError if ``run_dir`` has no ``config.yaml``)."""
    import yaml

    config_file = RunDir(run_dir).config
    if not storage.exists(config_file):
        raise ValueError(f"{run_dir}: not a tfpipe run dir (no config.yaml)")
    try:
        config = yaml.safe_load(storage.read_bytes(config_file)) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{config_file}: not YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: not a tfpipe run config (a {type(config).__name__}, not a mapping)")
    state, best_state = _states(run_dir)
    status = read_status(run_dir)
    checkpoints = state.checkpoint if state else 0
    total = len(state.plan_steps) if state and state.plan_steps else None
    if status is not None and status.get("checkpoints"):
        total = int(status["checkpoints"])
    kind = effective_state(status) if status is not None else ("unknown" if checkpoints else "new")
    finished = kind == "finished" or (total is not None and checkpoints >= total)
    if finished:
        kind = "finished"
    detail = str((status or {}).get("reason") or (status or {}).get("error") or "")
    select = str(config.get("select_metric", "val_r2"))
    last_val = state.val if state else {}
    best_val = best_state.val if best_state else {}
    headline = HEADLINE if _number(best_val.get(HEADLINE, last_val.get(HEADLINE))) is not None else select
    best = _number(state.best_metric) if state else None
    return RunInfo(
        path=run_dir, name=str(config.get("name", run_dir.rstrip("/").rsplit("/", 1)[-1])),
        config=flatten_tree(config), state=kind, detail=detail, best_r2=best,
        last_r2=_number(last_val.get(select)),
        r2=_number(best_val.get(headline)) if headline != select or best_val.get(headline) is not None
        else best,  # an old run's best state may be gone: its recorded best_metric is the same number
        kaggle_r2=_number(best_val.get(KAGGLE)), last_headline=_number(last_val.get(headline)),
        headline=headline, checkpoints=checkpoints, total=total,
        best_checkpoint=None if state is None or state.best_checkpoint is None
        else f"ckpt-{state.best_checkpoint}",
        resumable=not finished and kind != "running" and checkpoints > 0,
    )  # fmt: skip


def find_runs(root: str) -> list[RunInfo]:
    """Every run dir at or below ``root`` (a folder with a ``config.yaml`` that is not inside another
    run dir), sorted by path; one recursive listing, also on ``gs://``."""
    root = root.rstrip("/")
    files = storage.list_files(root, suffix=CONFIG)
    dirs = sorted({path[: -len("/config.yaml")] for path in files if path.endswith("/config.yaml")})
    runs: list[str] = []
    for path in dirs:
        if not any(path.startswith(parent + "/") for parent in runs):
            runs.append(path)
    found = []
    for path in runs:
        try:
            found.append(read_run(path))
        except ValueError as err:  # another tool's config.yaml under root: not a run, said once
            print(f"[runs] skipped {path}: {err}", file=sys.stderr)
    return found


def differing_keys(runs: list[RunInfo], ignore: tuple[str, ...] = ("name", "run_dir")) -> list[str]:
    """Config keys whose values differ between ``runs`` (what tells them apart), sorted."""
    keys = sorted({k for r in runs for k in r.config} - set(ignore))
    missing = object()
    return [k for k in keys if len({json.dumps(r.config.get(k, missing), default=str) for r in runs}) > 1]
