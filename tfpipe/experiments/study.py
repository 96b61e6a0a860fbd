"""The Optuna side of ``tfpipe sweep``: storage, study, sampler and pruner, and dead trials.

The study lives in an Optuna journal file (``journal:PATH`` or a plain ``PATH``: Optuna's
``JournalStorage``, file-locked appends, made for several processes of one machine) or an RDB storage
(``sqlite:///FILE``; ``postgresql://...`` or ``mysql://...`` for several machines). An RDB storage has a
heartbeat: a trial whose process stopped beating is failed and queued again with its reports
(``RetryHeartbeatStaleTrialCallback``). A trial whose process on this host is gone (its ``worker``
attribute names the host and pid) is failed and queued at once (:func:`retry_dead_trials`); that is
how a journal's dead trials are found (the journal has no heartbeat, and one machine needs none).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from typing import Any

from tfpipe.train.status import effective_state, first_line

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp")
PRUNERS = ("median", "percentile", "hyperband", "successive-halving", "none")
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")
"""Trial states that count towards ``--trials`` (RUNNING: other processes' live trials)."""


class SweepError(ValueError):
    """A sweep that cannot start or go on (a one-line message)."""


def log(text: str, verbose: bool = True) -> None:
    """A progress line on stderr."""
    if verbose:
        print(f"[sweep] {text}", file=sys.stderr, flush=True)


def make_sampler(name: str, seed: int | None) -> Any:
    """An Optuna sampler by its ``--sampler`` name (SweepError when its extra package is missing)."""
    import importlib.util

    import optuna

    needs = {"cmaes": "cmaes", "gp": "torch"}.get(name)
    if needs and importlib.util.find_spec(needs) is None:
        raise SweepError(f"--sampler {name} needs the {needs} package: pip install {needs}")
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
    }
    if name not in samplers:
        raise SweepError(f"unknown sampler {name!r} (expected one of {', '.join(SAMPLERS)})")
    return samplers[name]()


def make_pruner(name: str) -> Any:
    """An Optuna pruner by its ``--pruner`` name; its steps are the run's checkpoints (sub-epochs)."""
    import optuna

    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(),
        "percentile": lambda: optuna.pruners.PercentilePruner(25.0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "successive-halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    if name not in pruners:
        raise SweepError(f"unknown pruner {name!r} (expected one of {', '.join(PRUNERS)})")
    return pruners[name]()


def redact(url: str) -> str:
    """A storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (an unparsable URL is reported when it is opened)
        return url


def retry_callback() -> Any:
    """Optuna's retry of a failed trial: a WAITING copy with its parameters, attributes and reports."""
    import optuna

    return optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)


def journal_path(url: str) -> str | None:
    """The journal file of a ``journal:PATH`` or plain ``PATH`` storage, else None (a database URL)."""
    if url.startswith("journal:"):
        return url[len("journal:") :].removeprefix("//")
    return None if "://" in url else url


