"""``tfpipe predict`` and ``python -m tfpipe.predict``: arguments to :func:`tfpipe.predict.predict` (or,
with ``--models``, :func:`tfpipe.experiments.predict_set.predict_models`), the JSON summary on stdout."""

from __future__ import annotations

from tfpipe.console import (
    ArgumentParser,
    check_path_arguments,
    quiet_native_logs,
    restores_signal_handlers,
    run_json_command,
    stop_on_signals,
)


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


@restores_signal_handlers
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

    def body() -> dict:
        check_predict_inputs(args.checkpoint, args.models, args.data, args.weights, args.allow_partial)
        if args.models:
            from tfpipe.experiments.predict_set import predict_models

            return predict_models(
                args.models, args.data, args.out_dir, args.weights, args.batch_size, args.oof,
                args.allow_partial, progress=not args.quiet,
            )  # fmt: skip
        from tfpipe.predict import predict

        return predict(
            args.checkpoint, args.data, args.out, args.weights, args.batch_size, args.oof,
            args.allow_partial, progress=not args.quiet,
        )  # fmt: skip

    return run_json_command(prog, body, (ValueError, OSError, storage.StorageError))


def check_predict_inputs(
    checkpoint: str | None, models: str | None, data: str | None, weights: str | None, allow_partial: bool
) -> None:
    """Before TensorFlow loads: the model (``.keras`` file, checkpoint or model set), the test data and
    the weights file, so that a typo is one line at once (the error ``predict`` would raise later)."""
    from tfpipe import storage
    from tfpipe.data.manifest import read_manifests
    from tfpipe.predict.loading import PredictError, resolve_checkpoint

    if checkpoint is not None:
        run_dir, model = resolve_checkpoint(checkpoint)
        if model.endswith(".keras") and not storage.exists(model):
            raise PredictError(f"{model}: no such model file")
        if not model.endswith(".keras") and not storage.exists(model + ".index"):
            raise PredictError(f"{model}: no such checkpoint ({model}.index is missing)")
    if models is not None:
        from tfpipe.experiments.model_set import read_index

        read_index(models)
    if data is not None:
        if data.endswith(".csv"):
            if not storage.exists(data):
                raise PredictError(f"{data}: no such file")
        else:
            read_manifests(data, allow_partial=allow_partial)
    if weights is not None and not storage.exists(weights):
        raise PredictError(f"{weights}: no such file (--weights)")
