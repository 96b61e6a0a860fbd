"""``tfpipe blend``: fit a blend of prediction files on a truth file, or apply a saved one."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

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
) -> dict:
    """``tfpipe blend``: fit (or with ``apply``, reuse) a blend of prediction files and write OUT + spec."""
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
        blended = apply_blend(apply, values)
        saved = load_spec(apply)
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
