"""Every schema (v1, v2, v2_rh, kaggle) encodes, exports, trains and predicts; the truth stays exact."""

from __future__ import annotations

import json
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest

from data_prep.encode import EncodeConfig, encode_shard, list_raw_pairs
from data_prep.raw import read_pair, relative_humidity
from data_prep.stats import compute_stats
from tfpipe.config import load_config
from tfpipe.data.schema import SCHEMAS, get_schema
from tfpipe.evaluate.export import export_parquet
from tfpipe.predict import predict
from tfpipe.train import train

SIZES = {"v1": (124, 128), "v2": (557, 368), "v2_rh": (557, 368), "kaggle": (556, 368)}


@pytest.fixture(scope="module")
def encoded(raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every 4th step of the 74-step tree (19 steps), encoded in each schema with its statistics."""
    out = {}
    for name in SCHEMAS:
        dst = tmp_path_factory.mktemp(f"schema-{name}") / "enc"
        encode_shard(EncodeConfig(str(raw_tree), str(dst), 0, 1, schema=name, stride=4, blocks_per_file=2,
                                  progress=False))  # fmt: skip
        (dst / "stats.json").write_text(compute_stats(str(dst)).to_json())
        out[name] = dst
    return out


def test_the_four_layouts_have_the_official_sizes() -> None:
    assert set(SCHEMAS) == set(SIZES)
    for name, sizes in SIZES.items():
        assert (get_schema(name).n_inputs, get_schema(name).n_targets) == sizes
    rh = get_schema("v2_rh")
    assert rh.inputs[:2] == ("state_t", "state_rh") and "state_q0001" not in rh.inputs
    assert rh.inputs.index("pbuf_N2O") < rh.inputs.index("state_ps")  # gases before scalars, as ClimSim


@pytest.mark.parametrize("name", list(SIZES))
def test_each_schema_encodes_exports_trains_and_predicts(name: str, encoded: dict, tmp_path: Path) -> None:
    data = encoded[name]
    schema = get_schema(name)
    frame = pd.read_parquet(export_parquet(str(data), str(tmp_path / "x.parquet"))["out"])
    assert frame.shape == (19 * 384, 3 + schema.n_inputs + schema.n_targets)
    config = load_config("configs/tiny.yaml", [
        f"data.sources.0.path={data}", f"data.schema={name}", "model.name=mlp", "model.mlp_units=[32]",
        "epochs=1", "data.sub_epochs=2", "data.batch_size=128", f"run_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    summary = train(config, verbose=0)
    assert summary["finished"] and np.isfinite(summary["val_r2"])
    out = predict(
        str(tmp_path / "run" / "best.keras"), str(data), str(tmp_path / "p.parquet"), batch_size=4096
    )
    pred = pd.read_parquet(out["out"])
    assert pred.shape == (19 * 384, 1 + schema.n_targets) and list(pred.columns[1:]) == list(
        schema.target_columns
    )
    state = json.loads((tmp_path / "run" / "checkpoints" / "ckpt-2.state.json").read_text())
    assert state["config"]["data"]["schema"] == name


def test_relative_humidity_is_derived_from_the_raw_input_file(
    raw_tree: Path, encoded: dict, tmp_path: Path
) -> None:
    mli, mlo = list_raw_pairs(str(raw_tree), 4)[0]
    with netCDF4.Dataset(mli) as ds:
        t, q, p = (np.asarray(ds[v][:], dtype=np.float64) for v in ("state_t", "state_q0001", "state_pmid"))
    want = relative_humidity(t, q, p).T  # (ncol, lev)
    samples = read_pair(mli, mlo, get_schema("v2_rh"))
    cols = get_schema("v2_rh").input_slice("state_rh")
    np.testing.assert_array_equal(samples.inputs[:, cols], want)
    assert 0 < np.median(want) < 2 and np.isfinite(want).all()
    # one hand-checked value: 50 % of saturation at 20 °C and 1000 hPa (e_liq(293.16 K) = 2339 Pa)
    q_half = 0.5 * 287.0 * 2339.2 / (461.0 * 1e5)
    assert relative_humidity(np.array([293.16]), np.array([q_half]), np.array([1e5]))[0] == pytest.approx(
        0.5, rel=1e-3
    )


@pytest.mark.parametrize("name", ["v2", "kaggle"])
def test_the_exported_truth_keeps_float64_below_float32s_range(name: str, raw_tree: Path, encoded: dict,
                                                               tmp_path: Path) -> None:  # fmt: skip
    """ptend_q0002 = (mlo - mli) / 1200 reaches 1e-53: export gives it to 1e-12 relative, not 0."""
    schema = get_schema(name)
    frame = pd.read_parquet(export_parquet(str(encoded[name]), str(tmp_path / "x.parquet"))["out"])
    cols = [f"ptend_q0002_{k}" for k in range(60)]
    exact = {}
    for mli, mlo in list_raw_pairs(str(raw_tree), 4):
        raw = read_pair(mli, mlo, schema)
        columns = schema.target_slice("ptend_q0002")
        exact |= {f"{raw.time.stamp}_{c}": raw.targets[c, columns] for c in raw.ncol}
    want = np.stack([exact[i] for i in frame["sample_id"]])
    got = frame[cols].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    tiny = (np.abs(want) < 1e-40) & (want != 0)
    assert tiny.any() and (got[tiny] != 0).all()  # float32 would have flushed these to 0


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_blocks_built_in_float32_equal_the_float64_samples_cast(name: str, small_raw_tree: Path) -> None:
    """Encode builds each block's float32 matrices directly (no float64 matrix): the same bytes as
    casting read_pair's float64 samples, and the same float64 state_q0002/ptend_q0002 columns."""
    from data_prep.raw_blocks import _read_step, _step_block
    from tfpipe.data.records import make_block

    schema = get_schema(name)
    for mli, mlo in list_raw_pairs(str(small_raw_tree), 1)[:2]:
        pair = _read_step(mli, mlo, schema, False)
        block, dropped, _ = _step_block(pair, schema, False)
        raw = read_pair(mli, mlo, schema)
        ids = [f"{raw.time.stamp}_{c}" for c in raw.ncol.tolist()]
        times = np.full(len(raw.ncol), raw.time.absolute_seconds)
        expected = make_block(schema, raw.inputs, raw.targets, raw.ncol, times, ids)
        assert dropped == 0 and block.sample_id == expected.sample_id
        for field in ("inputs", "targets", "x64", "y64", "ncol", "time"):
            got, want = getattr(block, field), getattr(expected, field)
            assert (got.dtype, got.shape, got.tobytes()) == (want.dtype, want.shape, want.tobytes()), field
