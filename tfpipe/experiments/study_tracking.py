"""The parent MLflow run of a study (``tfpipe sweep``): :func:`study_run`.

Its trials are MLflow runs of their own (:mod:`tfpipe.train.tracking`), nested under it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from tfpipe.train.status import first_line
from tfpipe.train.tracking import (
    TrackingError,
    get_experiment_id,
    http_limits,
    mlflow_client,
    preflight,
    resolve_uri,
)


@contextlib.contextmanager
def study_run(tracking, name: str) -> Iterator[str | None]:
    """A parent MLflow run around a study (a sweep): yields its run id (None for ``tracking.backend:
    none``, a no-op). Inside it, it is the process's active run, so a run trained in this process is
    nested under it; a child process is given the id (:func:`nested_under`). Its store is the default
    tracking URI inside the block (``$MLFLOW_TRACKING_URI`` too: children log to the same store). It
    ends FINISHED, or FAILED (KILLED on Ctrl-C) when the block raises. TrackingError (one line) if
    MLflow is missing or unreachable."""
    if tracking.backend != "mlflow":
        yield None
        return
    preflight(tracking)
    import mlflow

    uri = resolve_uri(tracking.uri)
    previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    with http_limits():
        try:
            experiment = get_experiment_id(mlflow_client(uri), tracking.experiment or "tfpipe", uri)
            mlflow.set_tracking_uri(uri)  # also $MLFLOW_TRACKING_URI: subprocesses log to the same store
            run = mlflow.start_run(experiment_id=experiment, run_name=name, tags={"tfpipe.study": name},
                                   nested=mlflow.active_run() is not None)  # fmt: skip
        except TrackingError:
            mlflow.set_tracking_uri(previous_uri)
            raise
        except Exception as err:  # noqa: BLE001
            mlflow.set_tracking_uri(previous_uri)
            raise TrackingError(f"tracking.uri {uri}: MLflow failed: {first_line(err)}") from None
    status = "FAILED"
    try:
        yield run.info.run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            with http_limits():
                mlflow.end_run(status)
        except Exception as err:  # noqa: BLE001 - a lost server must not hide the study's result
            print(f"[tracking] warning: cannot end the study's MLflow run: {first_line(err)}",
                  file=sys.stderr)  # fmt: skip
        mlflow.set_tracking_uri(previous_uri)
