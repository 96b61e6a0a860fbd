"""``tfpipe export-models``: the chosen runs' best models, copied into one model set folder.

``--select best:K`` takes the K runs with the highest ``--metric`` (a run's ``best_r2`` or ``last_r2``,
read by :func:`tfpipe.experiments.runs.find_runs`), ``--select A,B`` the runs named (in that order).
Only runs with a ``best.keras`` count. A model's name is its run dir's path below ``--runs`` with ``/``
as ``-`` (``runs/sq`` → ``sq``): config names repeat (every run of ``configs/tiny.yaml`` is ``tiny``),
run folders do not. The folder format and the index are :mod:`tfpipe.experiments.model_set`.

Kill-safety: every file is copied atomically (:func:`tfpipe.storage.staged_output`) and the index is
written last, so a killed or failed export leaves the previous index (if any) in place, and a reader
that finds a file changed under it (its sha256 differs from the index's) refuses the set. Files that
only the previous index named are deleted after the new index is written.
"""

from __future__ import annotations

import json
import os

from tfpipe import storage
from tfpipe.experiments.model_set import (
    INDEX,
    KIND,
    VERSION,
    ModelSetError,
    encode_index,
    file_names,
    file_sha256,
)
from tfpipe.experiments.runs import RunInfo, differing_keys, find_runs
from tfpipe.train.rundir import BEST_KERAS, CONFIG, STATS, RunDir

METRICS = ("best_r2", "last_r2")
"""What ``best:K`` ranks by: :class:`~tfpipe.experiments.runs.RunInfo` fields, higher is better."""
SOURCES = {"model": BEST_KERAS, "config": CONFIG, "stats": STATS}
"""The run file that each file of a model set is a copy of."""


def parse_select(select: str) -> tuple[int | None, list[str]]:
    """``best:K`` → ``(K, [])``; ``A,B`` → ``(None, ["A", "B"])`` (ModelSetError if malformed)."""
    text = select.strip()
    if text.startswith("best:"):
        k = text[len("best:") :]
        if not k.isdigit() or int(k) < 1:
            raise ModelSetError(f"--select {select!r}: best:K needs a whole number K >= 1")
        return int(k), []
    names = [n.strip() for n in text.split(",")]
    if not text or any(not n for n in names):
        raise ModelSetError(f"--select {select!r}: give best:K or run names separated by commas")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelSetError(f"--select {select!r}: {duplicates[0]!r} is named twice")
    return None, names


def model_name(run: RunInfo, root: str) -> str:
    """The run dir's path below ``root``, ``/`` replaced by ``-`` (the root itself: its base name)."""
    root = root.rstrip("/")
    path = run.path.rstrip("/")
    rel = path[len(root) + 1 :] if path.startswith(root + "/") else ""
    return rel.replace("/", "-") or path.rsplit("/", 1)[-1]


