"""``tfpipe train`` and ``python -m tfpipe.train``: arguments to :func:`tfpipe.train.loop.train`, the JSON
summary on stdout."""

from __future__ import annotations

from tfpipe.console import (
    ArgumentParser,
    check_path_arguments,
    quiet_native_logs,
    restores_signal_handlers,
    run_json_command,
    stop_on_signals,
)


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


@restores_signal_handlers
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

    def body() -> dict:
        config = load_config(args.config, overrides)
        from tfpipe.train.tracking import preflight

        preflight(config.tracking)  # before TensorFlow loads: a missing mlflow or a dead server at once
        from tfpipe.train.preflight import check_train_inputs

        check_train_inputs(config)  # and a bad data path or a missing stats.json
        if args.logical_cpus:
            from tfpipe.distribute import configure_logical_cpus

            configure_logical_cpus(args.logical_cpus)
        from tfpipe.train.loop import train

        return train(
            config, args.resume, args.allow_config_change, args.stop_after_sub_epochs, args.deterministic,
            args.strategy, 0 if args.quiet else 1, args.allow_data_change, args.allow_replica_change,
            not args.no_fallback,
        )  # fmt: skip

    # ValueError: TrainError, data, stats, manifest, plan and normalisation errors
    errors = (ConfigError, storage.StorageError, OSError, ValueError)
    return run_json_command(
        prog, body, errors, on_ctrl_c="aborted (Ctrl-C twice); the next run redoes the unfinished sub-epoch"
    )
