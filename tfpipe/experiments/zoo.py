"""The RUNS file of ``tfpipe launch``: the model zoo as a list of runs, checked whole before anything starts.

::

    runs:
      - name: sq-384
        config: configs/reference.yaml
        overrides: [model.d_model=384, seed=1]
      - sweep: {study: mlp-lr, storage: "sqlite:///sweeps/mlp.db", best: 3}
        overrides: [epochs=8]          # on top of each trial's own overrides

A ``config`` entry is one run named ``name``. A ``sweep`` entry expands into the best ``best``
COMPLETE trials of an Optuna study (by value, in the study's direction), each a run named
``{study}-trial-NNNN`` with the trial's user attributes ``config`` (a config path) and ``overrides``
(a list of ``key=value``), then the entry's own overrides. Every run trains in
``{runs_dir}/{name}``; its config's ``name`` is the run's name. ``storage`` is an Optuna storage URL
(``sqlite:///file.db``, ``postgresql://...``) or a journal file (``journal:PATH`` or a plain path).

Any problem (a missing key, a duplicate name, a config that does not load with its overrides, a
study that does not exist) raises :class:`ZooError` naming the file and the entry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from tfpipe import storage
from tfpipe.storage.base import one_line

ENTRY_KEYS = {"name", "config", "overrides"}
SWEEP_KEYS = {"study", "storage", "best"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ZooError(ValueError):
    """A RUNS file that cannot be launched (the message names the file and the entry)."""


@dataclass
class RunSpec:
    """One run of the zoo: what ``python -m tfpipe.train`` gets."""

    name: str
    config: str
    """The config file (a path, gs://, or a config shipped with tfpipe, resolved to its path)."""
    run_dir: str
    overrides: list[str] = field(default_factory=list)
    """The overrides in order (trial's, then the entry's), then ``name=`` (``--run-dir`` comes last)."""
    origin: str = ""
    """Where it comes from: ``runs[i]`` or ``runs[i] trial N of study S``."""

    def train_args(self) -> list[str]:
        """Arguments of ``python -m tfpipe.train`` (``--quiet``: no progress bar in the logs)."""
        return ["--config", self.config, *self.overrides, "--run-dir", self.run_dir, "--quiet"]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "run_dir": self.run_dir,
                "overrides": self.overrides, "origin": self.origin}  # fmt: skip


def load_runs(path: str, runs_dir: str) -> list[RunSpec]:
    """The runs of RUNS file ``path``, each in ``{runs_dir}/{name}``; ZooError on any problem."""
    import yaml

    try:
        tree = yaml.safe_load(storage.read_bytes(path))
    except (OSError, RuntimeError) as err:  # StorageError is a RuntimeError
        raise ZooError(f"{path}: cannot read the runs file: {one_line(err)}") from None
    except yaml.YAMLError as err:
        raise ZooError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("runs"), list) or not tree["runs"]:
        raise ZooError(f"{path}: expected a mapping with a non-empty list 'runs:'")
    if set(tree) - {"runs"}:
        raise ZooError(f"{path}: unknown top-level keys {sorted(set(tree) - {'runs'})} (only 'runs')")
    specs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(tree["runs"]):
        where = f"{path}: runs[{i}]"
        for spec in _expand(entry, where, runs_dir):
            if spec.name in seen:
                raise ZooError(f"{where}: duplicate run name {spec.name!r} (also {seen[spec.name]})")
            seen[spec.name] = spec.origin
            specs.append(spec)
    for spec in specs:
        _check_config(spec, path)
    return specs


def _expand(entry: Any, where: str, runs_dir: str) -> list[RunSpec]:
    """One entry's runs (one for a config entry, up to ``best`` for a sweep entry)."""
    if not isinstance(entry, dict):
        raise ZooError(f"{where}: expected a mapping with name/config or sweep, got {entry!r}")
    overrides = _overrides(entry.get("overrides", []), where)
    origin = where.split(": ", 1)[-1]
    if "sweep" in entry:
        if set(entry) - {"sweep", "overrides"}:
            raise ZooError(f"{where}: a sweep entry has only 'sweep' and 'overrides', "
                           f"not {sorted(set(entry) - {'sweep', 'overrides'})}")  # fmt: skip
        return [
            _spec(name, config, [*trial_overrides, *overrides], runs_dir, f"{origin} {detail}", where)
            for name, config, trial_overrides, detail in sweep_trials(entry["sweep"], where)
        ]
    unknown, missing = set(entry) - ENTRY_KEYS, {"name", "config"} - set(entry)
    if unknown or missing:
        problem = f"unknown keys {sorted(unknown)}" if unknown else f"missing {' and '.join(sorted(missing))}"
        raise ZooError(f"{where}: {problem} (an entry has name, config, overrides; or sweep, overrides)")
    name, config = entry["name"], entry["config"]
    if not isinstance(config, str) or not config:
        raise ZooError(f"{where}: config must be a config path, got {config!r}")
    return [_spec(name, config, overrides, runs_dir, origin, where)]


