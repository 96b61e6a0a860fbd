"""The experiment commands of ``tfpipe``: their parsers and the functions that run them.

* ``tfpipe sweep --config FILE [key=value ...] --space SPACE.yaml --trials N --study NAME``: an Optuna
  study of training runs (:func:`tfpipe.experiments.sweep.run_sweep`).
* ``tfpipe launch --runs RUNS.yaml [--engine local|ray]``: train a list of runs (the zoo) in parallel
  (:func:`tfpipe.experiments.launch.launch`).
* ``tfpipe runs ls DIR [--sort best_r2|last_r2|name|state] [--json]``: the runs under a folder
  (:mod:`tfpipe.experiments.runs_table`).
* ``tfpipe export-models --runs DIR --select best:K --out MODELS``: a model set of the chosen runs
  (:func:`tfpipe.experiments.export_models.export_models`); ``tfpipe predict --models MODELS
  --out-dir PRED`` predicts with all of them in one pass over the data.

:mod:`tfpipe.cli.main` adds these parsers (:func:`add_commands`) and hands a parsed command here
(:func:`run_command`). Optuna, Ray, MLflow and TensorFlow are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from tfpipe.console import ArgumentParser

COMMANDS = ("sweep", "launch", "runs", "export-models")


def add_commands(sub) -> None:
    """Add the experiment commands to the ``tfpipe`` sub-parsers."""
    _add_sweep(sub)
    _add_launch(sub)
    _add_runs(sub)
    _add_export_models(sub)


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed experiment command ``args.command``; its exit code."""
    if args.command == "sweep":
        _run_sweep(args)
    elif args.command == "launch":
        return _run_launch(args)
    elif args.command == "runs":
        _run_runs(args)
    elif args.command == "export-models":
        _run_export_models(args)
    else:
        raise ValueError(f"not an experiment command: {args.command}")
    return 0


