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
* ``tfpipe sweep``, ``launch``, ``runs ls``, ``export-models``: the experiment commands
  (:mod:`tfpipe.cli_experiments`).

The command functions are imported only when their command runs: ``--help`` loads no TensorFlow.
(Just over 400 lines: the core commands' parsers stay together so their options read alike; the
experiment commands have their own module.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from collections.abc import Callable

from tfpipe.cli_experiments import COMMANDS as EXPERIMENT_COMMANDS
from tfpipe.cli_experiments import add_commands as add_experiment_commands
from tfpipe.cli_experiments import run_command as run_experiment_command
from tfpipe.cli_paths import check_path_arguments
from tfpipe.cliutil import ArgumentParser, quiet_native_logs, stop_on_signals, stopped_by_signal
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
    p.add_argument(
        "--grid", help="grid-info.nc the truth carries for tfpipe score --metric climsim (default: "
        "DATA/grid-info.nc, which data_prep.encode copies from the raw tree)",
    )  # fmt: skip


def _add_score(sub) -> None:
    """``tfpipe score``."""
    p = sub.add_parser(
        "score", help="R² of a prediction file on a truth file, with tables and a heat map",
        description="The Kaggle LEAP score (R² per target, averaged; zero-weight targets count as 1) of a "
        "prediction file against a truth file (e.g. tfpipe export output), rows matched by sample_id. "
        "Writes per-target and per-level CSVs and an R² heat map, and names the worst targets.",
    )  # fmt: skip
    p.add_argument("--pred", required=True, help="predictions: parquet, sample_id + 368 targets in order")
    p.add_argument(
        "--truth", required=True,
        help="truth parquet (tfpipe export, or the truth of tfpipe predict --oof); its layout is the score's",
    )  # fmt: skip
    p.add_argument("--weights", help="sample_submission.csv with the per-target weights")
    p.add_argument("--out-dir", help="folder for the CSVs and the PNG (default: P.score beside P.parquet)")
    p.add_argument(
        "--metric", choices=["kaggle", "climsim"], default="kaggle",
        help="kaggle: the LEAP R²; climsim: also the ClimSim paper's R², RMSE, MAE and bias per variable and "
        "level (energy-flux weighted; needs whole time steps and a truth file from tfpipe export)",
    )  # fmt: skip
    p.add_argument(
        "--grid", help="grid-info.nc for --metric climsim; it wins over the grid the truth carries (tfpipe "
        "export embeds its data's grid-info.nc); a truth with no grid needs it",
    )  # fmt: skip


def _add_blend(sub) -> None:
    """``tfpipe blend``."""
    p = sub.add_parser(
        "blend", help="blend prediction files (equal, hill-climb, stack) or apply a blend",
        description="Fit a blend of several models' predictions on a truth file (usually out-of-fold "
        "predictions from tfpipe predict --oof) and write it with its spec, or --apply a saved spec to "
        "the same models' test predictions.",
    )  # fmt: skip
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--pred", nargs="+", help="prediction parquet files, one per model")
    inputs.add_argument(
        "--pred-dir", metavar="PRED",
        help="a folder of prediction files, one NAME.parquet per model (tfpipe predict --models --out-dir "
        "PRED); truth.parquet and *.truth.parquet there are not models",
    )  # fmt: skip
    p.add_argument(
        "--truth", help="truth parquet (needed to fit hill-climb and stack; default with --pred-dir: "
        "PRED/truth.parquet when there is one)",
    )  # fmt: skip
    p.add_argument(
        "--method", choices=["equal", "hill-climb", "stack"],
        help="equal weights; hill-climbing on R² (greedy, with replacement); or a stacking model",
    )  # fmt: skip
    p.add_argument("--per-group", action="store_true", help="hill-climb: weights per target variable")
    p.add_argument(
        "--objective", choices=["auto", "r2_train_var", "r2_near_constant_as_1", "r2"], default="auto",
        help="what hill-climb maximises (default auto: r2_train_var, R² with each target's training variance "
        "as denominator, when the truth of tfpipe predict --oof or --stats gives it; else the Kaggle R² with "
        "near-constant truth columns as 1; r2: the Kaggle R² of the rows as they are)",
    )  # fmt: skip
    p.add_argument("--stats", help="stats.json of the training data, for --objective r2_train_var")
    p.add_argument(
        "--stack-method", choices=["ridge", "mlp"], default="ridge", help="model of --method stack"
    )
    p.add_argument("--weights", help="sample_submission.csv with the per-target weights")
    p.add_argument(
        "--apply", metavar="SPEC",
        help="apply a saved OUT.blend.json to --pred (matched by file name = model name, else by order)",
    )  # fmt: skip
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


def _restores_signal_handlers(command: Callable[..., int]) -> Callable[..., int]:
    """``command`` with the caller's SIGTERM and SIGINT handlers put back when it returns: the handlers it
    installs (:func:`stop_on_signals`) are for a command line, not for a program that calls it in-process."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> int:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return command(*args, **kwargs)
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: installed outside Python, cannot be put back
                    try:
                        signal.signal(sig, handler)
                    except ValueError:  # not the main thread: the command installed nothing either
                        pass

    return run


def _overrides_anywhere(parser: ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """``key=value`` overrides after options (``--config F a=1 --trials 3 b=2``): argparse leaves the
    later ones in ``extra``; they join ``args.overrides`` in order. Anything else is an error."""
    if (
        extra
        and isinstance(getattr(args, "overrides", None), list)
        and not any(e.startswith("-") for e in extra)
    ):
        args.overrides.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")


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
    add_experiment_commands(sub)
    return check_path_arguments(parser)


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
    return check_path_arguments(p)


def predict_parser(prog: str = "tfpipe predict") -> ArgumentParser:
    """``tfpipe predict`` / ``python -m tfpipe.predict``."""
    p = ArgumentParser(prog=prog, description="Predict targets with a trained model; write parquet.")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--checkpoint",
        help="RUN/best.keras, RUN/checkpoints/ckpt-N (or RUN/ckpt-N), or RUN alone (= its best.keras)",
    )  # fmt: skip
    model.add_argument(
        "--models", metavar="MODELS",
        help="a model set (tfpipe export-models): every model in one pass over the data, into --out-dir",
    )  # fmt: skip
    p.add_argument("--data", default=None, help="encoded shards folder or a Kaggle test.csv")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="parquet file to write (local or gs://)")
    out.add_argument(
        "--out-dir",
        help="with --models: folder for one NAME.parquet per model (and truth.parquet with --oof)",
    )
    p.add_argument("--weights", default=None, help="sample_submission.csv with the per-target weights")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's batch size")
    p.add_argument("--oof", action="store_true", help="predict the run's validation data; also write truth")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="predict a shard set with missing shards (named on stderr)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    return check_path_arguments(p)


@_restores_signal_handlers
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
        from tfpipe.experiments.tracking import preflight

        preflight(config.tracking)  # before TensorFlow loads: a missing mlflow or a dead server at once
        from tfpipe.preflight import check_train_inputs

        check_train_inputs(config)  # and a bad data path or a missing stats.json
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
    except Exception:
        return _stopped_or_raise()
    print(json.dumps(summary))
    return 0


def _stopped_or_raise() -> int:
    """In an ``except`` block: the stop signal's exit code if one interrupted start-up (TensorFlow's
    import fails with ImportError then, see :func:`tfpipe.cliutil.stopped_by_signal`), else re-raise."""
    code = stopped_by_signal()
    if code is None:
        raise  # noqa: PLE0704 (called from an except block)
    return code


@_restores_signal_handlers
def predict_main(argv: list[str] | None = None, prog: str = "tfpipe predict") -> int:
    """Run ``tfpipe predict``: the JSON summary on stdout; exit 2 on a bad input."""
    stop_on_signals(prog)
    parser = predict_parser(prog)
    args = parser.parse_args(argv)
    if args.models and not args.out_dir:
        parser.error("--models writes one file per model: give --out-dir DIR, not --out")
    if args.checkpoint and not args.out:
        parser.error("--out-dir goes with --models; give --out FILE with --checkpoint")
    quiet_native_logs()
    from tfpipe import storage

    try:
        from tfpipe.preflight import check_predict_inputs

        check_predict_inputs(args.checkpoint, args.models, args.data, args.weights, args.allow_partial)
        if args.models:
            from tfpipe.experiments.predict_set import predict_models

            summary = predict_models(
                args.models, args.data, args.out_dir, args.weights, args.batch_size, args.oof,
                args.allow_partial, progress=not args.quiet,
            )  # fmt: skip
        else:
            from tfpipe.predict import predict

            summary = predict(
                args.checkpoint, args.data, args.out, args.weights, args.batch_size, args.oof,
                args.allow_partial, progress=not args.quiet,
            )  # fmt: skip
    except (ValueError, OSError, storage.StorageError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        return _stopped_or_raise()
    print(json.dumps(summary))
    return 0


def _run_score(args: argparse.Namespace) -> None:
    """``tfpipe score``: a summary line, the score's explanation, the ClimSim table, the JSON line."""
    from tfpipe.metrics import explanation_lines
    from tfpipe.score import score_files

    report = score_files(
        args.pred, args.truth, args.weights, args.out_dir, metric=args.metric, grid=args.grid
    )
    print(f"R² {report['r2']:.6f} over {report['n_targets']} {report['schema']} targets, {report['n']} rows")
    for line in explanation_lines(report):
        print(line)
    if "climsim" in report:
        if "grid_warning" in report["climsim"]:
            print(f"tfpipe score: warning: {report['climsim']['grid_warning']}", file=sys.stderr)
        print(f"ClimSim grid: {report['climsim']['grid']}")
        print("ClimSim metrics (energy-flux weighted, per grid column over time, then averaged; W/m²):")
        print(f"  {'variable':16s} {'R²':>9s} {'RMSE':>11s} {'MAE':>11s} {'bias':>11s}")
        for name, m in report["climsim"]["variables"].items():
            print(f"  {name:16s} {m['r2']:9.4f} {m['rmse']:11.4g} {m['mae']:11.4g} {m['bias']:11.4g}")
    print(json.dumps(report))


