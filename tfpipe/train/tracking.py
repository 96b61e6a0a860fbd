"""MLflow tracking of training runs (``tracking.backend: mlflow``): params, metrics and files.

Every session of a run (the chief process only) logs into one MLflow run, whose id is kept in
``RUN/mlflow.json``: a resumed run continues it. The resolved config goes in as params (dotted keys),
each ``metrics.csv`` row as metrics (step = the global step), and at the end of every session the
files ``best.keras``, ``metrics.csv``, ``config.yaml``, ``stats.json`` and the score tables
``RUN/score/*`` as artefacts; the MLflow run then ends as ``RUN/status.json`` says (finished:
FINISHED, stopped: KILLED, failed: FAILED; the tags ``tfpipe.state`` and ``tfpipe.detail`` hold the
state and the reason or error). With an MLflow run active in the process (a sweep's parent run,
:func:`~.study_tracking.study_run`) or a parent run id named by :func:`nested_under` (a sweep
trial's child process gets its sweep's study run id on its command line), the run is nested under
it: MLflow's own ``mlflow.parentRunId`` tag, as ``mlflow.start_run(parent_run_id=...)`` sets it.

A run logs through an :class:`mlflow.tracking.MlflowClient` of its own URI: the fluent API's global
tracking URI and active run are left alone. MLflow's HTTP retries and time-out are bounded
(:data:`HTTP_LIMITS`, unless the user set them) only while tfpipe's own MLflow calls run, not for the
process. A SQLite store keeps the artefacts of the experiments it creates beside its database file
(``DIR/mlartifacts/EXPERIMENT`` for ``sqlite:///DIR/mlflow.db``), not in ``./mlruns`` of whatever
folder the command ran in. :func:`preflight` (called by ``train()`` before anything
else) turns a missing mlflow package, an unreachable server, a URI scheme MLflow has no store for or
a SQLite database that cannot be opened or created into one :class:`TrackingError` line;
a logging failure in mid-run is one warning, and training goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tfpipe import storage
from tfpipe.train.rundir import BEST_KERAS, CONFIG, METRICS, STATS
from tfpipe.train.status import first_line, read_status

MLFLOW_FILE = "mlflow.json"
ARTIFACTS = (BEST_KERAS, METRICS, CONFIG, STATS)
SCORE_DIR = "score"
ARTIFACTS_BESIDE_DB = "mlartifacts"
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
"""MLflow's HTTP retries and time-out during tfpipe's calls (its defaults: 7 retries with back-off,
120 s), unless the user set them."""
MAX_PARAM_LENGTH = 6000
PARAMS_PER_CALL = 100
END_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
"""MLflow run status at the end of a session, by ``status.json`` state (any other: FAILED)."""

Hook = Callable[[dict], "str | None"]
_parents: list[str | None] = []
"""The stack of :func:`nested_under`'s parent run ids (the innermost last)."""


class TrackingError(ValueError):
    """Tracking cannot start: MLflow is missing, its server is unreachable or refuses the run."""


def resolve_uri(uri: str) -> str:
    """The tracking URI a run logs to: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlruns``;
    a local path (or a relative ``file:`` URI) as an absolute ``file://`` URI."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or "mlruns"
    if uri.startswith("file:") and not uri.startswith("file:///"):
        uri = uri[len("file:") :]
    if "://" in uri or uri == "databricks" or uri.startswith(("databricks:", "databricks-uc")):
        return uri
    return Path(uri).expanduser().absolute().as_uri()


def _missing() -> TrackingError:
    return TrackingError("tracking.backend: mlflow needs the mlflow package (pip install mlflow-skinny)")


def preflight(tracking) -> None:
    """For ``tracking.backend: mlflow``: mlflow must import and an HTTP server answer within 10 s
    (MLflow itself would retry for minutes); TrackingError naming the URI otherwise."""
    if tracking.backend != "mlflow":
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise _missing() from None
    uri = resolve_uri(tracking.uri)
    _check_scheme(uri)
    if uri.startswith("sqlite:"):
        _check_sqlite(uri)
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # it answers (a proxy or an auth layer may refuse /health)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"tracking.uri {uri}: the MLflow tracking server is unreachable ({reason})"
        ) from None


KNOWN_SCHEMES = ("", "databricks", "databricks-uc", "file", "http", "https", "mssql", "mysql", "postgresql",
                 "sqlite", "uc")  # fmt: skip
"""MLflow 3's tracking store schemes (plugins may add more: :func:`_schemes` asks MLflow)."""


