"""Sufficient statistics of a blend: per target column, the Gram matrix of the predictions and the truth.

Centred on the truth mean and scaled by the truth's sum of squares, they give every linear blend's R²
without touching the rows again (see :mod:`tfpipe.blend.hill_climbing` and :mod:`tfpipe.blend.stacking`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_ROW_CHUNK_ELEMENTS = 1 << 22  # rows * targets * (models + 2) per chunk of the Gram pass (32 MB)


def gram_matrices(
    preds: Sequence[np.ndarray], truth: np.ndarray, folds: int = 1, scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fold and column, the Gram matrix of [1, z_1..z_M, y] with z, y = (x - mean_t) / scale_t.

    Returns (gram [folds, T, M+2, M+2], mean [T], scale [T]); scale = sqrt(SS_tot) of the truth, or 1
    for a constant truth column (whose normalised truth is then 0), unless ``scale`` is given (see
    :func:`tfpipe.blend.objective.active_and_scale`). Folds are contiguous row blocks.
    """
    truth = np.asarray(truth, dtype=np.float64)
    n, t = truth.shape
    m = len(preds)
    mean = truth.mean(axis=0)
    ss_tot = ((truth - mean) ** 2).sum(axis=0)
    if scale is None:
        scale = np.where(ss_tot > 0, np.sqrt(ss_tot), 1.0)
    k = m + 2
    gram = np.zeros((folds, t, k, k))
    edges = np.linspace(0, n, folds + 1).astype(int)
    chunk = max(1, _ROW_CHUNK_ELEMENTS // (t * k))
    for f in range(folds):
        for start in range(edges[f], edges[f + 1], chunk):
            rows = slice(start, min(start + chunk, edges[f + 1]))
            z = np.empty((t, rows.stop - rows.start, k))
            z[:, :, 0] = 1.0
            for i, p in enumerate(preds):
                z[:, :, i + 1] = ((np.asarray(p[rows], dtype=np.float64) - mean) / scale).T
            z[:, :, k - 1] = ((truth[rows] - mean) / scale).T
            gram[f] += np.matmul(z.transpose(0, 2, 1), z)
    return gram, mean, scale