def _exportable(root: str) -> list[tuple[str, RunInfo]]:
    """``(name, run)`` of every run below ``root`` that has a ``best.keras`` (one listing each)."""
    root = root.rstrip("/")
    if not storage.exists(root) and not storage.is_remote(root):
        raise ModelSetError(f"--runs {root}: no such folder")
    with_best = {p[: -len("/" + BEST_KERAS)] for p in storage.list_files(root, suffix=BEST_KERAS)}
    runs = [(model_name(run, root), run) for run in find_runs(root) if run.path.rstrip("/") in with_best]
    if not runs:
        raise ModelSetError(f"--runs {root}: no run with a best.keras (no run has scored a checkpoint yet)")
    names = [name for name, _ in runs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ModelSetError(f"--runs {root}: two runs would both be exported as {clash[0]!r}")
    return runs


def _rel(run: RunInfo, root: str) -> str:
    path, root = run.path.rstrip("/"), root.rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else path


def _by_names(runs: list[tuple[str, RunInfo]], wanted: list[str], root: str) -> list[tuple[str, RunInfo]]:
    """The runs named: by model name, path below ``root``, run dir, or a config name only one run has."""
    chosen = []
    for want in wanted:
        hits = [(n, r) for n, r in runs if want in (n, _rel(r, root), r.path.rstrip("/"))]
        hits = hits or [(n, r) for n, r in runs if r.name == want]
        if not hits:
            known = ", ".join(name for name, _ in runs[:8]) + (", ..." if len(runs) > 8 else "")
            raise ModelSetError(
                f"--runs {root}: no run named {want!r} with a best.keras (there are: {known})"
            )
        if len(hits) > 1:
            names = ", ".join(name for name, _ in hits[:4])
            raise ModelSetError(
                f"--select: {want!r} names {len(hits)} runs ({names}): use their folder names"
            )
        chosen.append(hits[0])
    return chosen


def choose_runs(root: str, select: str, metric: str = "best_r2") -> list[tuple[str, RunInfo]]:
    """The ``(name, run)`` pairs ``--select`` picks from the runs below ``root``, in set order."""
    if metric not in METRICS:
        raise ModelSetError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    k, names = parse_select(select)
    runs = _exportable(root)
    if k is None:
        chosen = _by_names(runs, names, root)
    else:
        scored = [(name, run) for name, run in runs if getattr(run, metric) is not None]
        if k > len(scored):
            raise ModelSetError(
                f"--select best:{k}: {root} has only {len(scored)} run(s) with a best.keras and a {metric}"
            )
        chosen = sorted(scored, key=lambda nr: (-getattr(nr[1], metric), nr[0]))[:k]
    schemas = {run.config.get("data.schema", "kaggle") for _, run in chosen}
    if len(schemas) > 1:
        which = ", ".join(f"{name}: {run.config.get('data.schema', 'kaggle')}" for name, run in chosen)
        raise ModelSetError(f"--select {select}: the runs have different schemas ({which}); a set has one")
    return chosen


KERAS_MEMBERS = ("config.json", "model.weights.h5")
"""What a ``.keras`` archive (Keras 3: a zip) must hold to load."""


def check_keras_file(local: str, source: str) -> None:
    """ModelSetError naming ``source`` unless the local copy ``local`` is a whole ``.keras`` archive
    (a zip whose members all pass their CRC, with a config and weights): a truncated ``best.keras``
    is refused at export, not found by ``predict`` later. No TensorFlow needed."""
    import zipfile

    try:
        with zipfile.ZipFile(local) as archive:
            bad = archive.testzip()
            missing = [m for m in KERAS_MEMBERS if m not in archive.namelist()]
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ModelSetError(f"{source}: not a loadable .keras file (truncated or damaged: {err})") from None
    if bad is not None or missing:
        what = f"member {bad} fails its CRC" if bad is not None else f"no {', '.join(missing)}"
        raise ModelSetError(f"{source}: not a loadable .keras file ({what})")


def _copy(src: str, dst: str) -> dict:
    """Copy ``src`` to ``dst`` atomically (local or gs://); ``{file, sha256, bytes}`` of the copy
    (a ``.keras`` file is checked first)."""
    with storage.staged_output(dst) as local:
        storage.download_file(src, local)
        if src.endswith(".keras"):
            check_keras_file(local, src)
        record = {"file": dst.rstrip("/").rsplit("/", 1)[-1], "sha256": file_sha256(local)}
        record["bytes"] = os.path.getsize(local)
    return record


def _best_model_stamp(run_dir: str) -> tuple:
    """What tells one ``best.keras`` from the next (each export replaces the file): its size and
    modification time locally, its size and checksum on GCS."""
    path = RunDir(run_dir).best_keras
    if not storage.is_remote(path):
        info = os.stat(path)
        return info.st_size, info.st_mtime_ns
    return tuple((i.size, i.checksum) for i in storage.list_file_infos(path))


def _best_record(run_dir: str) -> dict:
    try:
        return json.loads(storage.read_bytes(RunDir(run_dir).best_record))
    except (OSError, RuntimeError, ValueError):
        return {}


def _committed_model(run_dir: str) -> str:
    """``best.keras``, or ``RUN/best/ckpt-B`` when a kill left best.keras holding an uncommitted model."""
    from tfpipe.train.checkpoints import TrainError
    from tfpipe.train.committed import best_model_path

    try:
        return best_model_path(run_dir)
    except TrainError as err:
        raise ModelSetError(str(err)) from None


def _export_checkpoint(name: str, run: RunInfo, out: str, metric: str, params: dict, prefix: str) -> dict:
    """The committed best checkpoint ``prefix`` saved as ``NAME.keras`` (as training exports best.keras)."""
    import tempfile

    from tfpipe.predict.loading import _restore_checkpoint, _run_config

    names = file_names(name)
    model = _restore_checkpoint(run.path, prefix, _run_config(run.path))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, BEST_KERAS)
        model.save(local)
        files = {"model": _copy(local, storage.join(out, names["model"]))}
    for kind in ("config", "stats"):
        files[kind] = _copy(storage.join(run.path, SOURCES[kind]), storage.join(out, names[kind]))
    return {
        "name": name, "run_dir": run.path, "run_name": run.name, "state": run.state,
        "best_checkpoint": f"ckpt-{prefix.rsplit('ckpt-', 1)[1]}", "best_r2": run.best_r2,
        metric: getattr(run, metric), "params": params, "files": files,
    }  # fmt: skip