def _add_sweep(sub) -> None:
    """``tfpipe sweep``."""
    from tfpipe.experiments.study import PRUNERS, SAMPLERS

    p = sub.add_parser(
        "sweep", help="an Optuna hyper-parameter study whose trials are tfpipe train runs",
        description="Sample the search space, train each trial as a child process in "
        "RUNS_DIR/STUDY/trial-NNNN, report every sub-epoch's validation R² to the pruner and maximise the "
        "best R². Several processes (or machines with one database --storage) share a study; re-running "
        "the command resumes it, and a trial left by a "
        "killed process continues from its checkpoint. The last stdout line is a JSON summary.",
    )  # fmt: skip
    p.add_argument("--config", required=True, help="YAML config (a path, gs://, or tiny / reference)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every trial")
    p.add_argument(
        "--space", required=True, metavar="SPACE.yaml",
        help="search space: dotted config key -> {type: float|int|categorical, ...} (docs/sweeps.md)",
    )  # fmt: skip
    p.add_argument(
        "--trials",
        type=int,
        required=True,
        metavar="N",
        help="the study ends with N COMPLETE + PRUNED trials",
    )
    p.add_argument(
        "--study", required=True, metavar="NAME", help="the same name and storage join or resume it"
    )
    p.add_argument(
        "--storage", default="sweeps.journal", metavar="URL",
        help="an Optuna journal file (PATH or journal:PATH) for sweep processes of one machine; a database "
        "URL: sqlite:///FILE, or postgresql://user:pass@host/db for several machines",
    )  # fmt: skip
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="cmaes needs cmaes, gp needs torch")
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="its steps are the sub-epochs")
    p.add_argument(
        "--runs-dir",
        default="runs/sweeps",
        metavar="DIR",
        help="trials train in DIR/NAME/trial-NNNN (or gs://)",
    )
    p.add_argument("--seed", type=int, default=None, metavar="S", help="sampler seed (+ the trials so far)")
    p.add_argument(
        "--heartbeat-interval", type=int, default=60, metavar="S",
        help="seconds between a trial's heartbeats; a trial silent for 2 S is retried by the next process",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _run_sweep(args: argparse.Namespace) -> None:
    """``tfpipe sweep``: progress lines on stderr, the JSON summary on stdout."""
    from tfpipe.experiments.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        args.config, args.space, args.trials, args.study, list(args.overrides), args.storage, args.sampler,
        args.pruner, args.runs_dir, args.seed, args.heartbeat_interval, not args.quiet,
    )  # fmt: skip
    try:
        print(json.dumps(run_sweep(spec)))
    except KeyboardInterrupt:
        print(
            "tfpipe sweep: aborted (Ctrl-C twice); the trial continues with the next tfpipe sweep",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


def _add_launch(sub) -> None:
    """``tfpipe launch``."""
    p = sub.add_parser(
        "launch", help="train a zoo of runs in parallel (local slots or a Ray cluster), with retries",
        description="Train every run of a RUNS file, each as python -m tfpipe.train in RUNS_DIR/NAME: "
        "named configs with overrides, and the best trials of Optuna studies. Finished runs are skipped; "
        "a trainer that dies is retried and resumes from its run dir. Progress on stderr, a JSON summary "
        "last on stdout; exit 0 when every run finished, 1 otherwise.",
    )  # fmt: skip
    p.add_argument(
        "--runs", required=True, metavar="RUNS.yaml",
        help="runs: a list of {name, config, overrides} and {sweep: {study, storage, best}, overrides}",
    )  # fmt: skip
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where the runs train")
    p.add_argument(
        "--address", default=None,
        help="ray: auto or HOST:PORT of a running cluster (default: RAY_ADDRESS, else a new local Ray)",
    )  # fmt: skip
    p.add_argument(
        "--gpus-per-run", type=int, default=None, metavar="N",
        help="GPUs of each run (default: 1 where GPUs are visible or the Ray cluster has some, else 0)",
    )  # fmt: skip
    p.add_argument("--cpus-per-run", type=int, default=2, metavar="N", help="CPUs of each run")
    p.add_argument(
        "--slots", type=int, default=None, metavar="N",
        help="local: runs at once (default: one per GPU group, else CPUs // --cpus-per-run, at least 1)",
    )  # fmt: skip
    p.add_argument(
        "--max-retries", type=int, default=2, metavar="N",
        help="attempts after the first when a trainer dies (exit code 2, a bad input, is not retried)",
    )  # fmt: skip
    p.add_argument("--runs-dir", default="runs/zoo", help="each run trains in RUNS_DIR/NAME (local or gs://)")
    p.add_argument(
        "--dry-run", action="store_true", help="check the RUNS file, print the runs, train nothing"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _run_launch(args: argparse.Namespace) -> int:
    """``tfpipe launch``: progress on stderr, the JSON summary; 0 if every run finished, else 1."""
    from tfpipe.console import terminal_stderr
    from tfpipe.experiments.launch import LaunchOptions, launch
    from tfpipe.experiments.zoo import load_runs

    specs = load_runs(args.runs, args.runs_dir)
    if args.dry_run:
        print(json.dumps({"runs_dir": args.runs_dir, "runs": [spec.to_dict() for spec in specs]}))
        return 0
    options = LaunchOptions(
        args.engine, args.address, args.gpus_per_run, args.cpus_per_run, args.slots, args.max_retries
    )
    report = launch(specs, options, args.runs_dir, None if args.quiet else terminal_stderr())
    print(json.dumps(report))
    if "stopped_by" in report:
        import signal

        return 128 + signal.Signals[report["stopped_by"]].value
    return 0 if report["finished"] == report["total"] else 1


def _add_runs(sub) -> None:
    """``tfpipe runs ls``."""
    p = sub.add_parser(
        "runs", help="list the training runs under a folder (tfpipe runs ls DIR)",
        description="Inspect training runs from their run dirs' files (no database needed).",
    )  # fmt: skip
    runs_sub = p.add_subparsers(
        dest="runs_command", metavar="COMMAND", required=True, parser_class=ArgumentParser
    )
    ls = runs_sub.add_parser(
        "ls", help="every run under DIR: differing config keys, best and last R², checkpoints, status",
        description="Every run dir at or below DIR (local or gs://) as a table: the run's folder, the config "
        "keys that differ between the runs, the best and the last validation R², checkpoints done of those "
        "planned, and the status (finished, running, stopped: reason, killed, failed: error; resumable "
        "where re-running the same tfpipe train command continues it). The last line is a JSON summary.",
    )  # fmt: skip
    ls.add_argument("dir", metavar="DIR", help="a folder of run dirs (or one run dir)")
    ls.add_argument(
        "--sort", choices=["best_r2", "last_r2", "name", "state"], default="best_r2",
        help="row order: best_r2 and last_r2 highest first, name (the folder), state",
    )  # fmt: skip
    ls.add_argument("--json", action="store_true", help="print one JSON list of objects instead of the table")


def _run_runs(args: argparse.Namespace) -> None:
    """``tfpipe runs ls``: the table and a JSON summary line, or (--json) one JSON list."""
    from tfpipe.experiments.runs_table import list_runs, runs_json, summary, table_lines

    runs = list_runs(args.dir, args.sort)
    if args.json:
        print(json.dumps(runs_json(runs, args.dir)))
        return
    print("\n".join(table_lines(runs, args.dir)))
    print(json.dumps(summary(runs, args.dir)))


def _add_export_models(sub) -> None:
    """``tfpipe export-models``."""
    p = sub.add_parser(
        "export-models", help="copy the best runs' models into a model set folder",
        description="Copy the chosen runs' best.keras (with config.yaml and stats.json) into MODELS/ as "
        "NAME.keras, NAME.config.yaml, NAME.stats.json (NAME: the run folder below --runs), then write "
        "the index MODELS/models.json last. tfpipe predict --models MODELS predicts with the whole set.",
    )  # fmt: skip
    p.add_argument("--runs", required=True, help="folder of run dirs (local or gs://), searched recursively")
    p.add_argument(
        "--select", required=True, metavar="best:K|NAME[,NAME...]",
        help="best:K: the K runs with the highest --metric; or run names (folder names) in set order",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="the model set folder to write (local or gs://)")
    p.add_argument(
        "--metric", default="best_r2", choices=["best_r2", "last_r2"],
        help="what best:K ranks by: the best or the latest validation R²",
    )  # fmt: skip


def _run_export_models(args: argparse.Namespace) -> None:
    """``tfpipe export-models``: one line per model on stderr, the JSON line."""
    from tfpipe.experiments.export_models import export_models

    summary = export_models(args.runs, args.select, args.out, args.metric)
    for name, value in zip(summary["models"], summary[args.metric], strict=True):
        print(f"{name}: {args.metric} {value}", file=sys.stderr)
    print(json.dumps(summary))
