"""Synthetic raw data: layout, variables and dimensions as in the real files, sane values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from data_prep import physics
from data_prep.climate import SyntheticClimate
from data_prep.raw import RawDataError, read_pair, read_variables
from data_prep.synth import synthesize
from tfpipe.data.grid import make_grid
from tfpipe.data.rawtree import ModelTime, parse_raw_file_name, partner_path
from tfpipe.data.schema import KAGGLE, MLI_VARIABLES, MLO_VARIABLES, NCOL, NLEV, V1, V2, VARIABLES

REPO = Path(__file__).resolve().parents[1]
REF = REPO.parent / "shared" / "climsim_ref"
REF_GRID = REF / "grid_info" / "ClimSim_low-res_grid-info.nc"
REF_NORM = REF / "preprocessing" / "normalizations"
needs_ref = pytest.mark.skipif(
    not REF.exists(),
    reason="needs ../shared/climsim_ref (the real ClimSim reference files; README 'Reference data')",
)


def _run_synth(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_prep.synth", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_tree_layout_has_one_mli_mlo_pair_per_step(raw_tree: Path):
    mli = sorted(raw_tree.glob("train/*/E3SM-MMF.mli.*.nc"))
    mlo = sorted(raw_tree.glob("train/*/E3SM-MMF.mlo.*.nc"))
    assert len(mli) == len(mlo) == 74
    assert (raw_tree / "grid-info.nc").is_file()
    assert [p.parent.name for p in (mli[0], mli[-1])] == ["0001-01", "0001-02"]
    times = [parse_raw_file_name(str(p))[1] for p in mli]
    assert times[0] == ModelTime(1, 1, 31, 0) and times[-1] == ModelTime(1, 2, 1, 1200)
    seconds = np.array([t.absolute_seconds for t in times])
    assert (np.diff(seconds) == 1200).all()
    assert all(Path(partner_path(str(p))).exists() for p in mli)
    assert mli[1].name == "E3SM-MMF.mli.0001-01-31-01200.nc"


@needs_ref
def test_grid_file_matches_the_real_one_in_variables_dims_and_dtypes(raw_tree: Path):
    with netCDF4.Dataset(REF_GRID) as ref, netCDF4.Dataset(raw_tree / "grid-info.nc") as ours:
        assert ours.data_model == ref.data_model
        sizes = lambda ds: {k: len(d) for k, d in ds.dimensions.items()}  # noqa: E731
        assert sizes(ours) == sizes(ref)
        assert set(ours.variables) == set(ref.variables)
        for name, var in ref.variables.items():
            assert ours.variables[name].dimensions == var.dimensions, name
            assert ours.variables[name].dtype == var.dtype, name
            assert ours.variables[name].getncattr("long_name") == var.getncattr("long_name"), name
        # Our own cubed sphere: same resolution and total area, not a copy of the reference.
        np.testing.assert_allclose(ours["area"][:].sum(), 4 * np.pi, rtol=1e-12)
        assert not np.allclose(ours["lat"][:], ref["lat"][:])
        assert np.abs(np.sort(ours["lat"][:]) - np.sort(ref["lat"][:])).max() < 3.0
        np.testing.assert_allclose(ours["hybi"][-1], 1.0)
        np.testing.assert_allclose(ours["ilev"][:], ref["ilev"][:], rtol=0.6, atol=10)


@needs_ref
def test_mli_and_mlo_hold_the_real_variables_with_real_dims(raw_tree: Path):
    mli_path = next(raw_tree.glob("train/*/E3SM-MMF.mli.*.nc"))
    with netCDF4.Dataset(REF_NORM / "inputs" / "input_mean.nc") as ref:
        reference_inputs = {name: var.dimensions for name, var in ref.variables.items()}
    with netCDF4.Dataset(REF_NORM / "outputs" / "output_scale.nc") as ref:
        reference_targets = set(ref.variables)
    with netCDF4.Dataset(mli_path) as mli, netCDF4.Dataset(partner_path(str(mli_path))) as mlo:
        assert set(mli.variables) == set(reference_inputs)
        for name, dims in reference_inputs.items():
            expected = ("lev", "ncol") if dims == ("lev",) else ("ncol",)
            assert mli.variables[name].dimensions == expected, name
            assert mli.variables[name].dtype == np.float64
            assert mli.variables[name].units == VARIABLES[name].units
        assert {k: len(d) for k, d in mli.dimensions.items()} == {"lev": NLEV, "ncol": NCOL}
        assert set(mlo.variables) == set(MLO_VARIABLES)
        for target in reference_targets:  # every real target can be built from our mlo
            source = target.replace("ptend_", "state_")
            assert source in mlo.variables, target


def test_files_open_with_xarray(raw_tree: Path):
    mli_path = next(raw_tree.glob("train/*/E3SM-MMF.mli.*.nc"))
    with xr.open_dataset(mli_path, engine="netcdf4") as ds:
        assert ds["state_t"].dims == ("lev", "ncol") and ds["state_ps"].dims == ("ncol",)
        assert set(ds.data_vars) == set(MLI_VARIABLES)
    with xr.open_dataset(raw_tree / "grid-info.nc", engine="netcdf4") as grid:
        assert grid["lat"].shape == (NCOL,) and grid["hyai"].shape == (NLEV + 1,)


@pytest.mark.parametrize("schema", [V1, V2, KAGGLE], ids=lambda s: s.name)
def test_targets_from_a_pair_are_finite_and_non_trivial(raw_tree: Path, schema):
    mli_path = sorted(raw_tree.glob("train/*/E3SM-MMF.mli.*.nc"))[40]  # daytime somewhere
    samples = read_pair(str(mli_path), partner_path(str(mli_path)), schema)
    assert samples.inputs.shape == (NCOL, schema.n_inputs)
    assert samples.targets.shape == (NCOL, schema.n_targets)
    assert samples.inputs.dtype == samples.targets.dtype == np.float64
    assert np.isfinite(samples.targets).all()
    varying = samples.targets.std(axis=0) > 0
    assert varying.mean() > 0.8, f"only {varying.mean():.0%} of target columns vary"
    for name in schema.targets:  # every target variable carries signal somewhere
        assert np.abs(samples.targets[:, schema.target_slice(name)]).max() > 0, name


def test_heating_and_precipitation_have_realistic_magnitudes(raw_tree: Path):
    heating, precip = [], []
    for mli_path in sorted(raw_tree.glob("train/*/E3SM-MMF.mli.*.nc"))[::6]:
        s = read_pair(str(mli_path), partner_path(str(mli_path)), KAGGLE)
        heating.append(s.targets[:, KAGGLE.target_slice("ptend_t")] * 86400)
        precip.append(s.targets[:, KAGGLE.target_slice("cam_out_PRECC")] * 86400 * 1000)
    heating_k_per_day, precip_mm_per_day = np.concatenate(heating), np.concatenate(precip)
    assert 0.5 < np.abs(heating_k_per_day).mean() < 20
    assert 0.3 < precip_mm_per_day.mean() < 10 and precip_mm_per_day.min() >= 0


@needs_ref
def test_input_magnitudes_lie_within_the_real_data_range(raw_tree: Path):
    mli_path = sorted(raw_tree.glob("train/*/E3SM-MMF.mli.*.nc"))[30]
    ours = read_variables(str(mli_path), MLI_VARIABLES)
    base = REF_NORM / "inputs"
    with netCDF4.Dataset(base / "input_min.nc") as lo, netCDF4.Dataset(base / "input_max.nc") as hi:
        for name in MLI_VARIABLES:
            low, high = np.min(lo[name][:]), np.max(hi[name][:])
            median = np.median(ours[name])
            span = high - low
            assert low - 0.05 * span <= median <= high + 0.05 * span, (name, low, median, high)


def test_cloud_liquid_reaches_below_1e_40_at_upper_levels(raw_tree: Path):
    mli_path = next(raw_tree.glob("train/*/E3SM-MMF.mli.*.nc"))
    q2 = read_variables(str(mli_path), ("state_q0002",))["state_q0002"]
    upper = q2[:10]
    assert ((upper > 0) & (upper < 1e-40)).any()
    assert (upper < np.finfo(np.float32).tiny).any()  # not representable as a normal float32


def test_upper_level_q0002_tendency_is_minus_state_over_1200(raw_tree: Path):
    """The rule the top solutions used, ptend_q0002 = -state_q0002 / 1200, holds in the toy physics."""
    mli_path = next(raw_tree.glob("train/*/E3SM-MMF.mli.*.nc"))
    samples = read_pair(str(mli_path), partner_path(str(mli_path)), KAGGLE)
    state = samples.inputs[:, KAGGLE.input_slice("state_q0002")][:, 12:28]
    tend = samples.targets[:, KAGGLE.target_slice("ptend_q0002")][:, 12:28]
    tiny = state < 1e-12
    assert tiny.any()
    np.testing.assert_array_equal(tend[tiny], -state[tiny] / 1200)


def test_toy_physics_is_deterministic_for_a_seed():
    grid = make_grid()
    when = ModelTime(1, 3, 5, 3600)
    a = SyntheticClimate(grid, seed=7).state(when)
    b = SyntheticClimate(grid, seed=7).state(when)
    c = SyntheticClimate(grid, seed=8).state(when)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["state_t"], c["state_t"])
    out_a, out_b = physics.step(grid, a), physics.step(grid, b)
    for name in out_a:
        np.testing.assert_array_equal(out_a[name], out_b[name])


def test_toy_physics_is_vertically_non_local_and_non_linear():
    grid = make_grid()
    state = SyntheticClimate(grid, seed=1).state(ModelTime(1, 6, 1, 43200))
    base = physics.step(grid, state)["state_t"] - state["state_t"]

    def response(delta: float) -> np.ndarray:
        moist = dict(state)
        moist["state_q0001"] = state["state_q0001"].copy()
        moist["state_q0001"][45] *= 1 + delta  # more vapour at one mid-tropospheric level
        return physics.step(grid, moist)["state_t"] - moist["state_t"] - base

    small, large = response(0.1), response(0.2)
    other_levels = np.delete(np.abs(small), [45], axis=0)
    assert (other_levels > 1e-9).sum(axis=0).max() > 10  # the change spreads to many levels
    assert np.abs(large - 2 * small).max() > 1e-3 * np.abs(small).max()  # and not linearly


def test_same_seed_gives_identical_files(tmp_path: Path):
    a = synthesize(tmp_path / "a", days=2 / 72, seed=3)
    b = synthesize(tmp_path / "b", days=2 / 72, seed=3)
    assert a.files == b.files == 5
    for path in sorted((tmp_path / "a").rglob("E3SM-MMF.*.nc")):
        other = tmp_path / "b" / path.relative_to(tmp_path / "a")
        names = MLI_VARIABLES if ".mli." in path.name else MLO_VARIABLES
        x, y = read_variables(str(path), names), read_variables(str(other), names)
        for name in names:
            np.testing.assert_array_equal(x[name], y[name])


def test_reader_names_the_file_and_the_missing_variable(tmp_path: Path, raw_tree: Path):
    broken = tmp_path / "E3SM-MMF.mli.0001-02-01-00000.nc"
    with netCDF4.Dataset(broken, "w") as ds:
        ds.createDimension("lev", NLEV)
        ds.createDimension("ncol", NCOL)
        ds.createVariable("state_t", "f8", ("lev", "ncol"))[:] = 250.0
    with pytest.raises(RawDataError, match=rf"{broken}: missing variable state_q0001"):
        read_variables(str(broken), ("state_t", "state_q0001"))
    truncated = tmp_path / "E3SM-MMF.mli.0001-02-01-01200.nc"
    truncated.write_bytes((next(raw_tree.glob("train/*/*.mli.*.nc"))).read_bytes()[:5000])
    with pytest.raises(RawDataError, match=str(truncated)):
        read_variables(str(truncated), ("state_t",))


# Command line: one-line errors, exit code 2, nothing half-written.


def test_cli_writes_a_tree_and_reports_json(tmp_path: Path):
    result = _run_synth("--out", str(tmp_path / "raw"), "--days", str(3 / 72), "--seed", "1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["files"] == 7 and summary["steps"] == 3
    assert summary["first"] == "0001-02-01-00000" and summary["last"] == "0001-02-01-02400"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start", "0001-02-30"], "bad date '0001-02-30'"),
        (["--start", "1-2-3"], "expected YYYY-MM-DD"),
        (["--days", "-1"], "must be > 0"),
        (["--days", "0"], "must be > 0"),
        (["--days", "abc"], "not a number"),
    ],
)
def test_cli_rejects_bad_arguments_with_one_line(tmp_path: Path, args, message):
    result = _run_synth("--out", str(tmp_path / "raw"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "raw").exists()


def test_cli_refuses_a_non_empty_dir_without_overwrite(tmp_path: Path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = _run_synth("--out", str(out), "--days", str(1 / 72))
    assert result.returncode == 2 and "not empty" in result.stderr and "--overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["precious.txt"]

    result = _run_synth("--out", str(out), "--days", str(1 / 72), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (out / "precious.txt").exists() and (out / "grid-info.nc").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize(
    "make_out",
    [
        lambda tmp: tmp / "a-file" / "raw",  # parent is a file
        lambda tmp: Path("/proc/tfpipe-synth-test"),  # not writable, even for root
    ],
)
def test_cli_reports_unwritable_destinations(tmp_path: Path, make_out):
    (tmp_path / "a-file").write_text("x")
    result = _run_synth("--out", str(make_out(tmp_path)), "--days", str(1 / 72))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr


def test_missing_parent_folders_are_created(tmp_path: Path):
    result = _run_synth("--out", str(tmp_path / "work" / "deep" / "raw"), "--days", str(1 / 72))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "work" / "deep" / "raw" / "grid-info.nc").is_file()


@pytest.mark.scenario
def test_killed_run_leaves_the_existing_tree_intact(tmp_path: Path):
    out = tmp_path / "raw"
    synthesize(out, days=1 / 72, seed=0)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep.synth", "--out", str(out), "--days", "20", "--overwrite"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(".raw.partial-*/train/*/*.nc")):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    # The next run cleans the abandoned staging folder up.
    synthesize(out, days=1 / 72, seed=0, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
