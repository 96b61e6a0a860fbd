"""Warm-up + half-cosine schedule and the AdamW optimizer built from the config."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpipe.config import OptimConfig
from tfpipe.schedule import WarmupCosine, make_optimizer, make_schedule

PEAK, WARMUP, TOTAL, RATIO = 1e-3, 100, 1100, 0.1


def lr_at(schedule, step: int) -> float:
    return float(schedule(tf.constant(step, tf.int64)))


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),
        (50, PEAK / 2),  # mid warm-up
        (100, PEAK),  # peak
        (600, RATIO * PEAK + (1 - RATIO) * PEAK / 2),  # mid decay: half-way down the cosine
        (350, RATIO * PEAK + (1 - RATIO) * PEAK * (1 + math.cos(math.pi / 4)) / 2),
        (1100, RATIO * PEAK),  # end
        (5000, RATIO * PEAK),  # beyond: constant floor
    ],
)
def test_warmup_cosine_values(step, expected):
    assert lr_at(WarmupCosine(PEAK, TOTAL, WARMUP, RATIO), step) == pytest.approx(
        expected, rel=1e-5, abs=1e-9
    )


def test_warmup_rises_then_decay_falls_monotonically():
    lrs = np.array([lr_at(WarmupCosine(PEAK, TOTAL, WARMUP, RATIO), s) for s in range(0, 1200, 10)])
    peak_index = WARMUP // 10
    assert np.all(np.diff(lrs[: peak_index + 1]) > 0)
    assert np.all(np.diff(lrs[peak_index:]) <= 1e-12)
    assert lrs.max() == pytest.approx(PEAK)


def test_no_warmup_starts_at_peak_and_python_ints_work():
    schedule = WarmupCosine(PEAK, 10)
    assert lr_at(schedule, 0) == pytest.approx(PEAK)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"peak": 0.0, "total_steps": 10},
        {"peak": 1.0, "total_steps": 0},
        {"peak": 1.0, "total_steps": 10, "warmup_steps": 11},
        {"peak": 1.0, "total_steps": 10, "min_lr_ratio": 1.5},
    ],
)
def test_invalid_schedules_are_rejected(kwargs):
    with pytest.raises(ValueError):
        WarmupCosine(**kwargs)


def test_schedule_serialization_round_trip():
    schedule = WarmupCosine(PEAK, TOTAL, WARMUP, RATIO)
    config = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, WarmupCosine) and restored.get_config() == schedule.get_config()
    optimizer = make_optimizer(OptimConfig(), 500)
    clone = keras.optimizers.AdamW.from_config(optimizer.get_config())
    # Keras keeps the schedule object in ``_learning_rate``; ``learning_rate`` is its current value.
    assert isinstance(clone._learning_rate, WarmupCosine)
    assert clone._learning_rate.get_config() == optimizer._learning_rate.get_config()


def test_make_optimizer_reads_the_config():
    opt = make_optimizer(OptimConfig(learning_rate=2e-3, warmup_steps=0.1, clipnorm=0.5, use_ema=True), 1000)
    assert isinstance(opt, keras.optimizers.AdamW)
    assert opt.weight_decay == pytest.approx(8e-3)  # 4 x learning rate by default
    assert opt.use_ema and opt.ema_momentum == 0.999
    assert opt.clipnorm is None and opt.global_clipnorm is None  # the train step clips the summed gradient
    assert opt._learning_rate.get_config() == {
        "peak": 2e-3,
        "total_steps": 1000,
        "warmup_steps": 100,
        "min_lr_ratio": 0.0,
    }
    opt = make_optimizer(OptimConfig(weight_decay=0.0), 1000)
    assert opt.weight_decay == 0.0 and not opt.use_ema
    # A warm-up longer than the whole run is cut to the run.
    assert make_schedule(OptimConfig(warmup_steps=1000), 50).warmup_steps == 50


def _train(opt: keras.optimizers.Optimizer, var: tf.Variable, steps: int) -> None:
    for _ in range(steps):
        opt.apply_gradients([(tf.constant([1.0, -2.0]), var)])


def test_checkpoint_round_trip_continues_the_schedule(tmp_path):
    config = OptimConfig(learning_rate=0.1, warmup_steps=4, clipnorm=None, use_ema=True)

    def fresh() -> tuple[keras.optimizers.Optimizer, tf.Variable]:
        var = tf.Variable([1.0, 1.0])
        opt = make_optimizer(config, 12)
        opt.build([var])
        return opt, var

    reference_opt, reference_var = fresh()
    _train(reference_opt, reference_var, 10)

    opt, var = fresh()
    _train(opt, var, 6)
    path = tf.train.Checkpoint(optimizer=opt, var=var).write(str(tmp_path / "ckpt"))

    resumed_opt, resumed_var = fresh()
    tf.train.Checkpoint(optimizer=resumed_opt, var=resumed_var).read(path).assert_consumed()
    assert int(resumed_opt.iterations) == 6
    schedule = resumed_opt._learning_rate
    assert float(resumed_opt.learning_rate) == pytest.approx(lr_at(schedule, 6))
    _train(resumed_opt, resumed_var, 4)
    assert int(resumed_opt.iterations) == 10
    assert float(resumed_opt.learning_rate) == pytest.approx(lr_at(schedule, 10))
    np.testing.assert_allclose(resumed_var.numpy(), reference_var.numpy(), rtol=1e-6)


# ------------------------------------------------------------------ phases (tfpipe.schedule.Segment)


def test_one_segment_is_the_warmup_cosine():
    from tfpipe.schedule import Segment, SegmentedSchedule

    one = SegmentedSchedule([Segment(0, TOTAL, 0.0, PEAK, WARMUP, RATIO * PEAK).to_dict()])
    reference = WarmupCosine(PEAK, TOTAL, WARMUP, RATIO)
    for step in (0, 1, 50, 99, 100, 101, 350, 600, 1099, 1100, 5000):
        assert lr_at(one, step) == pytest.approx(lr_at(reference, step), rel=1e-6, abs=1e-12)
        assert Segment(0, TOTAL, 0.0, PEAK, WARMUP, RATIO * PEAK).value(step) == pytest.approx(
            lr_at(reference, step), rel=1e-6, abs=1e-12
        )
    config = keras.saving.serialize_keras_object(one)
    assert keras.saving.deserialize_keras_object(config).get_config() == one.get_config()


def test_phases_follow_one_another_and_restart_their_warmup():
    from tfpipe.schedule import Segment, SegmentedSchedule

    main = Segment(0, 100, 0.0, 1e-3, 10, 0.0)
    group = Segment(100, 140, 0.0, 1e-4, 104, 0.0)
    schedule = SegmentedSchedule([main.to_dict(), group.to_dict()])
    assert lr_at(schedule, 99) == pytest.approx(main.value(99), rel=1e-4)  # float32 near the floor
    assert lr_at(schedule, 100) == 0.0  # the group's own warm-up starts from 0
    assert lr_at(schedule, 104) == pytest.approx(1e-4)
    assert lr_at(schedule, 140) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="ordered"):
        SegmentedSchedule([group.to_dict(), main.to_dict()])
    with pytest.raises(ValueError):
        Segment(10, 5, 0.0, 1.0, 7, 0.0)

