"""Blend several models' predictions: equal weights, hill climbing (LEAP 2nd place), or stacking.

- :mod:`~tfpipe.blend.core`: input checks, the weighted sum of predictions, the equal blend.
- :mod:`~tfpipe.blend.gram`: the per-column Gram matrices every fitted blend works from.
- :mod:`~tfpipe.blend.objective`: what a fitted blend maximises (R² against the training variance).
- :mod:`~tfpipe.blend.hill_climbing`: hill-climbing weights (affine, per target variable if asked).
- :mod:`~tfpipe.blend.stacking`: ridge stacking and an MLP stacker.
- :mod:`~tfpipe.blend.spec`: the blend spec JSON: save, load, apply.
- :mod:`~tfpipe.blend.files`: ``tfpipe blend`` on prediction files.

May import :mod:`tfpipe.evaluate`, :mod:`tfpipe.predict` (its parquet writer) and :mod:`tfpipe.data`.
"""

from __future__ import annotations

from tfpipe.blend.core import ALL, BlendError, blend_equal, combine
from tfpipe.blend.files import blend_files, blend_report_lines, model_names, prediction_dir
from tfpipe.blend.hill_climbing import DEFAULT_GRID, HillClimbResult, hill_climb
from tfpipe.blend.spec import apply_blend, load_spec, save_spec, spec_path_for
from tfpipe.blend.stacking import ALPHAS, StackModel, stack_apply, stack_fit

__all__ = [
    "ALL",
    "ALPHAS",
    "DEFAULT_GRID",
    "BlendError",
    "HillClimbResult",
    "StackModel",
    "apply_blend",
    "blend_equal",
    "blend_files",
    "blend_report_lines",
    "combine",
    "hill_climb",
    "load_spec",
    "model_names",
    "prediction_dir",
    "save_spec",
    "spec_path_for",
    "stack_apply",
    "stack_fit",
]