def _export_one(name: str, run: RunInfo, out: str, metric: str, params: dict) -> dict:
    """Copy one run's files into ``out``; its index entry."""
    committed = _committed_model(run.path)
    if not committed.endswith(".keras"):
        return _export_checkpoint(name, run, out, metric, params, committed)
    names = file_names(name)
    for _attempt in range(3):  # a running run may replace best.keras (then best.json) while it is copied
        before = _best_record(run.path), _best_model_stamp(run.path)
        files = {
            kind: _copy(storage.join(run.path, SOURCES[kind]), storage.join(out, names[kind]))
            for kind in SOURCES
        }
        if (_best_record(run.path), _best_model_stamp(run.path)) == before:
            before = before[0]
            break
    else:
        raise ModelSetError(f"{run.path}: its best.keras kept changing while it was copied; try again")
    best_r2 = before.get(before.get("metric", "val_r2"), run.best_r2)
    return {
        "name": name, "run_dir": run.path, "run_name": run.name, "state": run.state,
        "best_checkpoint": before.get("checkpoint", run.best_checkpoint), "best_r2": best_r2,
        metric: best_r2 if metric == "best_r2" else getattr(run, metric), "params": params, "files": files,
    }  # fmt: skip


def _old_files(out: str) -> set[str]:
    """The files the folder's current index names (none when there is no readable index)."""
    try:
        index = json.loads(storage.read_bytes(storage.join(out, INDEX)))
        return {f["file"] for m in index["models"] for f in m["files"].values()}
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        return set()


def export_models(runs: str, select: str, out: str, metric: str = "best_r2") -> dict:
    """``tfpipe export-models``: copy the selected runs' models into ``out`` and write its index last."""
    chosen = choose_runs(runs, select, metric)
    for _name, run in chosen:  # all checks before the first copy
        for source in SOURCES.values():
            if not storage.exists(storage.join(run.path, source)):
                raise ModelSetError(f"{run.path}: no {source}, cannot export it")
    keys = differing_keys([run for _, run in chosen]) if len(chosen) > 1 else []
    old = _old_files(out)
    storage.makedirs(out)
    try:
        entries = [
            _export_one(name, run, out, metric, {k: run.config.get(k) for k in keys}) for name, run in chosen
        ]
    except BaseException:  # leave no file that no index names (files the old index names stay)
        for name, _ in chosen:
            for file in set(file_names(name).values()) - old:
                storage.delete(storage.join(out, file), missing_ok=True)
        raise
    schema = chosen[0][1].config.get("data.schema", "kaggle")
    index = {
        "version": VERSION, "kind": KIND, "schema": schema, "metric": metric, "select": select,
        "runs": runs, "models": entries,
    }  # fmt: skip
    storage.write_bytes(storage.join(out, INDEX), encode_index(index))  # commits the set
    written = {f["file"] for e in entries for f in e["files"].values()}
    removed = sorted(old - written)
    for stale in removed:
        storage.delete(storage.join(out, stale), missing_ok=True)
    return {
        "out": out, "models": [e["name"] for e in entries], "index": storage.join(out, INDEX),
        metric: [e[metric] for e in entries], "removed": removed,
    }  # fmt: skip
