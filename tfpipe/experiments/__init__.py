"""The experiment loop around ``tfpipe train``: run tables, sweeps, the model zoo, tracking, exports."""

from __future__ import annotations

import importlib.util


class MissingDependency(ValueError):
    """An engine of the ``experiments`` extra (Optuna, Ray, MLflow) is not installed."""


def require(module: str, what: str) -> None:
    """MissingDependency (one line: what needs it, how to install it) unless ``module`` is importable."""
    if importlib.util.find_spec(module) is None:
        raise MissingDependency(
            f"{what} needs {module}, which is not installed: pip install 'tfpipe[experiments]'"
        )