def _run_blend(args: argparse.Namespace) -> None:
    """``tfpipe blend``: the R² of the inputs and of the blend on stderr (with a truth), the JSON line."""
    from tfpipe.blend import BlendError, blend_files, blend_report_lines, prediction_dir

    if (args.apply is None) == (args.method is None):
        raise BlendError("give either --method (to fit a blend) or --apply SPEC.json (to reuse one)")
    preds, truth = args.pred, args.truth
    if args.pred_dir is not None:
        preds, truth = prediction_dir(args.pred_dir, args.out, truth)
    report = blend_files(
        preds,
        args.out,
        truth,
        args.method or "equal",
        args.per_group,
        args.weights,
        args.stack_method,
        args.apply,
        args.spec,
        by_name=args.pred_dir is not None,
        objective=args.objective,
        stats=args.stats,
    )
    for line in blend_report_lines(report):
        print(line, file=sys.stderr)
    print(json.dumps(report))


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


@_restores_signal_handlers
def main(argv: list[str] | None = None) -> int:
    """The ``tfpipe`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        return train_main(argv[1:], prog="tfpipe train")
    if argv and argv[0] == "predict":
        return predict_main(argv[1:], prog="tfpipe predict")
    stop_on_signals("tfpipe")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _overrides_anywhere(parser, args, extra)
    quiet_native_logs()  # the demo predicts in this process: no XLA start-up lines in its output
    try:
        if args.command == "demo":
            from tfpipe.demo import run_demo

            print(json.dumps(run_demo(args.workdir, args.days, args.seed, quiet=args.quiet)))
        elif args.command == "export":
            from tfpipe.export import export_parquet

            print(json.dumps(export_parquet(args.data, args.out, args.allow_partial, args.grid)))
        elif args.command == "score":
            _run_score(args)
        elif args.command == "blend":
            _run_blend(args)
        elif args.command == "schema":
            _print_schema(args.name, args.columns)
        elif args.command in EXPERIMENT_COMMANDS:
            return run_experiment_command(args)
    except BrokenPipeError:  # e.g. `tfpipe schema --columns | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
    except (ValueError, OSError, RuntimeError) as err:  # RuntimeError: storage.StorageError among others
        command = " ".join(filter(None, [args.command, getattr(args, "runs_command", None)]))
        print(f"tfpipe {command}: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        return _stopped_or_raise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
