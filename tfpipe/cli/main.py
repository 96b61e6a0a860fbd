"""The ``tfpipe`` command: every sub-command's arguments are parsed here and handed to a typed function.

* ``tfpipe demo [--workdir DIR]``: the whole chain on synthetic data (:func:`tfpipe.demo.run_demo`).
* ``tfpipe train --config FILE [key=value ...]``: train in resumable sub-epoch chunks
  (:mod:`tfpipe.cli.train`); also ``python -m tfpipe.train``.
* ``tfpipe predict --checkpoint RUN --out P``: predict into parquet (:mod:`tfpipe.cli.predict`);
  also ``python -m tfpipe.predict``.
* ``tfpipe export --data D --out P``: encoded shards to parquet
  (:func:`tfpipe.evaluate.export.export_parquet`).
* ``tfpipe score --pred P --truth T``: the LEAP R² with tables and a heat map
  (:func:`tfpipe.evaluate.score.score_files`).
* ``tfpipe blend --pred A B .. --truth T --method M --out OUT``: blend predictions
  (:func:`tfpipe.blend.blend_files`).
* ``tfpipe schema [--name kaggle] [--columns]``: the variables and column order of a schema.
* ``tfpipe sweep``, ``launch``, ``runs ls``, ``export-models``: the experiment commands
  (:mod:`tfpipe.cli.experiments`).

The command functions are imported only when their command runs: ``--help`` loads no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfpipe.cli.experiments import COMMANDS as EXPERIMENT_COMMANDS
from tfpipe.cli.experiments import add_commands as add_experiment_commands
from tfpipe.cli.experiments import run_command as run_experiment_command
from tfpipe.cli.predict import predict_main
from tfpipe.cli.train import train_main
from tfpipe.console import (
    ArgumentParser,
    check_path_arguments,
    quiet_native_logs,
    restores_signal_handlers,
    stop_on_signals,
    stopped_or_raise,
)
from tfpipe.data.schema import SCHEMAS, get_schema


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


def _run_score(args: argparse.Namespace) -> None:
    """``tfpipe score``: a summary line, the score's explanation, the ClimSim table, the JSON line."""
    from tfpipe.evaluate.metrics import explanation_lines
    from tfpipe.evaluate.score import score_files

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


@restores_signal_handlers
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
            from tfpipe.evaluate.export import export_parquet

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
        return stopped_or_raise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
