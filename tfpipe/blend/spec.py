"""The blend spec: a JSON file that saves a fitted blend so that it can be applied to test predictions.

A blend spec is JSON: ``{"method", "schema", "models", "weights", "groups"}``; ``weights`` is a list
(one per model) or, per group, ``{group: list}`` with ``groups = {group: [variables]}``; stacking
saves its coefficients (``.npz``; the MLP also a ``.keras`` file) beside the spec and names them in it.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from tfpipe import storage
from tfpipe.blend.core import ALL, BlendError, check_inputs, combine, weights_per_column
from tfpipe.blend.hill_climbing import HillClimbResult
from tfpipe.blend.stacking import StackModel, stack_apply
from tfpipe.data.schema import Schema, get_schema
from tfpipe.evaluate.metrics import default_schema
from tfpipe.evaluate.prediction_files import strip_parquet


def spec_path_for(out: str) -> str:
    """``OUT.blend.json`` for ``OUT.parquet``."""
    return strip_parquet(out) + ".blend.json"


def _sibling(spec_path: str, name: str) -> str:
    """``name`` in the folder of ``spec_path`` (local or gs://)."""
    folder = posixpath.dirname(spec_path)
    return f"{folder}/{name}" if folder else name


def save_spec(
    spec_path: str,
    method: str,
    names: Sequence[str],
    result: HillClimbResult | StackModel | None = None,
    schema: Schema | None = None,
) -> dict:
    """Write the blend spec JSON (and a stacker's ``.npz``/``.keras`` beside it); returns the spec."""
    schema = default_schema(schema)
    spec: dict = {
        "method": method,
        "schema": schema.name,
        "models": list(names),
        "weights": None,
        "groups": None,
    }
    if method == "equal":
        spec["weights"] = [1.0 / len(names)] * len(names)
    elif isinstance(result, HillClimbResult):
        if list(result.groups) == [ALL]:
            spec["weights"] = result.weights[ALL].tolist()
        else:
            spec["weights"] = {g: w.tolist() for g, w in result.weights.items()}
            spec["groups"] = {g: list(v) for g, v in result.groups.items()}
        spec["objective"] = result.objective
        spec["score_fit"] = result.score
    elif isinstance(result, StackModel):
        base = os.path.basename(spec_path).removesuffix(".json")
        spec["stack_method"] = result.method
        spec["coefficients"] = base + ".npz"
        buffer = io.BytesIO()
        np.savez(
            buffer,
            coef=result.coef,
            intercept=result.intercept,
            alpha=result.alpha,
            mean=result.mean,
            scale=result.scale,
        )
        storage.write_bytes(_sibling(spec_path, spec["coefficients"]), buffer.getvalue())
        if result.mlp is not None:
            spec["mlp"] = base + ".keras"
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "model.keras")
                result.mlp.save(local)  # type: ignore[attr-defined]
                storage.upload_file(local, _sibling(spec_path, spec["mlp"]))
    else:
        raise BlendError(f"cannot save a {method!r} blend without its fitted result")
    storage.write_bytes(spec_path, (json.dumps(spec, indent=1) + "\n").encode())
    return spec


def load_spec(spec_path: str) -> dict:
    """Read and check a blend spec."""
    try:
        spec = json.loads(storage.read_bytes(spec_path))
    except json.JSONDecodeError as err:
        raise BlendError(f"{spec_path}: not a blend spec ({err})") from None
    if not isinstance(spec, dict) or not {"method", "models", "weights", "groups"} <= set(spec):
        raise BlendError(f"{spec_path}: not a blend spec (needs method, models, weights, groups)")
    if spec["method"] not in ("equal", "hill-climb", "stack"):
        raise BlendError(f"{spec_path}: unknown blend method {spec['method']!r}")
    return spec


def apply_blend(spec_path: str, preds_by_name: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> np.ndarray:
    """Blend predictions with a saved spec: a mapping is matched by model name, a sequence by order."""
    spec = load_spec(spec_path)
    schema = get_schema(spec.get("schema", "kaggle"))
    names = spec["models"]
    if isinstance(preds_by_name, Mapping):
        missing = [n for n in names if n not in preds_by_name]
        if missing:
            raise BlendError(f"{spec_path}: no predictions for model {missing[0]!r}")
        preds = [preds_by_name[n] for n in names]
    else:
        preds = list(preds_by_name)
        if len(preds) != len(names):
            raise BlendError(f"{spec_path} blends {len(names)} models ({', '.join(names)}), got {len(preds)}")
    check_inputs(preds, None, schema)
    if spec["method"] == "stack":
        data = np.load(io.BytesIO(storage.read_bytes(_sibling(spec_path, spec["coefficients"]))))
        model = StackModel(
            spec.get("stack_method", "ridge"),
            data["coef"],
            data["intercept"],
            data["alpha"],
            data["mean"],
            data["scale"],
        )
        if model.method == "mlp":
            import keras

            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "model.keras")
                storage.download_file(_sibling(spec_path, spec["mlp"]), local)
                model.mlp = keras.models.load_model(local)
        return stack_apply(model, preds)
    weights, groups = spec["weights"], spec["groups"]
    if groups is None:
        weights, groups = {ALL: weights}, {ALL: list(schema.targets)}
    for group, w in weights.items():
        if len(w) != len(names):
            raise BlendError(f"{spec_path}: group {group!r} has {len(w)} weights for {len(names)} models")
    return combine(preds, weights_per_column(weights, groups, len(names), schema))
