"""data_prep.stats (streaming float64 moments, sharded merge) and tfpipe.data.normalize (TF transforms)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from data_prep.encode import EncodeConfig, encode_shard
from data_prep.stats import compute_stats, merge_files
from tfpipe.data.normalize import (
    Normalization,
    NormalizeError,
    channel_layout,
    soft_clip,
    soft_clip64,
    soft_unclip,
    soft_unclip64,
    stats_sha256,
)
from tfpipe.data.schema import KAGGLE, NLEV, V1
from tfpipe.data.stats import MIN_STD, Moments, Stats, StatsError, load_stats
from tfpipe.evaluate.export import export_parquet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoded(raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("enc") / "data"
    for i in range(3):
        encode_shard(EncodeConfig(str(raw_tree), str(dst), i, 3, blocks_per_file=3, progress=False))
    return dst


def stats_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_prep.stats", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_moments_merge_equals_numpy() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(1e5, 3.0, size=(1000, 4))  # a large mean: the naive formula would lose digits
    parts = [Moments.of(data[i : i + 97]) for i in range(0, 1000, 97)]
    total = Moments.empty(4)
    for p in parts:
        total = total.merge(p)
    np.testing.assert_allclose(total.mean, data.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(total.std, data.std(axis=0), rtol=1e-10)
    assert (total.min == data.min(axis=0)).all() and total.count == 1000
    pooled = total.pooled(slice(1, 3))
    np.testing.assert_allclose(pooled.std[0], data[:, 1:3].std(), rtol=1e-10)


def test_stats_match_the_exported_data_and_sharded_merge_equals_one_pass(
    encoded: Path, tmp_path: Path
) -> None:
    one = stats_cli("--data", str(encoded), "--out", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout.splitlines()[-1])["count"] == 74 * 384
    parts = []
    for i in range(3):
        out = tmp_path / f"part{i}.json"
        assert (
            stats_cli(
                "--data", str(encoded), "--out", str(out), "--shard", str(i), "--num-shards", "3"
            ).returncode
            == 0
        )
        parts.append(str(out))
    merged = stats_cli("--merge", *parts, "--out", str(tmp_path / "merged.json"))
    assert merged.returncode == 0, merged.stderr
    a, b = load_stats(str(tmp_path / "one.json")), load_stats(str(tmp_path / "merged.json"))
    assert a.count == b.count
    for x, y in ((a.inputs, b.inputs), (a.targets, b.targets)):
        np.testing.assert_allclose(y.mean, x.mean, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(y.std, x.std, rtol=1e-10, atol=1e-300)
        assert (x.min == y.min).all() and (x.max == y.max).all()

    frame = pd.read_parquet(export_parquet(str(encoded), str(tmp_path / "all.parquet"))["out"])
    values = frame[list(KAGGLE.columns)].to_numpy()
    np.testing.assert_allclose(
        a.inputs.mean, values[:, : KAGGLE.n_inputs].mean(axis=0), rtol=1e-12, atol=1e-300
    )
    np.testing.assert_allclose(
        a.targets.std, values[:, KAGGLE.n_inputs :].std(axis=0), rtol=1e-9, atol=1e-300
    )
    doc = json.loads((tmp_path / "one.json").read_text())
    t = doc["input_variables"]["state_t"]
    q = values[:, KAGGLE.input_slice("state_t")]
    assert (
        t["count"] == q.size and np.isclose(t["mean"], q.mean(), rtol=1e-12) and np.isclose(t["std"], q.std())
    )
    assert doc["input_columns"]["mean"][KAGGLE.input_slice("state_q0002").start] < 1e-30  # float64 kept
    assert len(doc["target_scale"]) == KAGGLE.n_targets and min(doc["target_scale"]) > 0
    zero = set(doc["zero_variance_targets"])
    assert zero == {c for c, s in zip(KAGGLE.target_columns, a.targets.std, strict=True) if s <= MIN_STD}


def test_stats_errors(encoded: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = stats_cli("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "s.json"))
    assert result.returncode == 2 and "no encoded shards" in result.stderr
    zero = Stats("kaggle", Moments.empty(KAGGLE.n_inputs), Moments.empty(KAGGLE.n_targets))
    (tmp_path / "zero.json").write_text(zero.to_json())
    with pytest.raises(StatsError, match="zero samples"):
        merge_files([str(tmp_path / "zero.json")])
    v1 = Stats("v1", Moments.of(np.ones((3, V1.n_inputs))), Moments.of(np.ones((3, V1.n_targets))))
    (tmp_path / "v1.json").write_text(v1.to_json())
    with pytest.raises(StatsError, match="v1.json: stats are for schema 'v1', expected 'kaggle'"):
        load_stats(str(tmp_path / "v1.json"), schema="kaggle")
    with pytest.raises(StatsError, match="cannot merge stats of schemas"):
        merge_files([str(tmp_path / "v1.json"), str(tmp_path / "zero.json")])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(StatsError, match="junk.json: not a tfpipe stats file"):
        load_stats(str(tmp_path / "junk.json"))


# ------------------------------------------------------------------ normalisation


def test_soft_clip_is_monotone_continuous_and_invertible() -> None:
    z = np.concatenate([-np.logspace(6, -8, 4000), [0.0], np.logspace(-8, 6, 4000)])
    z = np.concatenate([z, np.linspace(-7, 7, 20001)])
    z.sort()
    c = soft_clip(tf.constant(z, tf.float64), 3.0).numpy()
    assert (np.diff(c) >= 0).all() and (np.diff(c)[np.diff(z) > 0] > 0).all()  # strictly monotone
    inside = np.abs(z) <= 3
    assert (c[inside] == z[inside]).all()
    assert np.abs(c).max() < 3 + np.log1p(1e6)  # +-1e6 sigma stays readable
    back = soft_unclip(tf.constant(c, tf.float64), 3.0).numpy()
    np.testing.assert_allclose(back, z, rtol=1e-12, atol=0)
    eps = 1e-9  # continuous at the threshold
    assert abs(soft_clip(tf.constant(3 + eps, tf.float64), 3.0).numpy() - 3.0) < 2 * eps
    np.testing.assert_allclose(soft_clip64(z, 3.0), c, rtol=1e-15)  # the host (numpy) twin, to rounding
    np.testing.assert_allclose(soft_unclip64(c, 3.0), z, rtol=1e-12, atol=0)


@pytest.fixture(scope="module")
def stats(encoded: Path) -> Stats:
    return compute_stats(str(encoded))


def layer_of(stats: Stats, **kw) -> Normalization:
    kw.setdefault("replacement_levels", tuple(range(12, 28)))
    return Normalization.from_stats(KAGGLE, stats, **kw)


def test_layout_of_model_inputs(stats: Stats) -> None:
    layout = channel_layout(KAGGLE)
    assert layout.shape == (NLEV, 25)
    t = KAGGLE.inputs.index("state_t")
    assert list(layout[:, t]) == list(
        range(KAGGLE.input_slice("state_t").start, KAGGLE.input_slice("state_t").stop)
    )
    ps = KAGGLE.inputs.index("state_ps")
    assert (layout[:, ps] == KAGGLE.input_slice("state_ps").start).all()  # a scalar on every level
    assert layer_of(stats, representations=("column", "variable", "log")).n_channels == 75
    with pytest.raises(NormalizeError, match="unknown representation"):
        layer_of(stats, representations=("column", "fourier"))
    with pytest.raises(NormalizeError, match="schema"):
        Normalization.from_stats(V1, stats)
    no_targets = Stats(stats.schema, stats.inputs, None)
    with pytest.raises(NormalizeError, match="without targets"):
        Normalization.from_stats(KAGGLE, no_targets)


def test_features_and_targets(stats: Stats, encoded: Path, tmp_path: Path) -> None:
    frame = pd.read_parquet(export_parquet(str(encoded), str(tmp_path / "x.parquet"))["out"]).iloc[:500]
    inputs = frame[list(KAGGLE.input_columns)].to_numpy()
    targets = frame[list(KAGGLE.target_columns)].to_numpy()
    norm = layer_of(stats, feature_clip=1e9)
    out = norm(tf.constant(inputs, tf.float32)).numpy()
    assert out.shape == (500, NLEV, 75) and out.dtype == np.float32 and np.isfinite(out).all()
    col = (inputs - stats.inputs.mean) / np.where(stats.inputs.std > MIN_STD, stats.inputs.std, 1.0)
    t, ps = KAGGLE.inputs.index("state_t"), KAGGLE.inputs.index("state_ps")
    np.testing.assert_allclose(out[:, :, t], col[:, KAGGLE.input_slice("state_t")], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        out[:, 7, ps], col[:, KAGGLE.input_slice("state_ps").start], rtol=1e-4, atol=1e-4
    )
    # state_q0002 (down to 1e-50): float32 arithmetic still gives the float64 z-score
    q = KAGGLE.inputs.index("state_q0002")
    np.testing.assert_allclose(out[:, :, q], col[:, KAGGLE.input_slice("state_q0002")], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out[:, :, 50 + t], np.sign(out[:, :, t]) * np.log1p(np.abs(out[:, :, t])), rtol=1e-5
    )
    var = stats.variable_stats("inputs")["state_t"]
    np.testing.assert_allclose(
        out[:, :, 25 + t],
        (inputs[:, KAGGLE.input_slice("state_t")] - var["mean"]) / var["std"],
        rtol=1e-4,
        atol=1e-4,
    )
    assert np.abs(out[:, :, t].mean()) < 1  # roughly standardised

    y = norm.normalize_targets64(targets)
    back = norm.denormalize_targets(y)
    # exact in float64: error within 1e-12 of the value or of the target's scale, whichever is larger
    # (values far below their column's spread, e.g. 0 W/m2 at night, cannot do better in an affine map)
    scale = norm.values64["target_scale"]
    bound = 1e-12 * np.maximum(np.abs(targets), scale)
    assert (np.abs(back - targets) <= bound).all()
    big = np.abs(targets) >= scale
    np.testing.assert_allclose(back[big], targets[big], rtol=1e-12)
    y32 = norm.normalize_targets(tf.constant(targets, tf.float32)).numpy()
    assert np.isfinite(y32).all() and np.abs(y32).max() <= 6 + np.log1p(1e30)
    np.testing.assert_allclose(y32, y, rtol=1e-4, atol=1e-4)  # the device (float32) and host twins agree
    assert norm.target_mask().sum() == KAGGLE.n_targets - 60 - 16


def test_channel_expansion_equals_the_gather_layout(stats: Stats) -> None:
    norm = layer_of(stats)
    rng = np.random.default_rng(1)
    x = (stats.inputs.mean + stats.inputs.std * rng.normal(size=(50, KAGGLE.n_inputs))).astype(np.float32)
    got = norm(tf.constant(x)).numpy()
    v = {k: w.astype(np.float32) for k, w in norm.values64.items()}
    col = (x - v["input_mean"]) / v["input_std"]
    reps = [col, (x - v["variable_mean"]) / v["variable_std"], np.sign(col) * np.log1p(np.abs(col))]
    layout = channel_layout(KAGGLE)
    want = soft_clip64(np.concatenate([r[:, layout] for r in reps], axis=-1).astype(np.float64), 6.0)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


def test_the_layer_carries_its_statistics_through_save_and_checkpoint(stats: Stats, tmp_path: Path) -> None:
    import keras

    norm = layer_of(stats)
    inputs = keras.Input((KAGGLE.n_inputs,))
    model = keras.Model(inputs, norm(inputs))
    x = (stats.inputs.mean + stats.inputs.std).astype(np.float32)[None, :]
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    layer = loaded.get_layer("normalization")
    assert isinstance(layer, Normalization) and layer.stats_sha256 == stats_sha256(stats)
    assert layer.replacement_levels == tuple(range(12, 28)) and not layer.mismatched_weights()
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    for key, value in norm.values64.items():  # float64 survives the .keras round trip exactly
        np.testing.assert_array_equal(layer.values64[key], value)
    assert {w.name for w in norm.weights} == set(norm.values64) and not norm.trainable_weights
    # a checkpoint restores the float32 weights; a layer built from other statistics notices
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    other = Stats(stats.schema, stats.inputs.merge(stats.inputs), stats.targets)
    other.inputs.mean = other.inputs.mean + 1.0
    wrong = Normalization.from_stats(KAGGLE, other)
    model2 = keras.Model(inputs2 := keras.Input((KAGGLE.n_inputs,)), wrong(inputs2))
    tf.train.Checkpoint(model=model2).read(path).assert_consumed()
    assert "input_mean" in wrong.mismatched_weights()
