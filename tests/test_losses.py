"""Losses against hand-computed numpy values; masked entries get exactly zero gradient."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfpipe.data.schema import NLEV
from tfpipe.losses import (
    LossConfig,
    aux_loss,
    confidence_loss,
    level_difference_loss,
    masked_mae,
    masked_smooth_l1,
    total_loss,
)

RNG = np.random.default_rng(0)


def _np_smooth_l1(d: np.ndarray, beta: float) -> np.ndarray:
    ad = np.abs(d)
    return ad if beta <= 0 else np.where(ad < beta, 0.5 * d**2 / beta, ad - 0.5 * beta)


def test_masked_mae_by_hand():
    y = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    pred = np.array([[2.0, 0.0, 100.0], [-1.0, 0.5, 7.0]], np.float32)
    mask = np.array([1.0, 1.0, 0.0], np.float32)  # per target
    got = masked_mae(y, pred, mask)
    assert got.dtype == tf.float32 and got.shape == ()
    np.testing.assert_allclose(got.numpy(), (1 + 2 + 1 + 0.5) / 4, rtol=1e-6)
    mask2d = np.array([[1, 0, 0], [1, 1, 1]], np.float32)  # per sample and target
    np.testing.assert_allclose(masked_mae(y, pred, mask2d).numpy(), (1 + 1 + 0.5 + 7) / 4, rtol=1e-6)
    assert masked_mae(y, pred, np.zeros(3, np.float32)).numpy() == 0.0


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_masked_smooth_l1_by_hand(beta):
    y = RNG.normal(size=(4, 7)).astype(np.float32)
    pred = (y + RNG.normal(scale=1.5, size=y.shape)).astype(np.float32)
    mask = (RNG.random((4, 7)) > 0.3).astype(np.float32)
    want = (_np_smooth_l1(pred - y, beta) * mask).sum() / mask.sum()
    np.testing.assert_allclose(masked_smooth_l1(y, pred, mask, beta).numpy(), want, rtol=1e-5)


def test_inputs_of_other_dtypes_compute_in_float32():
    y = tf.constant([[1.0, 2.0]], tf.bfloat16)
    pred = tf.constant([[1.5, 2.0]], tf.float16)
    got = masked_mae(y, pred, tf.constant([1, 1], tf.int32))
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), 0.25)


def test_confidence_loss_by_hand_and_stops_gradient_to_pred():
    y = np.array([[0.0, 1.0, 2.0]], np.float32)
    pred = tf.Variable([[1.0, 1.0, 5.0]])
    conf = tf.Variable([[0.5, 0.5, 0.0]])
    mask = np.array([1.0, 1.0, 0.0], np.float32)
    with tf.GradientTape() as tape:
        loss = confidence_loss(y, pred, conf, mask)
    g_pred, g_conf = tape.gradient(loss, [pred, conf])
    np.testing.assert_allclose(loss.numpy(), (0.5 + 0.5) / 2)
    assert g_pred is None or not np.any(g_pred.numpy())
    np.testing.assert_allclose(g_conf.numpy(), [[-0.5, 0.5, 0.0]])


def test_aux_loss_masks_samples():
    aux_true = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], np.float32)
    aux_pred = np.array([[0.5, 1.0], [0.0, 0.0], [9.0, 9.0]], np.float32)
    aux_mask = np.array([1.0, 1.0, 0.0], np.float32)
    np.testing.assert_allclose(aux_loss(aux_true, aux_pred, aux_mask).numpy(), (0.5 + 1.0) / 4)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_level_difference_loss_by_hand(beta):
    n_prof, n_scal, batch = 2, 3, 3
    y = RNG.normal(size=(batch, n_prof * NLEV + n_scal)).astype(np.float32)
    pred = RNG.normal(size=y.shape).astype(np.float32)
    mask = (RNG.random(y.shape[1]) > 0.2).astype(np.float32)
    num = den = 0.0
    for b in range(batch):
        for p in range(n_prof):
            for k in range(NLEV - 1):
                i = p * NLEV + k
                w = mask[i] * mask[i + 1]
                d = (pred[b, i + 1] - pred[b, i]) - (y[b, i + 1] - y[b, i])
                num += w * float(_np_smooth_l1(np.array(d), beta))
                den += w
    got = level_difference_loss(y, pred, mask, n_prof, beta)
    np.testing.assert_allclose(got.numpy(), num / den, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30])
def test_masked_entries_get_zero_gradient(bad):
    """NaN, inf or huge predictions at masked positions change neither the loss nor any gradient."""
    n_prof, n_scal = 2, 4
    t = n_prof * NLEV + n_scal
    y = RNG.normal(size=(2, t)).astype(np.float32)
    clean = RNG.normal(size=(2, t)).astype(np.float32)
    mask = np.ones((2, t), np.float32)
    masked = [(0, 3), (1, NLEV + 10), (0, t - 1), (1, 0)]
    for b, i in masked:
        mask[b, i] = 0.0
    dirty = clean.copy()
    for b, i in masked:
        dirty[b, i] = bad
    cfg = LossConfig(kind="smooth_l1", beta=0.5, n_profiles=n_prof)
    results = []
    for values in (clean, dirty):
        pred = tf.Variable(values)
        conf = tf.Variable(np.abs(values))
        with tf.GradientTape() as tape:
            total, parts = total_loss(
                {"pred": pred, "conf": conf, "aux": tf.zeros([2, 8])}, y, mask, None, None, cfg
            )
        results.append((total.numpy(), *[g.numpy() for g in tape.gradient(total, [pred, conf])]))
    (l_clean, gp_clean, gc_clean), (l_dirty, gp_dirty, gc_dirty) = results
    assert np.isfinite(l_dirty) and l_dirty == pytest.approx(l_clean, rel=1e-6)
    for g_clean, g_dirty in ((gp_clean, gp_dirty), (gc_clean, gc_dirty)):
        assert np.all(np.isfinite(g_dirty))
        for b, i in masked:
            assert g_dirty[b, i] == 0.0 and g_clean[b, i] == 0.0
        np.testing.assert_allclose(g_dirty, g_clean, rtol=1e-6)
    assert np.count_nonzero(gp_clean) > 0.9 * gp_clean.size


def test_total_loss_weights_and_parts():
    n_prof = 1
    t = n_prof * NLEV + 2
    y = RNG.normal(size=(3, t)).astype(np.float32)
    out = {
        "pred": tf.constant(RNG.normal(size=(3, t)), tf.float32),
        "conf": tf.constant(RNG.random((3, t)), tf.float32),
        "aux": tf.constant(RNG.normal(size=(3, 8)), tf.float32),
    }
    aux_true = RNG.normal(size=(3, 8)).astype(np.float32)
    aux_mask = np.array([1, 0, 1], np.float32)
    mask = np.ones(t, np.float32)
    cfg = LossConfig(kind="mae", confidence_weight=0.5, aux_weight=2.0, level_diff_weight=0.25, n_profiles=1)
    total, parts = total_loss(out, y, mask, aux_true, aux_mask, cfg)
    assert set(parts) == {"main", "confidence", "aux", "level_diff", "total"}
    assert all(v.dtype == tf.float32 and v.shape == () for v in parts.values())
    np.testing.assert_allclose(parts["main"].numpy(), np.abs(out["pred"].numpy() - y).mean(), rtol=1e-6)
    want = parts["main"] + 0.5 * parts["confidence"] + 2.0 * parts["aux"] + 0.25 * parts["level_diff"]
    np.testing.assert_allclose(total.numpy(), want.numpy(), rtol=1e-6)
    assert total_loss(out, y, mask, None, None, cfg)[1]["aux"].numpy() == 0.0
    with pytest.raises(ValueError, match="smooth_l1"):
        LossConfig(kind="mse")


def test_losses_compile_with_xla():
    cfg = LossConfig(kind="smooth_l1", n_profiles=1)
    y = tf.constant(RNG.normal(size=(2, NLEV + 1)), tf.float32)
    out = {"pred": y * 0.5, "conf": tf.abs(y), "aux": tf.zeros([2, 8])}

    @tf.function(jit_compile=True)
    def f(out, y):
        return total_loss(out, y, tf.ones([NLEV + 1]), tf.ones([2, 8]), tf.ones([2]), cfg)[0]

    eager = total_loss(out, y, tf.ones([NLEV + 1]), tf.ones([2, 8]), tf.ones([2]), cfg)[0]
    np.testing.assert_allclose(f(out, y).numpy(), eager.numpy(), rtol=1e-5)