def _schemes() -> set[str]:
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return set(_tracking_store_registry._registry) | set(KNOWN_SCHEMES)
    except (ImportError, AttributeError):  # a private name that may move: the known list then
        return set(KNOWN_SCHEMES)


def _check_scheme(uri: str) -> None:
    """An unknown scheme is a 58-line MLflow traceback at the first call: one line instead."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.split("+")[0]
    known = _schemes()
    if scheme not in known:
        raise TrackingError(
            f"tracking.uri {uri}: MLflow has no tracking store for {scheme}:// "
            f"(one of {', '.join(s + '://' for s in sorted(known) if s)}, or a local folder)"
        )


def _check_sqlite(uri: str) -> None:
    """The database file must open (or its folder take a new file): MLflow's own error is ~200 lines."""
    import sqlite3

    path = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not path or path == ":memory:":
        return
    if os.path.exists(path):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
                db.execute("pragma schema_version").fetchall()
        except sqlite3.Error as err:
            message = f"tracking.uri {uri}: {path} is not a usable SQLite database ({err})"
            raise TrackingError(message) from None
        return
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # MLflow creates the missing folders below it
    try:  # a probe file, not the database: nothing is left behind if training never starts
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tfpipe-probe-"):
            pass
    except OSError as err:
        raise TrackingError(
            f"tracking.uri {uri}: cannot create the database {path} ({folder}: {err.strerror})"
        ) from None


