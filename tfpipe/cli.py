"""The ``tfpipe`` command: one entry point, one sub-command per pipeline stage.

Stages that exist so far:

* ``tfpipe demo [--workdir DIR]``: generate the built-in synthetic ClimSim data and report
  what was written (the later stages join the demo as they land).
* ``tfpipe schema [--name kaggle] [--columns]``: the variables and column order of a schema.
* ``tfpipe score --pred P --truth T``: the LEAP R² with tables and a heat map (:mod:`tfpipe.score`).
* ``tfpipe blend --pred A B .. --truth T --method M --out OUT``: blend predictions (:mod:`tfpipe.blend`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfpipe.cliutil import ArgumentParser, quiet_native_logs, stop_on_signals
from tfpipe.schema import SCHEMAS, get_schema


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="tfpipe", description="ClimSim raw data to a scored LEAP submission.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

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

    # train and predict own their parsers (tfpipe/train.py, tfpipe/predict.py); main() hands over.
    sub.add_parser("train", help="train a model in resumable sub-epoch chunks (tfpipe train --help)")
    sub.add_parser("predict", help="predict with a trained model into parquet (tfpipe predict --help)")

    p = sub.add_parser(
        "export", help="decode encoded shards into one parquet file",
        description="Decode a folder of encoded shards into one parquet file: sample_id, ncol, time, the "
        "inputs and the targets. With targets it serves as the truth file of tfpipe score and tfpipe blend.",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="folder of encoded shards (local or gs://)")
    p.add_argument("--out", required=True, help="parquet file to write")
    p.add_argument("--allow-partial", action="store_true", help="export a shard set with missing shards")

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

    p = sub.add_parser(
        "schema", help="print a schema's variables or columns",
        description="The variables of a layout (inputs, targets, zero-weight targets) as JSON, or its "
        "flattened column names in order (--columns).",
    )  # fmt: skip
    p.add_argument("--name", default="kaggle", choices=sorted(SCHEMAS), help="the layout")
    p.add_argument("--columns", action="store_true", help="one flattened column per line")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("train", "predict"):
        from importlib import import_module

        return import_module(f"tfpipe.{argv[0]}").main(argv[1:], prog=f"tfpipe {argv[0]}")
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
            schema = get_schema(args.name)
            if args.columns:
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
    except BrokenPipeError:  # e.g. `tfpipe schema --columns | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
    except (ValueError, OSError, RuntimeError) as err:
        print(f"tfpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