def _overrides(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ZooError(f"{where}: overrides must be a list of 'key=value' strings, got {value!r}")
    return list(value)


def _spec(name: Any, config: str, overrides: list[str], runs_dir: str, origin: str, where: str) -> RunSpec:
    from tfpipe.config import config_path

    if not isinstance(name, str) or not NAME.match(name):
        raise ZooError(f"{where}: name {name!r} is not a folder name (letters, digits, '.', '_', '-')")
    return RunSpec(
        name, config_path(config), storage.join(runs_dir, name), [*overrides, f"name={name}"], origin
    )


def _check_config(spec: RunSpec, path: str) -> None:
    """The run's config must load with its overrides, as ``tfpipe train`` will load it."""
    from tfpipe.config import ConfigError, load_config

    try:
        load_config(spec.config, [*spec.overrides, f"run_dir={spec.run_dir}"])
    except ConfigError as err:
        raise ZooError(f"{path}: {spec.origin} ({spec.name}): {' '.join(str(err).split())}") from None


def open_study(study: str, storage_url: str) -> Any:
    """The Optuna study ``study`` in ``storage_url`` (a URL, or a journal file's path); KeyError if absent."""
    from tfpipe.experiments import require

    require("optuna", "a sweep entry of a RUNS file")
    import optuna

    if storage_url.startswith("sqlite:///") and not os.path.isfile(storage_url[len("sqlite:///") :]):
        raise KeyError(f"no database file {storage_url[len('sqlite:///') :]}")  # Optuna would create one
    from tfpipe.experiments.study import journal_path, open_journal

    path = journal_path(storage_url)
    if path is None:
        store: Any = storage_url
    else:
        if not os.path.isfile(path):
            raise KeyError(f"no journal file {path}")
        store = open_journal(path)
    return optuna.load_study(study_name=study, storage=store)


def sweep_trials(sweep: Any, where: str) -> list[tuple[str, str, list[str], str]]:
    """``(name, config, overrides, detail)`` of a sweep entry's best COMPLETE trials."""
    import optuna

    if not isinstance(sweep, dict) or set(sweep) != SWEEP_KEYS:
        raise ZooError(f"{where}: sweep must be a mapping with exactly study, storage, best; got {sweep!r}")
    from tfpipe.experiments.study import redact

    name, url, best = sweep["study"], sweep["storage"], sweep["best"]
    shown = redact(str(url))  # no password in messages or logs
    if not isinstance(best, int) or isinstance(best, bool) or best < 1:
        raise ZooError(f"{where}: sweep.best must be an integer >= 1, got {best!r}")
    try:
        study = open_study(str(name), str(url))
    except KeyError:
        raise ZooError(f"{where}: no study {name!r} in {shown}") from None
    except Exception as err:  # noqa: BLE001 - SQLAlchemy, journal and URL errors of every kind
        raise ZooError(
            f"{where}: cannot open study {name!r} in {shown}: {' '.join(str(err).split())}"
        ) from None
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not complete:
        raise ZooError(f"{where}: study {name!r} in {shown} has no COMPLETE trial")
    if len(complete) < best:  # as export-models refuses best:K with fewer runs: never fewer runs than asked
        raise ZooError(f"{where}: sweep.best is {best} but study {name!r} in {shown} has only "
                       f"{len(complete)} COMPLETE trial(s): lower best or finish more trials")  # fmt: skip
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    trials = []
    for trial in complete[:best]:
        detail = f"trial {trial.number} of study {name}"
        config, overrides = trial.user_attrs.get("config"), trial.user_attrs.get("overrides", [])
        if not isinstance(config, str) or not config:
            raise ZooError(f"{where}: {detail} has no user attribute 'config' (a config path)")
        trials.append(
            (f"{name}-trial-{trial.number:04d}", config, _overrides(overrides, f"{where} {detail}"), detail)
        )
    return trials
