"""Training in resumable sub-epoch chunks: ``tfpipe train --config FILE [key=value ...] [--resume ...]``.

One loop for every model and strategy. After each sub-epoch: validation (R² per target on the
normalised and the physical scale, the Kaggle mean), logs (CSV, TensorBoard, optional MLflow) and a
checkpoint ``RUN/checkpoints/ckpt-N`` (N = sub-epochs done) written by ``tf.train.CheckpointManager``
with the model, the optimizer (slots, EMA, step) and ``ckpt-N.state.json`` (next epoch and sub-epoch,
seed, config hashes, best metric, wall time). ``--resume ckpt-N|latest`` restores all of it and
rebuilds the data plan, so the run continues where it stopped; a run directory that has checkpoints
resumes from the latest by default. The best model is kept (``RUN/best/``) and exported as
``RUN/best.keras``.

The per-replica forward and backward pass is compiled with XLA; the optimizer update runs in the
replica context outside XLA (Keras 3 under MirroredStrategy cannot compile it; TPUStrategy compiles
the whole step anyway).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from tfpipe import storage
from tfpipe.cliutil import ArgumentParser
from tfpipe.config import (
    ConfigError,
    TrainConfig,
    changed_fields,
    config_hash,
    config_to_dict,
    dump_config,
    load_config,
    parse_duration,
    resume_conflicts,
)

CHECKPOINTS = "checkpoints"
BEST = "best"


class TrainError(ValueError):
    """A run that cannot start or continue: bad resume target, config mismatch, unusable data."""


@dataclass
class RunState:
    """What a checkpoint records besides the variables (``ckpt-N.state.json``)."""

    checkpoint: int
    epoch: int
    """The next epoch to run."""
    sub_epoch: int
    """The next sub-epoch to run."""
    seed: int
    step: int
    model_hash: str
    data_hash: str
    best_metric: float | None
    best_checkpoint: int | None
    wall_time_s: float
    val: dict
    config: dict


class StreamingR2:
    """Per-target R² over batches in float64: sums of y, y², and (y - ŷ)²."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.sy = np.zeros(width)
        self.syy = np.zeros(width)
        self.sres = np.zeros(width)

    def update(self, truth: np.ndarray, pred: np.ndarray) -> None:
        truth = np.asarray(truth, np.float64)
        self.n += len(truth)
        self.sy += truth.sum(axis=0)
        self.syy += (truth**2).sum(axis=0)
        self.sres += ((truth - np.asarray(pred, np.float64)) ** 2).sum(axis=0)

    def r2(self) -> np.ndarray:
        """1 - SS_res/SS_tot; a constant target scores 1 if predicted exactly, else 0."""
        tot = np.maximum(self.syy - self.sy**2 / max(self.n, 1), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = 1.0 - self.sres / tot
        return np.where(tot > 0, r2, np.where(self.sres == 0, 1.0, 0.0))


# ------------------------------------------------------------------ run directory


def _ckpt_dir(run_dir: str) -> str:
    return storage.join(run_dir, CHECKPOINTS)


def _state_path(run_dir: str, n: int) -> str:
    return storage.join(_ckpt_dir(run_dir), f"ckpt-{n}.state.json")


def _read_state(run_dir: str, n: int) -> RunState:
    path = _state_path(run_dir, n)
    try:
        return RunState(**json.loads(storage.read_bytes(path).decode()))
    except (storage.StorageError, ValueError, TypeError) as err:
        raise TrainError(f"{path}: cannot read the checkpoint's state ({err})") from None


def _listed_checkpoints(folder: str) -> list[int]:
    """Numbers in a CheckpointManager's ``checkpoint`` index file (its commit marker)."""
    index = storage.join(folder, "checkpoint")
    if not storage.exists(index):
        return []
    text = storage.read_bytes(index).decode()
    return sorted({int(n) for n in re.findall(r'all_model_checkpoint_paths: ".*?ckpt-(\d+)"', text)})


def available_checkpoints(run_dir: str) -> list[int]:
    """Checkpoint numbers in the run directory that are complete (index, data and state present)."""
    return [n for n in _listed_checkpoints(_ckpt_dir(run_dir)) if storage.exists(_state_path(run_dir, n))]


class CheckpointMirror:
    """Where TensorFlow writes checkpoints: the run dir itself, or a local folder mirrored to a remote one.

    Object stores have no appends or renames, and the GCS emulator cannot take TF's checkpoint uploads,
    so for a ``gs://`` run dir TF saves locally and :meth:`push` uploads the new files, the
    ``checkpoint`` index last (the commit marker), then deletes what the manager rotated out.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.remote = storage.is_remote(run_dir)
        self.root = tempfile.mkdtemp(prefix="tfpipe-ckpt-") if self.remote else run_dir

    def local(self, sub: str) -> str:
        return os.path.join(self.root, sub)

    def pull(self, sub: str, n: int) -> None:
        """Fetch checkpoint ``n`` of ``sub`` and its index (remote run dirs only)."""
        if not self.remote:
            return
        os.makedirs(self.local(sub), exist_ok=True)
        for path in storage.list_files(storage.join(self.run_dir, sub)):
            name = path.rsplit("/", 1)[-1]
            if name == "checkpoint" or name.startswith(f"ckpt-{n}.") and not name.endswith(".state.json"):
                storage.download_file(path, os.path.join(self.local(sub), name))

    def push(self, sub: str, keep: list[int]) -> None:
        """Upload checkpoints ``keep`` of ``sub`` that the remote lacks, the index last; drop the others."""
        if not self.remote:
            return
        remote = storage.join(self.run_dir, sub)
        there = {p.rsplit("/", 1)[-1] for p in storage.list_files(remote)}
        for name in sorted(os.listdir(self.local(sub))):
            n = re.match(r"ckpt-(\d+)\.", name)
            if n and int(n[1]) in keep and name not in there:
                storage.upload_file(os.path.join(self.local(sub), name), storage.join(remote, name))
        storage.upload_file(os.path.join(self.local(sub), "checkpoint"), storage.join(remote, "checkpoint"))
        for name in there:
            n = re.match(r"ckpt-(\d+)\.", name)
            if n and int(n[1]) not in keep and not name.endswith(".state.json"):
                storage.delete(storage.join(remote, name), missing_ok=True)


def _resume_target(run_dir: str, resume: str | None) -> int | None:
    numbers = available_checkpoints(run_dir)
    if resume is None:
        if numbers:
            print(f"[train] {run_dir} has checkpoints: resuming from ckpt-{numbers[-1]}", file=sys.stderr)
            return numbers[-1]
        return None
    if resume == "latest":
        if not numbers:
            raise TrainError(f"--resume latest: {run_dir} has no checkpoints")
        return numbers[-1]
    name = os.path.basename(resume.rstrip("/"))
    if not name.startswith("ckpt-") or not name[5:].isdigit():
        raise TrainError(f"--resume {resume}: expected ckpt-N or latest")
    n = int(name[5:])
    if n not in numbers:
        have = ", ".join(f"ckpt-{k}" for k in numbers) or "none"
        raise TrainError(f"--resume {resume}: no such checkpoint in {run_dir} (available: {have})")
    return n


def _check_resume_config(state: RunState, config: TrainConfig, allow_change: bool) -> None:
    changed = changed_fields(state.config, config_to_dict(config))
    if not changed:
        return
    if not allow_change:
        raise TrainError(
            f"the config differs from the checkpoint's in {', '.join(changed)}; "
            "use --allow-config-change to continue with a changed epochs/learning rate/..."
        )
    conflicts = resume_conflicts(state.config, config_to_dict(config))
    if conflicts:
        raise TrainError(f"these changes would make the checkpoint invalid: {', '.join(conflicts)}")
    print(f"[train] resuming with changed config: {', '.join(changed)}", file=sys.stderr)


def export_keras(model, target: str) -> None:
    """Save ``model`` as a ``.keras`` file atomically (temporary file, then rename or upload)."""
    with storage.staged_output(target, suffix=".keras") as local:
        model.save(local)


# ------------------------------------------------------------------ the loop


def _with_demo_data(config: TrainConfig) -> TrainConfig:
    """Fill an empty data path with the built-in demo data (prepared once in the cache)."""
    if config.data.sources[0].path:
        return config
    from tfpipe.demo_data import prepare_demo_data

    path = prepare_demo_data()
    sources = [dataclasses.replace(config.data.sources[0], path=path), *config.data.sources[1:]]
    return dataclasses.replace(config, data=dataclasses.replace(config.data, sources=sources))


def _append_csv(path: str, row: dict) -> None:
    """Append one row to a CSV file, rewriting it atomically (small files; works on gs://)."""
    header = ",".join(row)
    line = ",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values())
    old = storage.read_bytes(path).decode() if storage.exists(path) else header + "\n"
    storage.write_bytes(path, (old + line + "\n").encode())


def train(config: TrainConfig, *args, **kwargs) -> dict:
    """Run (or continue) training; returns a summary dict. TrainError on unusable input.

    Arguments as :func:`_train`. Keras' global dtype policy is restored afterwards.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    try:
        return _train(config, *args, **kwargs)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _train(
    config: TrainConfig,
    resume: str | None = None,
    allow_config_change: bool = False,
    stop_after_sub_epochs: int | None = None,
    deterministic: bool = False,
    strategy: str = "auto",
    verbose: int = 1,
) -> dict:
    import keras
    import tensorflow as tf

    from tfpipe.data import (
        diagnose_read_error,
        make_dataset,
        make_predict_dataset,
        resolve_sources,
        sub_epoch_files,
        sub_epoch_steps,
    )
    from tfpipe.distribute import choose_strategy, set_precision
    from tfpipe.losses import total_loss
    from tfpipe.models import build_model
    from tfpipe.predict import physical_predictions
    from tfpipe.schedule import make_optimizer

    t_start = time.time()
    if deterministic:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, deterministic=True))
        keras.utils.set_random_seed(config.seed)
        tf.config.experimental.enable_op_determinism()
    config = _with_demo_data(config)
    run_dir = config.resolved_run_dir
    strat, kind = choose_strategy(strategy)
    policy = set_precision(config.precision, kind)
    replicas = strat.num_replicas_in_sync
    batch = config.data.batch_size * replicas

    sources = resolve_sources(config.data)
    norm = sources[0].normalizer
    schema = norm.schema
    data, seed, k_max = config.data, config.seed, config.data.sub_epochs
    group_masks = [_group_mask(schema, g) for g in config.finetune.groups]
    # (epoch, sub-epoch, fine-tune group or None) in order: the main epochs, then one epoch per group
    stages = [(e, k, None) for e in range(config.epochs) for k in range(k_max)] + [
        (config.epochs + g, k, g)
        for g in range(len(group_masks))
        for k in range(config.finetune.sub_epochs_per_group)
    ]
    plan = {(e, k): sub_epoch_steps(sources, data, seed, e, k, batch) for e, k, _ in stages}
    total_steps = max(1, sum(plan.values()))
    if min(plan.values()) < 1:
        raise TrainError(
            f"a sub-epoch has fewer samples than one global batch of {batch}: use less batch_size"
        )
    loss_cfg = dataclasses.replace(config.loss, n_profiles=len(schema.target_profiles))

    start = _resume_target(run_dir, resume)
    model_hash, data_hash = config_hash(config, "model"), config_hash(config, "data")
    best_metric, best_ckpt, wall_before, epoch0, sub0 = None, None, 0.0, 0, 0
    if start is not None:
        state = _read_state(run_dir, start)
        _check_resume_config(state, config, allow_config_change)
        if state.model_hash != model_hash:
            raise TrainError(f"ckpt-{start} was trained with another model/data layout (model hash differs)")
        best_metric, best_ckpt, wall_before = state.best_metric, state.best_checkpoint, state.wall_time_s
        epoch0, sub0 = state.epoch, state.sub_epoch

    def policy_for(epoch: int) -> str:
        switch = config.float32_after_epoch
        return "float32" if switch is not None and epoch >= switch else policy

    def build(precision: str, source: SimpleNamespace | None = None) -> SimpleNamespace:
        """Model, optimizer, checkpointing and compiled steps under ``precision``.

        With ``source`` (a switch to float32 mid-run) its weights and optimizer slots are copied over.
        The checkpoint holds the inner optimizer, so it does not depend on the precision.
        """
        keras.mixed_precision.set_global_policy(precision)
        with strat.scope():
            keras.utils.set_random_seed(config.seed)
            net = build_model(config.model, norm.n_channels, schema)
            inner = make_optimizer(config.optim, total_steps)
            optimizer = keras.optimizers.LossScaleOptimizer(inner) if precision == "mixed_float16" else inner
            optimizer.build(net.trainable_variables)
            if source is not None:
                net.set_weights(source.net.get_weights())
                for mine, theirs in zip(inner.variables, source.inner.variables, strict=True):
                    mine.assign(theirs)
        ckpt = tf.train.Checkpoint(model=net, optimizer=inner)
        e = SimpleNamespace(precision=precision, net=net, inner=inner, optimizer=optimizer, ckpt=ckpt)
        e.manager = tf.train.CheckpointManager(
            ckpt, mirror.local(CHECKPOINTS), config.keep_checkpoints, checkpoint_name="ckpt"
        )
        e.best_manager = tf.train.CheckpointManager(ckpt, mirror.local(BEST), 1, checkpoint_name="ckpt")
        loss_scale = optimizer is not inner

        @tf.function(jit_compile=config.jit_compile)
        def gradients(x, y, m, aux_t, aux_m, group):
            with tf.GradientTape() as tape:
                out = net(x, training=True)
                loss, parts = total_loss(out, y, m * group, aux_t, aux_m, loss_cfg)
                scaled = optimizer.scale_loss(loss / replicas) if loss_scale else loss / replicas
            return tape.gradient(scaled, net.trainable_variables), parts

        def replica_step(x, y, m, aux, group):
            grads, parts = gradients(x, y, m, aux["targets"], aux["mask"], group)
            optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))
            return parts

        @tf.function
        def run_steps(iterator, n, group):
            total = {k: tf.constant(0.0) for k in ("main", "confidence", "aux", "level_diff", "total")}
            for _ in tf.range(n):
                parts = strat.run(replica_step, args=(*next(iterator), group))
                total = {k: total[k] + strat.reduce("MEAN", parts[k], axis=None) for k in total}
            return {k: v / tf.cast(n, tf.float32) for k, v in total.items()}

        @tf.function(jit_compile=config.jit_compile)
        def forward(x):
            return net(x, training=False)["pred"]

        e.run_steps, e.forward = run_steps, forward
        return e

    mirror = CheckpointMirror(run_dir)
    if start is not None:
        mirror.pull(CHECKPOINTS, start)
        if best_ckpt is not None:
            mirror.pull(BEST, best_ckpt)
    engine = build(policy_for(epoch0))
    if start is not None:
        path = os.path.join(mirror.local(CHECKPOINTS), f"ckpt-{start}")
        engine.ckpt.restore(path).assert_existing_objects_matched()
    storage.makedirs(run_dir)
    dump_config(config, storage.join(run_dir, "config.yaml"))

    mask = norm.target_mask(tuple(data.q0002_replacement_levels)) > 0
    weights = np.asarray(schema.target_weights())

    def validate() -> dict:
        norm_r2, phys_r2 = StreamingR2(schema.n_targets), StreamingR2(schema.n_targets)
        val_ds = make_predict_dataset(sources[0].val_files, sources[0], batch, with_targets=True)
        for b in val_ds:
            pred = engine.forward(b["inputs"]).numpy()
            truth = b["raw_targets"].numpy().astype(np.float64)
            norm_r2.update(norm.normalize_targets64(truth), pred)
            phys = physical_predictions(pred, b["x64"].numpy(), norm, data.q0002_replacement_levels)
            phys_r2.update(truth * weights, phys * weights)
        r2n, r2p = norm_r2.r2(), phys_r2.r2()
        r2p = np.where(weights == 0, 1.0, r2p)  # the Kaggle rule: zero-weight targets count as 1
        return {
            "val_r2": float(r2p.mean()),
            "val_r2_normalized": float(r2n[mask].mean()),
            "val_samples": norm_r2.n,
        }

    def evaluate_with_ema() -> dict:
        if not config.optim.use_ema:
            return validate()
        variables = engine.net.trainable_variables
        backup = [v.numpy() for v in variables]
        engine.inner.finalize_variable_values(variables)
        try:
            return validate()
        finally:
            for v, value in zip(variables, backup, strict=True):
                v.assign(value)

    # TensorBoard events go to a local folder, mirrored to a remote run dir after each flush: TF's
    # event writer appends to its file, which object stores (and the GCS emulator) do not support.
    tb_dir = storage.join(run_dir, "tb")
    tb_local = tempfile.mkdtemp(prefix="tfpipe-tb-") if storage.is_remote(run_dir) else tb_dir
    writer = tf.summary.create_file_writer(tb_local)
    budget = parse_duration(config.time_budget) if config.time_budget else None
    done_here, longest, last_val, stopped = 0, 0.0, {}, "finished"
    index = next((i for i, (e, k_, _) in enumerate(stages) if (e, k_) == (epoch0, sub0)), len(stages))
    all_ones = tf.ones([schema.n_targets], tf.float32)
    terminated: list[int] = []  # SIGTERM (notebook and pre-emptible VM shutdowns): stop at the next chunk
    previous_handler = _catch_sigterm(terminated)
    while index < len(stages):
        epoch, k, group = stages[index]
        if budget is not None and done_here and time.time() - t_start + longest * 1.1 > budget:
            stopped = "time budget"
            break
        if stop_after_sub_epochs is not None and done_here >= stop_after_sub_epochs:
            stopped = "stop-after-sub-epochs"
            break
        t0 = time.time()
        if policy_for(epoch) != engine.precision:
            print(f"[train] epoch {epoch}: switching from {engine.precision} to float32", file=sys.stderr)
            engine = build(policy_for(epoch), source=engine)
        steps = plan[epoch, k]
        group_mask = all_ones if group is None else tf.constant(group_masks[group])
        ds = make_dataset(data, "train", epoch, k, seed=seed, batch_size=batch, sources=sources)
        iterator = iter(strat.experimental_distribute_dataset(ds))
        bar = keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=list(["loss", "main", "lr"]))
        done = 0
        while done < steps and not terminated:
            n = min(config.steps_per_execution, steps - done)
            try:
                parts = engine.run_steps(iterator, tf.constant(n), group_mask)
            except tf.errors.DataLossError as err:
                files = [
                    f for src in sources for f in sub_epoch_files(src.train_files, seed, epoch, k, k_max)
                ]
                problem = diagnose_read_error(files) or err.message.splitlines()[0]
                raise TrainError(f"corrupt training data: {problem}") from None
            done += n
            lr = float(engine.inner.learning_rate)
            bar.update(done, [("loss", float(parts["total"])), ("main", float(parts["main"])), ("lr", lr)])
        if terminated:
            stopped = f"signal {terminated[0]}"  # the unfinished sub-epoch is abandoned, nothing is written
            break
        val = evaluate_with_ema()
        n_ckpt = index + 1
        step = int(engine.inner.iterations.numpy())
        index += 1
        next_epoch, next_k = stages[index][:2] if index < len(stages) else (stages[-1][0] + 1, 0)
        improved = best_metric is None or val["val_r2"] > best_metric
        if improved:
            best_metric, best_ckpt = val["val_r2"], n_ckpt
        row = {
            "checkpoint": n_ckpt, "epoch": epoch, "sub_epoch": k, "step": step,
            "finetune_group": "" if group is None else config.finetune.groups[group],
            "loss": float(parts["total"]), "main": float(parts["main"]), "lr": lr, **val,
            "seconds": round(time.time() - t0, 2),
        }  # fmt: skip
        with writer.as_default(step=step):
            for key, value in row.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value)
        writer.flush()
        if tb_local != tb_dir:
            for name in os.listdir(tb_local):
                storage.upload_file(os.path.join(tb_local, name), storage.join(tb_dir, name))
        _append_csv(storage.join(run_dir, "metrics.csv"), row)
        _log_mlflow(config, row, step)
        state = RunState(
            n_ckpt, next_epoch, next_k, seed, step, model_hash, data_hash, best_metric, best_ckpt,
            round(wall_before + time.time() - t_start, 2), val, config_to_dict(config),
        )  # fmt: skip
        storage.write_bytes(
            _state_path(run_dir, n_ckpt), json.dumps(dataclasses.asdict(state), indent=1).encode()
        )
        engine.manager.save(checkpoint_number=n_ckpt)
        mirror.push(CHECKPOINTS, _numbers(engine.manager))
        _drop_stale_states(run_dir, engine.manager, best_ckpt)
        if improved:
            engine.best_manager.save(checkpoint_number=n_ckpt)
            mirror.push(BEST, _numbers(engine.best_manager))
            export_keras(engine.net, storage.join(run_dir, "best.keras"))
        last_val = val
        done_here += 1
        longest = max(longest, time.time() - t0)
        print(
            f"[train] ckpt-{n_ckpt}: epoch {row['epoch']} sub-epoch {row['sub_epoch']} "
            f"loss {row['loss']:.4f} "
            f"val R2 {val['val_r2']:.4f} (normalised {val['val_r2_normalized']:.4f}) in {row['seconds']} s",
            file=sys.stderr,
        )
    _restore_sigterm(previous_handler)
    finished = index >= len(stages)
    epoch, k = stages[index][:2] if not finished else (stages[-1][0] + 1, 0)
    if not finished:
        print(
            f"[train] stopped ({stopped}) before epoch {epoch} sub-epoch {k}; to continue, run the same "
            f"command again (it resumes from the latest checkpoint in {run_dir}) or add --resume latest",
            file=sys.stderr,
        )
    return {
        "run_dir": run_dir,
        "resumed_from": None if start is None else f"ckpt-{start}",
        "sub_epochs_run": done_here,
        "next": {"epoch": epoch, "sub_epoch": k},
        "finished": finished,
        "stopped": "finished" if finished else stopped,
        "step": int(engine.inner.iterations.numpy()),
        "val_r2": last_val.get("val_r2"),
        "best_r2": best_metric,
        "best_checkpoint": None if best_ckpt is None else f"ckpt-{best_ckpt}",
        "strategy": kind,
        "replicas": replicas,
        "precision": engine.precision,
        "seconds": round(time.time() - t_start, 2),
    }


def _catch_sigterm(received: list[int]):
    """Record SIGTERM in ``received`` instead of dying; returns the old handler (None off the main thread)."""
    import signal

    try:
        return signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    except ValueError:  # signals can only be handled in the main thread
        return None


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _group_mask(schema, group: str) -> np.ndarray:
    """``[T]`` 0/1 mask of a fine-tune group: target variables joined by ``+`` (``cam_out``: all scalars)."""
    names: list[str] = []
    for part in group.split("+"):
        part = part.strip()
        if part == "cam_out":
            names += list(schema.target_scalars)
        elif part in schema.targets:
            names.append(part)
        else:
            raise TrainError(f"finetune group {group!r}: {part!r} is not a target of schema {schema.name!r}")
    mask = np.zeros(schema.n_targets, np.float32)
    for name in names:
        mask[schema.target_slice(name)] = 1.0
    return mask


def _numbers(manager) -> list[int]:
    return [int(p.rsplit("ckpt-", 1)[1]) for p in manager.checkpoints]


def _drop_stale_states(run_dir: str, manager, best: int | None) -> None:
    """Delete state records of checkpoints the manager has rotated out (the best one's is kept)."""
    kept = set(_numbers(manager)) | {best}
    for path in storage.list_files(_ckpt_dir(run_dir), suffix=".state.json"):
        n = int(path.rsplit("ckpt-", 1)[1].split(".")[0])
        if n not in kept:
            storage.delete(path, missing_ok=True)


def _log_mlflow(config: TrainConfig, row: dict, step: int) -> None:
    if not config.mlflow:
        return
    try:
        import mlflow
    except ImportError:
        print("[train] mlflow: true but mlflow is not installed; skipping", file=sys.stderr)
        return
    mlflow.log_metrics({k: v for k, v in row.items() if isinstance(v, float)}, step=step)


# ------------------------------------------------------------------ CLI


def build_parser(prog: str = "tfpipe train") -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="Train a model in resumable sub-epoch chunks.")
    p.add_argument("--config", default=None, help="YAML config (e.g. configs/tiny.yaml)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.learning_rate=3e-4"
    )
    p.add_argument("--resume", default=None, help="ckpt-N or latest (default: latest if the run dir has any)")
    p.add_argument("--run-dir", default=None, help="where checkpoints and logs go (local or gs://)")
    p.add_argument("--time-budget", default=None, help="stop after the last sub-epoch that fits, e.g. 8h30m")
    p.add_argument(
        "--stop-after-sub-epochs", type=int, default=None, help="end this session after N sub-epochs"
    )
    p.add_argument("--allow-config-change", action="store_true", help="resume with changed epochs, LR, ...")
    p.add_argument("--deterministic", action="store_true", help="deterministic ops and data order")
    p.add_argument(
        "--strategy", default="auto", help="auto, tpu, mirrored, multiworker, default, cpu-mirrored"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None, prog: str = "tfpipe train") -> int:
    args = build_parser(prog).parse_args(argv)
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.time_budget:
        overrides.append(f"time_budget={args.time_budget}")
    try:
        config = load_config(args.config, overrides)
        summary = train(
            config, args.resume, args.allow_config_change, args.stop_after_sub_epochs, args.deterministic,
            args.strategy, verbose=0 if args.quiet else 1,
        )  # fmt: skip
    except (TrainError, ConfigError, storage.StorageError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # data, stats, manifest and normalisation errors
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m tfpipe.train"))
