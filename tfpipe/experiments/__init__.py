"""The experiment loop around ``tfpipe train``: run tables (``runs ls``), sweeps (Optuna), the model
zoo and ``tfpipe launch`` (local or Ray), model sets (``export-models``, ``predict --models``).

Each run is a ``tfpipe train`` child process on its own run dir (:mod:`~tfpipe.experiments.trainproc`).
May import :mod:`tfpipe.train`, :mod:`tfpipe.predict` and everything below them; training never imports
this package (MLflow tracking is :mod:`tfpipe.train.tracking`).
"""

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


def check_name(name: object, what: str) -> str:
    """``name`` if it is one plain path component (a study, run or model name that becomes a folder or
    file name); else ValueError: empty, ``.``/``..``, or with ``/``, ``\\`` or a control character
    would put its files beside or outside the folder meant to hold them."""
    text = name if isinstance(name, str) else ""
    if (
        not text
        or text in (".", "..")
        or text != text.strip()
        or any(c in text for c in "/\\") or any(ord(c) < 32 for c in text)
    ):  # fmt: skip
        raise ValueError(f"{what} {name!r} is not a plain folder name (no '/', not '', '.' or '..')")
    return text
