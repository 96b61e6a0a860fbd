"""The ``tfpipe`` command: every sub-command's arguments are parsed here and handed to a typed function.

* ``tfpipe demo [--workdir DIR]``: the whole chain on synthetic data (:func:`tfpipe.demo.run_demo`).
* ``tfpipe train --config FILE [key=value ...]``: train in resumable sub-epoch chunks
  (:func:`tfpipe.train.train`); also ``python -m tfpipe.train``.
* ``tfpipe predict --checkpoint RUN --out P``: predict into parquet (:func:`tfpipe.predict.predict`);
  also ``python -m tfpipe.predict``.
* ``tfpipe export --data D --out P``: encoded shards to parquet (:func:`tfpipe.export.export_parquet`).
* ``tfpipe score --pred P --truth T``: the LEAP R² with tables and a heat map
  (:func:`tfpipe.score.score_files`).
* ``tfpipe blend --pred A B .. --truth T --method M --out OUT``: blend predictions
  (:func:`tfpipe.blend.blend_files`).
* ``tfpipe schema [--name kaggle] [--columns]``: the variables and column order of a schema.
* ``tfpipe launch --runs RUNS.yaml``: train a zoo of runs in parallel, on local slots or a Ray
  cluster (:func:`tfpipe.experiments.launch.launch`).

The command functions are imported only when their command runs: ``--help`` loads no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfpipe.cliutil import ArgumentParser, quiet_native_logs, stop_on_signals
from tfpipe.schema import SCHEMAS, get_schema


def _add_demo(sub) -> None:
    """``tfpipe demo``."""
    p = sub.add_parser(
        "demo", help="run the pipeline on built-in synthetic data",
        description="The whole chain on synthetic data: synthesise, encode (one shard killed and re-run), "
        "statistics, train two models (one interrupted and resumed), predict, score, blend, report. "
        "Re-running reuses what is complete.",
    )  # fmt: skip
    p.add_argument("--workdir", default="tfpipe-demo", help="folder for everything the demo writes")
    p.add_argument("--days", type=float, default=1.0, help="days of synthetic training data (72 steps each)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weather")
    p.add_argument("--quiet", action="store_true", help="only the final JSON line")


def _add_export(sub) -> None:
    """``tfpipe export``."""
    p = sub.add_parser(
        "export", help="decode encoded shards into one parquet file",
        description="Decode a folder of encoded shards into one parquet file: sample_id, ncol, time, the "
        "inputs and the targets. With targets it serves as the truth file of tfpipe score and tfpipe blend.",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="folder of encoded shards (local or gs://)")
    p.add_argument("--out", required=True, help="parquet file to write")
    p.add_argument("--allow-partial", action="store_true", help="export a shard set with missing shards")


def _add_score(sub) -> None:
    """``tfpipe score``."""
    p = sub.add_parser(
        "score", help="R² of a prediction file on a truth file, with tables and a heat map",
        description="The Kaggle LEAP score (R² per target, averaged; zero-weight targets count as 1) of a "
        "prediction file against a truth file (e.g. tfpipe export output), rows matched by sample_id. "
        "Writes per-target and per-level CSVs and an R² heat map, and names the worst targets.",
    )  # fmt: skip
    p.add_argument("--pred", required=True, help="predictions: parquet, sample_id + 368 targets in order")
    p.add_argument("--truth", required=True, help="truth parquet with sample_id and the 368 targets")
    p.add_argument("--weights", help="sample_submission.csv with the per-target weights")
    p.add_argument("--out-dir", help="folder for the CSVs and the PNG (default: P.score beside P.parquet)")
    p.add_argument(
        "--metric", choices=["kaggle", "climsim"], default="kaggle",
        help="kaggle: the LEAP R²; climsim: also the ClimSim paper's R², RMSE, MAE and bias per variable and "
        "level (energy-flux weighted; needs whole time steps and a truth file from tfpipe export)",
    )  # fmt: skip
    p.add_argument("--grid", help="grid-info.nc for --metric climsim (default: the built-in ne4pg2 grid)")


def _add_blend(sub) -> None:
    """``tfpipe blend``."""
    p = sub.add_parser(
        "blend", help="blend prediction files (equal, hill-climb, stack) or apply a blend",
        description="Fit a blend of several models' predictions on a truth file (usually out-of-fold "
        "predictions from tfpipe predict --oof) and write it with its spec, or --apply a saved spec to "
        "the same models' test predictions.",
    )  # fmt: skip
    p.add_argument("--pred", nargs="+", required=True, help="prediction parquet files, one per model")
    p.add_argument("--truth", help="truth parquet (needed to fit hill-climb and stack)")
    p.add_argument(
        "--method", choices=["equal", "hill-climb", "stack"],
        help="equal weights; hill-climbing on R² (greedy, with replacement); or a stacking model",
    )  # fmt: skip
    p.add_argument("--per-group", action="store_true", help="hill-climb: weights per target variable")
    p.add_argument(
        "--stack-method", choices=["ridge", "mlp"], default="ridge", help="model of --method stack"
    )
    p.add_argument("--weights", help="sample_submission.csv with the per-target weights")
    p.add_argument("--apply", metavar="SPEC", help="apply a saved OUT.blend.json to --pred (same order)")
    p.add_argument("--spec", help="where to write the blend spec (default: OUT.blend.json)")
    p.add_argument("--out", required=True, help="blended predictions parquet to write")


def _add_schema(sub) -> None:
    """``tfpipe schema``."""
    p = sub.add_parser(
        "schema", help="print a schema's variables or columns",
        description="The variables of a layout (inputs, targets, zero-weight targets) as JSON, or its "
        "flattened column names in order (--columns).",
    )  # fmt: skip
    p.add_argument("--name", default="kaggle", choices=sorted(SCHEMAS), help="the layout")
    p.add_argument("--columns", action="store_true", help="one flattened column per line")


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


def build_parser() -> ArgumentParser:
    """The ``tfpipe`` parser; ``train`` and ``predict`` are listed, their own parsers are below."""
    parser = ArgumentParser(prog="tfpipe", description="ClimSim raw data to a scored LEAP submission.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    _add_demo(sub)
    # train and predict parse their arguments with train_parser / predict_parser: main() hands over
    # (train takes key=value overrides after options, which needs parse_intermixed_args, and both
    # also run as python -m tfpipe.train / tfpipe.predict under that name).
    sub.add_parser("train", help="train a model in resumable sub-epoch chunks (tfpipe train --help)")
    sub.add_parser("predict", help="predict with a trained model into parquet (tfpipe predict --help)")
    _add_export(sub)
    _add_score(sub)
    _add_blend(sub)
    _add_schema(sub)
    _add_launch(sub)
    return parser


def train_parser(prog: str = "tfpipe train") -> ArgumentParser:
    """``tfpipe train`` / ``python -m tfpipe.train``."""
    p = ArgumentParser(prog=prog, description="Train a model in resumable sub-epoch chunks.")
    p.add_argument(
        "--config",
        default=None,
        help="YAML config: a path, gs://, or a config shipped with tfpipe (tiny, reference)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.learning_rate=3e-4"
    )
    p.add_argument("--resume", default=None, help="ckpt-N or latest (default: latest if the run dir has any)")
    p.add_argument("--run-dir", default=None, help="where checkpoints and logs go (local or gs://)")
    p.add_argument("--time-budget", default=None, help="stop after the last sub-epoch that fits, e.g. 8h30m")
    p.add_argument(
        "--stop-after-sub-epochs", type=int, default=None, help="end this session after N sub-epochs"
    )
    p.add_argument(
        "--allow-config-change", action="store_true",
        help="resume with changed epochs, learning rate, ... (keys listed in docs/configuration.md)",
    )  # fmt: skip
    p.add_argument(
        "--allow-data-change", action="store_true",
        help="resume although the training files or the statistics file differ from the run's",
    )  # fmt: skip
    p.add_argument(
        "--allow-replica-change", action="store_true",
        help="resume on another number of replicas (the remaining steps are re-planned)",
    )  # fmt: skip
    p.add_argument(
        "--no-fallback", action="store_true",
        help="fail when the latest checkpoint cannot be restored instead of resuming the newest older one",
    )  # fmt: skip
    p.add_argument("--deterministic", action="store_true", help="deterministic ops and data order")
    p.add_argument(
        "--strategy", default="auto", help="auto, tpu, mirrored, multiworker, default, cpu-mirrored"
    )
    p.add_argument(
        "--logical-cpus", type=int, default=None, metavar="N",
        help="split the CPU into N logical devices first (with --strategy cpu-mirrored: N replicas)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def predict_parser(prog: str = "tfpipe predict") -> ArgumentParser:
    """``tfpipe predict`` / ``python -m tfpipe.predict``."""
    p = ArgumentParser(prog=prog, description="Predict targets with a trained model; write parquet.")
    p.add_argument(
        "--checkpoint", required=True,
        help="RUN/best.keras, RUN/checkpoints/ckpt-N (or RUN/ckpt-N), or RUN alone (= its best.keras)",
    )  # fmt: skip
    p.add_argument("--data", default=None, help="encoded shards folder or a Kaggle test.csv")
    p.add_argument("--out", required=True, help="parquet file to write (local or gs://)")
    p.add_argument("--weights", default=None, help="sample_submission.csv with the per-target weights")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's batch size")
    p.add_argument("--oof", action="store_true", help="predict the run's validation data; also write truth")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="predict a shard set with missing shards (named on stderr)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    return p


def train_main(argv: list[str] | None = None, prog: str = "tfpipe train") -> int:
    """Run ``tfpipe train``: the JSON summary on stdout; exit 2 on a bad input, 130 on Ctrl-C twice."""
    stop_on_signals(prog)  # until the loop installs its own: SIGTERM during start-up is one line
    args = train_parser(prog).parse_intermixed_args(argv)  # key=value overrides may follow options
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.time_budget:
        overrides.append(f"time_budget={args.time_budget}")
    from tfpipe import storage
    from tfpipe.config import ConfigError, load_config

    quiet_native_logs()
    try:
        config = load_config(args.config, overrides)
        if args.logical_cpus:
            from tfpipe.distribute import configure_logical_cpus

            configure_logical_cpus(args.logical_cpus)
        from tfpipe.train.loop import train

        summary = train(
            config, args.resume, args.allow_config_change, args.stop_after_sub_epochs, args.deterministic,
            args.strategy, 0 if args.quiet else 1, args.allow_data_change, args.allow_replica_change,
            not args.no_fallback,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(
            f"{prog}: aborted (Ctrl-C twice); the next run redoes the unfinished sub-epoch", file=sys.stderr
        )
        return 130
    except (ConfigError, storage.StorageError, OSError, ValueError) as err:
        # ValueError: TrainError, data, stats, manifest, plan and normalisation errors
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def predict_main(argv: list[str] | None = None, prog: str = "tfpipe predict") -> int:
    """Run ``tfpipe predict``: the JSON summary on stdout; exit 2 on a bad input."""
    stop_on_signals(prog)
    args = predict_parser(prog).parse_args(argv)
    quiet_native_logs()
    from tfpipe import storage
    from tfpipe.predict import predict

    try:
        summary = predict(
            args.checkpoint, args.data, args.out, args.weights, args.batch_size, args.oof, args.allow_partial,
            progress=not args.quiet,
        )  # fmt: skip
    except (ValueError, OSError, storage.StorageError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _run_score(args: argparse.Namespace) -> None:
    """``tfpipe score``: a summary line, the score's explanation, the ClimSim table, the JSON line."""
    from tfpipe.metrics import explanation_lines
    from tfpipe.score import score_files

    report = score_files(
        args.pred, args.truth, args.weights, args.out_dir, metric=args.metric, grid=args.grid
    )
    print(f"R² {report['r2']:.6f} over {get_schema('kaggle').n_targets} targets, {report['n']} rows")
    for line in explanation_lines(report):
        print(line)
    if "climsim" in report:
        print("ClimSim metrics (energy-flux weighted, per grid column over time, then averaged; W/m²):")
        print(f"  {'variable':16s} {'R²':>9s} {'RMSE':>11s} {'MAE':>11s} {'bias':>11s}")
        for name, m in report["climsim"]["variables"].items():
            print(f"  {name:16s} {m['r2']:9.4f} {m['rmse']:11.4g} {m['mae']:11.4g} {m['bias']:11.4g}")
    print(json.dumps(report))


