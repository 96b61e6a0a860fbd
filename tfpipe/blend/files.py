"""``tfpipe blend``: fit a blend of prediction files on a truth file, or apply a saved one."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tfpipe import storage
from tfpipe.blend.core import BlendError, blend_equal, combine
from tfpipe.blend.hill_climbing import hill_climb
from tfpipe.blend.spec import apply_blend, load_spec, save_spec, spec_path_for
from tfpipe.blend.stacking import stack_apply, stack_fit
from tfpipe.metrics import r2_scores
from tfpipe.prediction_files import (
    align,
    load_predictions,
    load_truth,
    load_weights,
    strip_parquet,
    write_predictions,
)
from tfpipe.schema import Schema, get_schema


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
) -> dict:
    """``tfpipe blend``: fit (or with ``apply``, reuse) a blend of prediction files and write OUT + spec.

    With ``apply``, files named after the spec's models are matched by name, others by position;
    ``by_name`` (``--pred-dir``: a model set's predictions) makes a name mismatch an error instead.
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
            fitted = hill_climb(values, truth_values, names, w, per_group=per_group, schema=schema)
            blended = combine(values, fitted.column_weights(schema))
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
