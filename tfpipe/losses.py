"""Losses on normalised targets: ``keras.ops`` functions, XLA friendly, computed in float32.

They run on any Keras 3 backend: TensorFlow for training here, JAX too (``bench/models.py`` under
``KERAS_BACKEND=jax``).

Masks are 0/1 (or non-negative weights) broadcastable to ``[B, T]``: a ``[T]`` vector per target or a
``[B, T]`` array. Means are over unmasked entries (weighted by the mask); masked entries are
removed with ``where`` before any arithmetic, so they contribute exactly zero gradient even when
the prediction there is NaN or inf. Every function returns a float32 scalar; an all-masked batch
gives 0.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from tfpipe.config.models import LOSS_KINDS, LossConfig  # noqa: F401  (re-exported)
from tfpipe.data.schema import NLEV


def _f32(x):
    return ops.cast(x, "float32")


def _masked_mean(values, mask):
    """Weighted mean of ``values`` (already zero where ``mask == 0``) over the mask."""
    return ops.divide_no_nan(ops.sum(values * mask), ops.sum(mask))


def _smooth_l1(diff, beta: float):
    """Elementwise SmoothL1 (Huber / beta): ``0.5 d^2 / beta`` below ``beta``, ``|d| - beta / 2`` above."""
    ad = ops.abs(diff)
    if beta <= 0:
        return ad
    return ops.where(ad < beta, 0.5 * ops.square(diff) / beta, ad - 0.5 * beta)


def _masked_elementwise(y, pred, mask, beta: float):
    y, pred = _f32(y), _f32(pred)
    mask = ops.broadcast_to(_f32(mask), ops.shape(pred))
    keep = mask > 0
    diff = ops.where(keep, pred - y, ops.zeros_like(pred))
    return _masked_mean(_smooth_l1(diff, beta), mask)


def masked_mae(y, pred, mask):
    """Mean absolute error over unmasked entries.

    Args:
        y: targets ``[B, T]``.
        pred: predictions ``[B, T]``.
        mask: broadcastable to ``[B, T]``; 0 removes an entry.
    """
    return _masked_elementwise(y, pred, mask, 0.0)


def masked_smooth_l1(y, pred, mask, beta: float = 1.0):
    """SmoothL1 over unmasked entries (``beta <= 0`` gives the MAE).

    Args:
        y: targets ``[B, T]``.
        pred: predictions ``[B, T]``.
        mask: broadcastable to ``[B, T]``; 0 removes an entry.
        beta: width of the quadratic zone (a Python float).
    """
    return _masked_elementwise(y, pred, mask, float(beta))


def confidence_loss(y, pred, conf, mask):
    """Masked mean of ``|conf - stop_gradient(|pred - y|)|``: conf learns the absolute error only.

    Args:
        y: targets ``[B, T]``.
        pred: predictions ``[B, T]`` (no gradient flows through them here).
        conf: predicted absolute errors ``[B, T]``.
        mask: broadcastable to ``[B, T]``.
    """
    y, pred, conf = _f32(y), _f32(pred), _f32(conf)
    mask = ops.broadcast_to(_f32(mask), ops.shape(conf))
    keep = mask > 0
    err = ops.stop_gradient(ops.where(keep, ops.abs(pred - y), ops.zeros_like(pred)))
    diff = ops.where(keep, conf - err, ops.zeros_like(conf))
    return _masked_mean(ops.abs(diff), mask)


def aux_loss(aux_true, aux_pred, aux_mask, beta: float = 0.0):
    """Auxiliary space-time loss, masked per sample.

    Args:
        aux_true: ``[B, A]`` sin/cos targets.
        aux_pred: ``[B, A]``.
        aux_mask: ``[B]`` (0 for samples whose grid column and time are unknown) or ``[B, A]``
            (per entry: Kaggle train rows know their column but not their time).
        beta: SmoothL1 beta (0: MAE).
    """
    mask = _f32(aux_mask)
    if len(mask.shape) == 1:
        mask = mask[:, None]
    return _masked_elementwise(aux_true, aux_pred, mask, float(beta))


def level_difference_loss(y, pred, mask, n_profiles: int, beta: float = 1.0):
    """SmoothL1 of level-to-level differences (level k+1 minus k) of the profile targets.

    The first ``n_profiles * 60`` columns are the profiles (``schema.target_columns`` order); a
    difference counts where both of its levels are unmasked (weight: the product of the two).

    Args:
        y: targets ``[B, T]``.
        pred: predictions ``[B, T]``.
        mask: broadcastable to ``[B, T]``.
        n_profiles: profile targets P (``len(schema.target_profiles)``).
        beta: SmoothL1 beta (0: absolute differences).
    """
    if n_profiles <= 0:
        return ops.convert_to_tensor(0.0, "float32")
    y, pred = _f32(y), _f32(pred)
    width = n_profiles * NLEV
    mask = ops.broadcast_to(_f32(mask), ops.shape(pred))[:, :width]
    keep = mask > 0
    pred = ops.where(keep, pred[:, :width], ops.zeros_like(pred[:, :width]))
    y = ops.where(keep, y[:, :width], ops.zeros_like(y[:, :width]))

    def diff(t):
        t = ops.reshape(t, [-1, n_profiles, NLEV])
        return t[:, :, 1:] - t[:, :, :-1]

    m = ops.reshape(mask, [-1, n_profiles, NLEV])
    pair = m[:, :, 1:] * m[:, :, :-1]
    return _masked_elementwise(diff(y), diff(pred), pair, float(beta))


def total_loss(outputs: dict, y, mask, aux_true, aux_mask, config: LossConfig) -> tuple[Any, dict[str, Any]]:
    """Weighted sum of the losses of one batch.

    Args:
        outputs: model outputs ``{"pred", "conf", "aux"}``.
        y: normalised targets ``[B, T]``.
        mask: broadcastable to ``[B, T]``.
        aux_true: ``[B, A]`` auxiliary targets, or None (aux loss 0).
        aux_mask: ``[B]``, or None (all samples known).
        config: kinds and weights.

    Returns:
        ``(total, parts)`` with parts ``main``, ``confidence``, ``aux``, ``level_diff`` (unweighted)
        and ``total``, all float32 scalars.
    """
    pred = outputs["pred"]
    main = _masked_elementwise(y, pred, mask, config.main_beta)
    conf = confidence_loss(y, pred, outputs["conf"], mask)
    if aux_true is None:
        aux = ops.convert_to_tensor(0.0, "float32")
    else:
        if aux_mask is None:
            aux_mask = ops.ones(ops.shape(aux_true)[:1], "float32")
        aux = aux_loss(aux_true, outputs["aux"], aux_mask, config.main_beta)
    level = level_difference_loss(y, pred, mask, config.n_profiles, config.beta)
    total = (
        main + config.confidence_weight * conf + config.aux_weight * aux + config.level_diff_weight * level
    )
    parts = {"main": main, "confidence": conf, "aux": aux, "level_diff": level, "total": total}
    return total, parts