def _run_blend(args: argparse.Namespace) -> None:
    """``tfpipe blend``: the R² of the inputs and of the blend on stderr (with a truth), the JSON line."""
    from tfpipe.blend import BlendError, blend_files

    if (args.apply is None) == (args.method is None):
        raise BlendError("give either --method (to fit a blend) or --apply SPEC.json (to reuse one)")
    report = blend_files(
        args.pred,
        args.out,
        args.truth,
        args.method or "equal",
        args.per_group,
        args.weights,
        args.stack_method,
        args.apply,
        args.spec,
    )
    if "r2_blend" in report:
        for name, r2 in report["r2_inputs"].items():
            print(f"{name}: R² {r2:.6f}", file=sys.stderr)
        print(f"blend ({report['method']}): R² {report['r2_blend']:.6f}", file=sys.stderr)
    print(json.dumps(report))


def _run_launch(args: argparse.Namespace) -> int:
    """``tfpipe launch``: progress on stderr, the JSON summary; 0 if every run finished, else 1."""
    from tfpipe.cliutil import terminal_stderr
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


def _print_schema(name: str, columns: bool) -> None:
    """``tfpipe schema``: the flattened columns one per line, or the variables as JSON."""
    schema = get_schema(name)
    if columns:
        print("\n".join(schema.columns))
    else:
        print(
            json.dumps(
                {
                    "name": schema.name,
                    "inputs": schema.inputs,
                    "targets": schema.targets,
                    "n_inputs": schema.n_inputs,
                    "n_targets": schema.n_targets,
                    "zero_weight_targets": schema.zero_weight_targets,
                },
                indent=1,
            )
        )


def main(argv: list[str] | None = None) -> int:
    """The ``tfpipe`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        return train_main(argv[1:], prog="tfpipe train")
    if argv and argv[0] == "predict":
        return predict_main(argv[1:], prog="tfpipe predict")
    stop_on_signals("tfpipe")
    args = build_parser().parse_args(argv)
    quiet_native_logs()  # the demo predicts in this process: no XLA start-up lines in its output
    try:
        if args.command == "demo":
            from tfpipe.demo import run_demo

            print(json.dumps(run_demo(args.workdir, args.days, args.seed, quiet=args.quiet)))
        elif args.command == "export":
            from tfpipe.export import export_parquet

            print(json.dumps(export_parquet(args.data, args.out, args.allow_partial)))
        elif args.command == "score":
            _run_score(args)
        elif args.command == "blend":
            _run_blend(args)
        elif args.command == "schema":
            _print_schema(args.name, args.columns)
        elif args.command == "launch":
            return _run_launch(args)
    except BrokenPipeError:  # e.g. `tfpipe schema --columns | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
    except (ValueError, OSError, RuntimeError) as err:  # RuntimeError: storage.StorageError among others
        print(f"tfpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
