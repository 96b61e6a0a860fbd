"""``tfpipe blend``: fit a blend of prediction files on a truth file, or apply a saved one."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tfpipe import storage
from tfpipe.blend.core import BlendError, blend_equal, combine
from tfpipe.blend.hill_climbing import HillClimbResult, held_out_check, hill_climb
from tfpipe.blend.spec import apply_blend, load_spec, save_spec, spec_path_for
from tfpipe.blend.stacking import stack_apply, stack_fit
from tfpipe.data.schema import Schema, get_schema
from tfpipe.evaluate.metrics import r2_scores
from tfpipe.evaluate.prediction_files import (
    TRAIN_STD_KEY,
    align,
    load_predictions,
    load_truth,
    load_weights,
    read_tfpipe_metadata,
    strip_parquet,
    write_predictions,
)


def model_names(paths: Sequence[str]) -> list[str]:
    """File names without ``.parquet``; the full paths where two would be the same."""
    stems = [strip_parquet(os.path.basename(p.rstrip("/"))) for p in paths]
    return stems if len(set(stems)) == len(stems) else list(paths)


TRUTH_FILE = "truth.parquet"
"""The truth that ``tfpipe predict --models --oof`` writes beside the models' predictions."""


def _same_folder(a: str, b: str) -> bool:
    if storage.is_remote(a) or storage.is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def prediction_dir(
    folder: str, out: str | None = None, truth: str | None = None
) -> tuple[list[str], str | None]:
    """``(prediction files, truth)`` of a folder of ``NAME.parquet`` files (``tfpipe predict --models``).

    Every ``*.parquet`` is a model's predictions except ``truth.parquet``, ``*.truth.parquet`` and
    ``out``; sorted by name. ``truth`` defaults to ``folder/truth.parquet`` when it exists.
    """
    folder = folder.rstrip("/") or "/"
    out_name = os.path.basename(out) if out and _same_folder(os.path.dirname(out) or ".", folder) else None
    names = [
        n for n in storage.listdir(folder)
        if n.endswith(".parquet") and not n.startswith(".") and n != TRUTH_FILE
        and not n.endswith(".truth.parquet") and n != out_name
    ]  # fmt: skip
    from tfpipe.predict import PUBLISHING

    if storage.exists(storage.join(folder, PUBLISHING)):
        raise BlendError(f"--pred-dir {folder}: tfpipe predict --models was stopped while it replaced the "
                         f"files here ({PUBLISHING}: a mix of two runs); run it again")  # fmt: skip
    if not names:
        if not storage.exists(folder):
            raise BlendError(f"--pred-dir {folder}: no such folder")
        raise BlendError(f"--pred-dir {folder}: no prediction files (NAME.parquet) in it")
    if truth is None and storage.exists(storage.join(folder, TRUTH_FILE)):
        truth = storage.join(folder, TRUTH_FILE)
    return [storage.join(folder, n) for n in sorted(names)], truth


def _load_all(paths: Sequence[str], schema: Schema) -> tuple[np.ndarray, list[np.ndarray]]:
    ids, first = load_predictions(paths[0], schema)
    preds = [first]
    for path in paths[1:]:
        other_ids, values = load_predictions(path, schema)
        preds.append(values[align(ids, other_ids, paths[0], path)])
    return ids, preds


def training_std(truth: str | None, stats: str | None, schema: Schema) -> np.ndarray | None:
    """The training std per target: from ``stats`` (a stats.json) if given, else from the truth file's
    metadata (``tfpipe predict --oof`` stores its model's), else None."""
    if stats is not None:
        from tfpipe.data.stats import StatsError, load_stats

        try:
            loaded = load_stats(stats, schema.name)
        except StatsError as err:
            raise BlendError(str(err)) from None
        if loaded.targets is None:
            raise BlendError(f"{stats}: statistics without targets give no training std")
        return np.asarray(loaded.targets.std, dtype=np.float64)
    std = read_tfpipe_metadata(truth).get(TRAIN_STD_KEY) if truth is not None else None
    if std is None:
        return None
    if len(std) != schema.n_targets:
        raise BlendError(f"{truth}: {TRAIN_STD_KEY} has {len(std)} values for {schema.n_targets} targets")
    return np.asarray(std, dtype=np.float64)


def _fit_report(
    fitted: HillClimbResult, values: list[np.ndarray], truth: np.ndarray, w: np.ndarray | None,
    per_group: bool, schema: Schema, train_std: np.ndarray | None,
) -> dict:  # fmt: skip
    """The objective of every input and of the blend on the fitted rows (from the fit itself), the
    held-out check, a warning."""
    names, objective = fitted.names, fitted.objective
    fit = fitted.single_scores | {"blend": fitted.score}
    report = {"objective": objective, "fit": fit}
    if len(values) > 1 and len(truth) >= 4:
        held = held_out_check(values, truth, names, w, per_group, schema, objective, train_std)
        report["held_out"] = held
        if not held["beats_best"]:
            report["warning"] = (
                f"on held-out rows (fit on one half of the out-of-fold rows, scored on the other) the blend "
                f"scores {held['blend']:.4f} against {held['models'][held['best_model']]:.4f} for "
                f"{held['best_model']} ({objective}): it may not beat that model on the test set; compare "
                "both there before submitting the blend"
            )
    return report