@contextlib.contextmanager
def http_limits() -> Iterator[None]:
    """:data:`HTTP_LIMITS` in the environment (where MLflow reads them, at each request) while the block
    runs, unless the user set them: a lost server costs seconds of a run, not minutes per call."""
    added = [name for name in HTTP_LIMITS if name not in os.environ]
    for name in added:
        os.environ[name] = HTTP_LIMITS[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def nested_under(run_id: str | None) -> Iterator[None]:
    """Runs trained inside the block (in this process) are nested under the MLflow run ``run_id`` (in
    their own store); None: no change."""
    _parents.append(run_id)
    try:
        yield
    finally:
        _parents.pop()


def mlflow_client(uri: str):
    """An MlflowClient of ``uri`` (TrackingError if mlflow is not installed)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise _missing() from None
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses it unless asked
    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artefacts: ``DIR/mlartifacts/EXPERIMENT``
    beside the database file (MLflow's default is ``./mlruns`` of the current folder); None for other
    stores (a server or a file store knows its own)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    if str(database) in ("", ":memory:"):
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "experiment"
    return (database.absolute().parent / ARTIFACTS_BESIDE_DB / safe).as_uri()


def get_experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if it does not exist (also by a parallel run)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri, name))
        except Exception:  # noqa: BLE001 (another run created it meanwhile)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"tracking.uri {uri}: the MLflow experiment {name!r} is deleted; restore it "
            "(mlflow experiments restore) or set tracking.experiment"
        )
    return experiment.experiment_id


def _target(tracking) -> tuple[str, str | None]:
    """(the URI this run logs to, the id of the run to nest under or None): the active fluent run
    (whose store is the default URI), else :func:`nested_under`'s run id."""
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return resolve_uri(tracking.uri), next((p for p in reversed(_parents) if p), None)
    active_uri = resolve_uri(mlflow.get_tracking_uri())
    uri = resolve_uri(tracking.uri) if tracking.uri else active_uri
    if uri != active_uri:
        print(f"[train] the active MLflow run {active.info.run_id} is at {active_uri}; this run logs to "
              f"{uri}, not nested", file=sys.stderr)  # fmt: skip
        return uri, None
    return uri, active.info.run_id


def param_items(config: dict[str, Any]) -> dict[str, str]:
    """Flattened dotted config keys and their values as MLflow params (values cut to 6000 chars)."""
    from tfpipe.config import flatten_tree

    out = {}
    for key, value in flatten_tree(config).items():
        text = value if isinstance(value, str) else json.dumps(value)
        out[key] = text[:MAX_PARAM_LENGTH]
    return out


class Tracker:
    """One run's MLflow run: started (or continued) by :meth:`start`, ended by :meth:`end`."""

    def __init__(self, client, uri: str, run_id: str, run_dir: str) -> None:
        self.client, self.uri, self.run_id, self.run_dir = client, uri, run_id, run_dir
        self.failed = False

    @classmethod
    def start(cls, config, run_dir: str) -> Tracker:
        """Start the MLflow run of ``run_dir`` (or continue the one in ``RUN/mlflow.json``) and log
        the config. TrackingError, naming the URI, if MLflow is missing or refuses."""
        from tfpipe.config import config_to_dict

        try:
            uri, parent = _target(config.tracking)
        except ImportError:
            raise _missing() from None
        client = mlflow_client(uri)
        run_id = None
        with http_limits():
            try:
                run_id = _continued_run(client, uri, run_dir)
                run_id = run_id or _new_run(client, uri, run_dir, config, parent)
                tracker = cls(client, uri, run_id, run_dir)
                tracker.log_params(config_to_dict(config))
            except Exception as err:  # noqa: BLE001 (MlflowException, requests' errors, OSError ...)
                if run_id is not None:  # started (RUNNING) but not usable: do not leave it running
                    with contextlib.suppress(Exception):
                        client.set_terminated(run_id, "FAILED")
                if isinstance(err, TrackingError):
                    raise
                raise TrackingError(f"tracking.uri {uri}: MLflow failed: {first_line(err)}") from None
        print(f"[train] MLflow run {run_id} at {uri}", file=sys.stderr)
        return tracker

    def log_params(self, config: dict[str, Any]) -> None:
        """The config as params, 100 per call; on a resume only new keys (MLflow params cannot change:
        a value changed with --allow-config-change becomes the tag ``config.KEY``)."""
        from mlflow.entities import Param, RunTag

        logged = self.client.get_run(self.run_id).data.params
        params = param_items(config)
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        changed = [RunTag(f"config.{k}", v) for k, v in params.items() if k in logged and logged[k] != v]
        for i in range(0, len(new), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_CALL])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def log_row(self, row: dict, step: int) -> None:
        """The numeric values of a ``metrics.csv`` row, at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, step)
            for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self._guard(lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def hook(self, inner: Hook | None) -> Hook:
        """An ``on_checkpoint`` hook that logs the row, then calls ``inner`` (a sweep's pruner)."""

        def on_checkpoint(row: dict) -> str | None:
            self.log_row(row, int(row.get("step", 0)))
            return inner(row) if inner is not None else None

        return on_checkpoint

    def end(self) -> None:
        """Log the files and end this session's MLflow run as ``RUN/status.json`` says."""
        status = read_status(self.run_dir) or {}
        state = str(status.get("state", "failed"))
        detail = str(status.get("reason") or status.get("error") or "")
        if state == "running":  # the session died before it could record how it ended
            state, detail = "failed", detail or "the session ended without a final status"
        self.failed = False  # a failure in mid-run: the files and the end are still worth a try
        self._guard(lambda: log_run_files(self.client, self.run_id, self.run_dir))

        def finish() -> None:
            if status.get("best_r2") is not None:
                self.client.log_metric(self.run_id, "best_r2", float(status["best_r2"]),
                                       step=int(status.get("step") or 0))  # fmt: skip
            self.client.set_tag(self.run_id, "tfpipe.state", state)
            self.client.set_tag(self.run_id, "tfpipe.detail", detail[:MAX_PARAM_LENGTH])
            self.client.set_terminated(self.run_id, END_STATUS.get(state, "FAILED"))

        self.failed = False  # failed uploads must not leave the run RUNNING
        self._guard(finish)

    def _guard(self, call: Callable[[], object]) -> None:
        """Run an MLflow call; a failure mid-run is a warning (training goes on), said once."""
        if self.failed:
            return
        try:
            with http_limits():
                call()
        except Exception as err:  # noqa: BLE001
            self.failed = True
            print(f"[train] warning: MLflow logging to {self.uri} failed ({first_line(err)}); the run goes "
                  "on without it", file=sys.stderr)  # fmt: skip


@contextlib.contextmanager
def tracked_session(config, run_dir: str, on_checkpoint: Hook | None) -> Iterator[Hook | None]:
    """Around one training session of the chief: yields the ``on_checkpoint`` hook to use (``on_checkpoint``
    itself for ``tracking.backend: none``); the MLflow run ends as ``status.json`` says."""
    if config.tracking.backend != "mlflow":
        yield on_checkpoint
        return
    tracker = Tracker.start(config, run_dir)
    try:
        yield tracker.hook(on_checkpoint)
    finally:
        tracker.end()


def read_record(run_dir: str) -> dict | None:
    """``RUN/mlflow.json`` (uri, run_id, experiment_id, parent_run_id), or None."""
    path = storage.join(run_dir, MLFLOW_FILE)
    try:
        return json.loads(storage.read_bytes(path)) if storage.exists(path) else None
    except (OSError, RuntimeError, ValueError):
        return None


def _continued_run(client, uri: str, run_dir: str) -> str | None:
    """The run id of ``RUN/mlflow.json`` if that run is in this store (now running again), else None."""
    record = read_record(run_dir)
    if not record or record.get("uri") != uri:
        if record:
            print(f"[train] {run_dir}/{MLFLOW_FILE} names a run at {record.get('uri')}; this session logs "
                  f"to a new run at {uri}", file=sys.stderr)  # fmt: skip
        return None
    try:
        run = client.get_run(record["run_id"])
    except Exception:  # noqa: BLE001 (deleted for good, or another store at the same URI)
        return None
    if run.info.lifecycle_stage == "deleted":
        return None
    client.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def _new_run(client, uri: str, run_dir: str, config, parent: str | None) -> str:
    """Create the MLflow run of ``run_dir`` (nested under ``parent``, in its experiment) and record it
    in ``RUN/mlflow.json``."""
    experiment = None
    if parent:
        try:
            experiment = client.get_run(parent).info.experiment_id
        except Exception as err:  # noqa: BLE001
            print(f"[train] the parent MLflow run {parent} is not at {uri} ({first_line(err)}); not "
                  "nested", file=sys.stderr)  # fmt: skip
            parent = None
    experiment = experiment or get_experiment_id(client, config.tracking.experiment or "tfpipe", uri)
    where = run_dir if storage.is_remote(run_dir) else os.path.abspath(run_dir)
    tags = {"tfpipe.run_dir": where, "tfpipe.name": config.name}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_name = run_dir.rstrip("/").rsplit("/", 1)[-1] or config.name
    run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
    record = {"uri": uri, "run_id": run_id, "experiment_id": experiment, "parent_run_id": parent}
    storage.write_bytes(storage.join(run_dir, MLFLOW_FILE), (json.dumps(record) + "\n").encode())
    return run_id


def log_run_files(client, run_id: str, run_dir: str) -> list[str]:
    """Log the run's files that exist (:data:`ARTIFACTS`, then ``RUN/score/*`` under ``score/``);
    returns their names. A ``gs://`` run's files are copied to a temporary folder first."""
    wanted = [(name, "") for name in ARTIFACTS]
    score = storage.join(run_dir, SCORE_DIR)
    if storage.exists(score):
        wanted += [(f"{SCORE_DIR}/{name}", SCORE_DIR) for name in storage.listdir(score)]
    logged = []
    with tempfile.TemporaryDirectory(prefix="tfpipe-mlflow-") as tmp:
        for name, folder in wanted:
            path = storage.join(run_dir, name)
            if storage.is_remote(path):
                if not storage.exists(path):
                    continue
                local = os.path.join(tmp, folder, os.path.basename(name))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                storage.download_file(path, local)
                path = local
            elif not os.path.isfile(path):
                continue
            client.log_artifact(run_id, path, folder or None)
            logged.append(name)
    return logged
