"""What a folder of runs holds: each run's config, scores, checkpoints and status, read from its files.

The one reader behind ``tfpipe runs ls``, ``tfpipe launch``'s progress lines and ``tfpipe
export-models``' selection. A run dir is any folder with a ``config.yaml`` (local or ``gs://``); it
needs no database: ``metrics.csv``, ``best.json``, ``checkpoints/ckpt-N.state.json`` and
``status.json`` (:mod:`tfpipe.train.status`) say everything.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from tfpipe import storage
from tfpipe.train.status import effective_state, read_status


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
    last_r2: float | None = None
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
            "best_r2": self.best_r2, "last_r2": self.last_r2, "checkpoints": self.checkpoints,
            "total": self.total, "best_checkpoint": self.best_checkpoint, "resumable": self.resumable,
            "config": self.config,
        }  # fmt: skip


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config tree (list elements by index)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out |= flatten(value, f"{prefix}.{i}")
        return out
    return {prefix: tree}


def _json(path: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, RuntimeError, ValueError):
        return None


def _last_state(run_dir: str) -> dict | None:
    """The newest committed ``ckpt-N.state.json``."""
    folder = storage.join(run_dir, "checkpoints")
    numbers = []
    for name in storage.listdir(folder) if storage.exists(folder) else []:
        if name.startswith("ckpt-") and name.endswith(".state.json"):
            stem = name[len("ckpt-") : -len(".state.json")]
            if stem.isdigit():
                numbers.append(int(stem))
    return _json(storage.join(folder, f"ckpt-{max(numbers)}.state.json")) if numbers else None


def read_run(run_dir: str) -> RunInfo:
    """A run's :class:`RunInfo` (ValueError if ``run_dir`` has no ``config.yaml``)."""
    import yaml

    config_file = storage.join(run_dir, "config.yaml")
    if not storage.exists(config_file):
        raise ValueError(f"{run_dir}: not a tfpipe run dir (no config.yaml)")
    try:
        config = yaml.safe_load(storage.read_bytes(config_file)) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{config_file}: not YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: not a tfpipe run config (a {type(config).__name__}, not a mapping)")
    state = _last_state(run_dir)
    status = read_status(run_dir)
    checkpoints = int(state["checkpoint"]) if state else 0
    total = len(state["plan_steps"]) if state and state.get("plan_steps") else None
    if status is not None and status.get("checkpoints"):
        total = int(status["checkpoints"])
    kind = effective_state(status) if status is not None else ("unknown" if checkpoints else "new")
    finished = kind == "finished" or (total is not None and checkpoints >= total)
    if finished:
        kind = "finished"
    detail = str((status or {}).get("reason") or (status or {}).get("error") or "")
    best = state.get("best_metric") if state else None
    return RunInfo(
        path=run_dir, name=str(config.get("name", run_dir.rstrip("/").rsplit("/", 1)[-1])),
        config=flatten(config), state=kind, detail=detail, best_r2=best,
        last_r2=(state or {}).get("val", {}).get(config.get("select_metric", "val_r2")),
        checkpoints=checkpoints, total=total,
        best_checkpoint=None if not state or state.get("best_checkpoint") is None
        else f"ckpt-{state['best_checkpoint']}",
        resumable=not finished and kind != "running" and checkpoints > 0,
    )  # fmt: skip


def find_runs(root: str) -> list[RunInfo]:
    """Every run dir at or below ``root`` (a folder with a ``config.yaml`` that is not inside another
    run dir), sorted by path; one recursive listing, also on ``gs://``."""
    root = root.rstrip("/")
    files = storage.list_files(root, suffix="config.yaml")
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