def blend_files(
    preds: Sequence[str],
    out: str,
    truth: str | None = None,
    method: str = "equal",
    per_group: bool = False,
    weights: str | None = None,
    stack_method: str = "ridge",
    apply: str | None = None,
    spec: str | None = None,
    by_name: bool = False,
    objective: str = "auto",
    stats: str | None = None,
) -> dict:
    """``tfpipe blend``: fit (or with ``apply``, reuse) a blend of prediction files and write OUT + spec.

    With ``apply``, files named after the spec's models are matched by name, others by position;
    ``by_name`` (``--pred-dir``: a model set's predictions) makes a name mismatch an error instead.
    ``objective`` (hill-climb; :mod:`tfpipe.blend.objective`) uses the training std of ``stats`` or of
    the truth file. A fitted blend's report has each input's and the blend's objective on the fitted
    rows (``fit``), a two-fold held-out check and, when the blend loses it, a ``warning``.
    """
    schema = get_schema("kaggle")
    ids, values = _load_all(preds, schema)
    names = model_names(preds)
    truth_values = None
    if truth is not None:
        truth_ids, truth_values = load_truth(truth, schema)
        truth_values = truth_values[align(ids, truth_ids, preds[0], truth)]
    w = None if weights is None else load_weights(weights, schema)
    report: dict = {"out": out, "n": int(len(ids)), "models": names}
    if apply is not None:
        saved = load_spec(apply)
        if sorted(names) == sorted(saved["models"]):  # the files are named after the models: match by name
            blended = apply_blend(apply, dict(zip(names, values, strict=True)))
            matched = {name: preds[names.index(name)] for name in saved["models"]}
        elif by_name:
            missing = sorted(set(saved["models"]) - set(names))
            extra = sorted(set(names) - set(saved["models"]))
            raise BlendError(
                f"{apply} was fitted on models {saved['models']}; the predictions are of {names} "
                f"(missing: {missing or 'none'}, not in the spec: {extra or 'none'}): predict with the "
                "same model set, into an empty --out-dir"
            )
        else:
            blended = apply_blend(apply, values)
            matched = dict(zip(saved["models"], preds, strict=True))
        report |= {"method": saved["method"], "spec": apply, "matched": matched}
    else:
        if method != "equal" and truth_values is None:
            raise BlendError(f"--method {method} needs --truth")
        spec_path = spec or spec_path_for(out)
        if method == "equal":
            blended, fitted = blend_equal(values), None
        elif method == "hill-climb":
            train_std = training_std(truth, stats, schema)
            fitted = hill_climb(values, truth_values, names, w, per_group=per_group, schema=schema,
                                objective=objective, train_std=train_std)  # fmt: skip
            blended = combine(values, fitted.column_weights(schema))
            report |= _fit_report(fitted, values, truth_values, w, per_group, schema, train_std)
        elif method == "stack":
            fitted = stack_fit(values, truth_values, stack_method)
            blended = stack_apply(fitted, values)
        else:
            raise BlendError(f"unknown method {method!r}; choose equal, hill-climb or stack")
        saved = save_spec(spec_path, method, names, fitted, schema)
        report |= {"method": method, "spec": spec_path, "weights": saved["weights"]}
    write_predictions(out, ids, blended, schema)
    if truth_values is not None:
        report["r2_inputs"] = {
            name: float(r2_scores(v, truth_values, w, schema).mean())
            for name, v in zip(names, values, strict=True)
        }
        report["r2_blend"] = float(r2_scores(blended, truth_values, w, schema).mean())
    return report


def _fmt(x: float) -> str:
    return f"{x:.4f}" if -10 <= x <= 1 else f"{x:.3g}"


def blend_report_lines(report: dict) -> list[str]:
    """What ``tfpipe blend`` tells a person (stderr): weights, scores of inputs and blend, the warning."""
    lines = []
    names, weights = report["models"], report.get("weights")
    if isinstance(weights, list):
        lines.append("weights: " + ", ".join(f"{n} {w:.3g}" for n, w in zip(names, weights, strict=True)))
    elif isinstance(weights, dict):
        mean = np.mean([w for w in weights.values()], axis=0)
        lines.append(f"weights per group ({len(weights)} groups), mean: "
                     + ", ".join(f"{n} {w:.3g}" for n, w in zip(names, mean, strict=True)))  # fmt: skip
    if "fit" in report:
        lines.append(f"fitted rows ({report['objective']}): "
                     + ", ".join(f"{n} {_fmt(x)}" for n, x in report["fit"].items()))  # fmt: skip
    if "held_out" in report:
        held = report["held_out"]
        lines.append("held out (fit on one half, scored on the other): "
                     + ", ".join(f"{n} {_fmt(x)}" for n, x in held["models"].items())
                     + f", blend {_fmt(held['blend'])}")  # fmt: skip
    if "r2_blend" in report:
        lines.append("Kaggle R² of these rows: "
                     + ", ".join(f"{n} {_fmt(x)}" for n, x in report["r2_inputs"].items())
                     + f", blend ({report['method']}) {_fmt(report['r2_blend'])}")  # fmt: skip
    if "warning" in report:
        lines.append(f"tfpipe blend: warning: {report['warning']}")
    return lines