def open_journal(path: str) -> Any:
    """Optuna's ``JournalStorage`` in the file ``path`` (created with its folder)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not path:
        raise SweepError("--storage journal: needs a file, e.g. journal:sweeps.journal")
    if os.path.isfile(path):
        with open(path, "rb") as file:
            if file.read(16) == b"SQLite format 3\x00":
                raise SweepError(f"--storage {path}: an SQLite database, not a journal: use sqlite:///{path}")
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    try:
        return JournalStorage(JournalFileBackend(path))
    except OSError as err:
        raise SweepError(f"--storage {path}: {first_line(err)}") from None


def open_storage(url: str, heartbeat_interval: int) -> Any:
    """The journal storage, or the RDB storage with a heartbeat whose stale trials are retried."""
    path = journal_path(url)
    if path is not None:
        return open_journal(path)
    import optuna
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        folder = os.path.dirname(url[len("sqlite:///") :])
        if folder:
            os.makedirs(folder, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}  # several sweep processes write one file
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                heartbeat_stale_trial_callback=retry_callback(),
            )  # fmt: skip
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as err:
            if attempt == 2:  # (two processes creating the tables at once: the later one tries again)
                raise SweepError(f"--storage {redact(url)}: {first_line(err)}") from None
            time.sleep(1.0 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
            raise SweepError(f"--storage {redact(url)}: {first_line(err)}") from None
    raise AssertionError("unreachable")


def open_study(
    name: str, url: str, sampler: str, pruner: str, seed: int | None, heartbeat_interval: int
) -> Any:
    """Create or load the study (direction maximize) with this process's sampler and pruner.

    A seeded sampler is seeded with :func:`sampler_seed` of the seed and the trials already in the
    study, so a resumed sweep does not draw its first trials' parameters again, and two seeds never
    meet (a plain ``seed + trials`` gives ``2 + 0 == 1 + 1``).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own progress lines say it
    make_sampler(sampler, None)  # the package check, before the storage is touched
    store = open_storage(url, heartbeat_interval)
    study = optuna.create_study(
        storage=store, study_name=name, direction="maximize", load_if_exists=True, pruner=make_pruner(pruner)
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise SweepError(f"study {name!r} in {redact(url)} minimises; tfpipe sweep maximises R²")
    study.sampler = make_sampler(
        sampler, None if seed is None else sampler_seed(seed, len(study.get_trials(deepcopy=False)))
    )
    return study


def sampler_seed(seed: int, trials: int) -> int:
    """The sampler's seed for ``--seed seed`` joining a study that holds ``trials`` trials: a hash of
    both (32 bits), so that different pairs give unrelated draws."""
    return int.from_bytes(hashlib.sha256(f"tfpipe-sweep:{seed}:{trials}".encode()).digest()[:4], "little")


def states(*names: str) -> tuple:
    """Optuna TrialStates by name."""
    from optuna.trial import TrialState

    return tuple(TrialState[n] for n in names)


def counted(study: Any) -> int:
    """Trials that count towards ``--trials``: COMPLETE, PRUNED and RUNNING."""
    return len(study.get_trials(deepcopy=False, states=states(*COUNTED)))


def frozen_trial(study: Any, number: int) -> Any:
    """The stored trial with this number."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def worker_id(number: int) -> str:
    """``host:pid:number``: who runs trial ``number``."""
    return f"{socket.gethostname()}:{os.getpid()}:{number}"


def is_dead(trial: Any) -> bool:
    """A RUNNING trial whose process was on this host and is gone (or is this process, which runs no
    trial yet). Other hosts' trials: Optuna's heartbeat tells."""
    parts = str(trial.user_attrs.get("worker", "")).rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] != str(trial.number):
        return False  # no worker recorded yet, or a retry's copy of the attributes of the trial it retries
    host, pid = parts[0], int(parts[1])
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return True
    return effective_state({"state": "running", "host": host, "pid": pid, "time": time.time()}) == "killed"


def fail_trial(study: Any, number: int) -> bool:
    """Mark a RUNNING trial FAIL; False when it had already ended (another process was first)."""
    import optuna

    try:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    return True


def retry_dead_trials(study: Any, verbose: bool = True) -> list[int]:
    """Fail the RUNNING trials whose process on this host is gone and queue their retries."""
    retried = []
    for trial in study.get_trials(deepcopy=False, states=states("RUNNING")):
        if is_dead(trial) and fail_trial(study, trial.number):
            retry_callback()(study, trial)
            retried.append(trial.number)
            log(f"trial {trial.number} was left running by a dead process: queued again to continue "
                f"in {trial.user_attrs.get('run_dir')}", verbose)  # fmt: skip
    return retried


def summarize(study: Any, url: str, target: int) -> dict:
    """Trials by state and the best trial with its parameters and run dir."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_state = {state.name.lower(): 0 for state in TrialState}
    for trial in trials:
        by_state[trial.state.name.lower()] += 1
    best = max(
        (t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: t.value, default=None,
    )  # fmt: skip
    return {
        "study": study.study_name, "storage": redact(url), "trials": by_state, "target": target,
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else best.value,
        "best_params": None if best is None else best.params,
        "best_run_dir": None if best is None else best.user_attrs.get("run_dir"),
    }  # fmt: skip
