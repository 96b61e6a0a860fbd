"""Read a raw (mli, mlo) file pair into flattened float64 inputs and targets.

Inputs are the schema's input columns in order (profiles as ``NAME_0..NAME_59``, level 0
at the top); targets are ``ptend_X = (mlo.state_X - mli.state_X) / 1200`` for tendencies and
``mlo.cam_out_*`` as they are. Everything stays float64, as in the files, so that values
such as ``state_q0002 ~ 1e-50`` survive. Every problem is raised as :class:`RawDataError`
naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import netCDF4
import numpy as np

from tfpipe.data.rawtree import ModelTime, parse_raw_file_name
from tfpipe.data.schema import DERIVED_INPUTS, NCOL, NLEV, TIMESTEP_S, VARIABLES, Schema, target_source


class RawDataError(ValueError):
    """A raw file is missing, unreadable or does not match the schema."""


@dataclass(frozen=True)
class RawSamples:
    """The samples of one time step: one row per grid column."""

    inputs: np.ndarray  # (ncol, n_inputs) float64
    targets: np.ndarray  # (ncol, n_targets) float64
    ncol: np.ndarray  # (ncol,) int32 grid column index
    time: ModelTime


def read_variables(
    path: str, names: tuple[str, ...], data: bytes | None = None, allow_nonfinite: bool = False
) -> dict[str, np.ndarray]:
    """Read ``names`` from a raw netCDF file as float64, checking dimensions and values.

    ``data``: the file's bytes when it was fetched from remote storage (``path`` then only names it).
    ``allow_nonfinite``: return NaN/Inf values instead of raising (the caller drops those samples).
    """
    try:
        if data is None:
            ds = netCDF4.Dataset(path)
        else:  # in memory the name is only a label, but netCDF-C takes "scheme://..." names for URLs
            ds = netCDF4.Dataset(path.rsplit("/", 1)[-1], memory=data)
    except (OSError, RuntimeError) as err:
        raise RawDataError(f"{path}: cannot open as netCDF ({err})") from None
    out = {}
    with ds:
        for name in names:
            if name not in ds.variables:
                raise RawDataError(f"{path}: missing variable {name}")
            var = ds.variables[name]
            expected = VARIABLES[name].dims
            if var.dimensions != expected:
                raise RawDataError(f"{path}: {name} has dimensions {var.dimensions}, expected {expected}")
            shape = (NLEV, NCOL) if VARIABLES[name].profile else (NCOL,)
            if var.shape != shape:
                raise RawDataError(f"{path}: {name} has shape {var.shape}, expected {shape}")
            try:
                values = np.ma.filled(var[:].astype(np.float64), np.nan)
            except (OSError, RuntimeError, IndexError) as err:
                raise RawDataError(f"{path}: cannot read {name} ({err})") from None
            bad = ~np.isfinite(values)
            if bad.any() and not allow_nonfinite:
                raise RawDataError(f"{path}: {name} has {int(bad.sum())} NaN/Inf values")
            out[name] = values
    return out


_A_LIQ = (-0.976195544e-15, -0.952447341e-13, 0.640689451e-10, 0.206739458e-7, 0.302950461e-5,
          0.264847430e-3, 0.142986287e-1, 0.443987641, 6.11239921)  # fmt: skip
_A_ICE = (0.252751365e-14, 0.146898966e-11, 0.385852041e-9, 0.602588177e-7, 0.615021634e-5,
          0.420895665e-3, 0.188439774e-1, 0.503160820, 6.11147274)  # fmt: skip
_T0 = 273.16


def _e_liquid(t: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure over liquid (Pa): the polynomial fit ClimSim uses."""
    return 100.0 * np.polyval(_A_LIQ, np.maximum(-80.0, t - _T0))


def _e_ice(t: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure over ice (Pa), piecewise as in ClimSim."""
    dt = np.maximum(-100.0, t - _T0)
    cold = 100.0 * (0.00763685 + dt * (0.000151069 + dt * 7.48215e-07))
    return np.where(t > 273.15, _e_liquid(t), np.where(t <= 185.0, cold, 100.0 * np.polyval(_A_ICE, t - _T0)))


def relative_humidity(t: np.ndarray, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``q / q_sat(T, p)`` exactly as the official ClimSim ``data_utils`` computes ``state_rh``.

    Saturation over liquid above 273.16 K, over ice below 253.16 K, blended linearly between;
    ``q_sat = Rd e_sat / (Rv p)`` with Rd = 287 and Rv = 461 J/kg/K.
    """
    omega = np.clip((t - 253.16) / (_T0 - 253.16), 0.0, 1.0)
    e_sat = omega * _e_liquid(t) + (1.0 - omega) * _e_ice(t)
    return q / (287.0 * e_sat / (461.0 * p))


_DERIVE = {"state_rh": relative_humidity}
"""How each derived input is computed from its sources (in the order of ``DERIVED_INPUTS``)."""


def with_derived(values: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``values`` plus the derived inputs among ``names`` (:data:`tfpipe.data.schema.DERIVED_INPUTS`)."""
    return values | {
        n: _DERIVE[n](*(values[s] for s in DERIVED_INPUTS[n])) for n in names if n in DERIVED_INPUTS
    }


def _flatten(values: dict[str, np.ndarray], names: tuple[str, ...], dtype: type = np.float64) -> np.ndarray:
    """(ncol, columns) matrix of ``dtype``: each profile's 60 levels, then each scalar, in ``names``
    order. Each variable is transposed and converted in one pass into the matrix (no float64 copy of
    the whole matrix when ``dtype`` is float32: the values are those of ``astype`` on it)."""
    widths = [values[n].shape[0] if values[n].ndim == 2 else 1 for n in names]
    out = np.empty((NCOL, sum(widths)), dtype=dtype)
    start = 0
    for name, width in zip(names, widths, strict=True):
        value = values[name]
        out[:, start : start + width] = value.T if value.ndim == 2 else value[:, None]
        start += width
    return out


def target_values(mli: dict[str, np.ndarray], mlo: dict[str, np.ndarray], schema: Schema) -> dict:
    """Each target variable of ``schema`` from mli and mlo values, float64 (levels x ncol, or ncol)."""
    values = {}
    for name in schema.targets:
        source = target_source(name)
        if source.is_tendency:
            values[name] = (mlo[source.state] - mli[source.state]) / TIMESTEP_S
        else:
            values[name] = mlo[name]
    return values


def build_targets(mli: dict[str, np.ndarray], mlo: dict[str, np.ndarray], schema: Schema) -> np.ndarray:
    """(ncol, n_targets) float64 targets from mli and mlo values."""
    return _flatten(target_values(mli, mlo, schema), schema.targets)


def read_pair(
    mli_path: str,
    mlo_path: str,
    schema: Schema,
    mli_data: bytes | None = None,
    mlo_data: bytes | None = None,
    allow_nonfinite: bool = False,
) -> RawSamples:
    """Inputs and targets of every column of one time step (``*_data``: see :func:`read_variables`)."""
    return samples_of(
        read_pair_variables(mli_path, mlo_path, schema, mli_data, mlo_data, allow_nonfinite), schema
    )


@dataclass(frozen=True)
class PairVariables:
    """The variables of one (mli, mlo) pair as read, before flattening."""

    mli: dict[str, np.ndarray]
    mlo: dict[str, np.ndarray]
    time: ModelTime


def read_pair_variables(
    mli_path: str,
    mlo_path: str,
    schema: Schema,
    mli_data: bytes | None = None,
    mlo_data: bytes | None = None,
    allow_nonfinite: bool = False,
) -> PairVariables:
    """The reading half of :func:`read_pair` (the netCDF part; see :func:`read_variables`)."""
    _, time = parse_raw_file_name(mli_path)
    mli = read_variables(mli_path, schema.mli_variables, mli_data, allow_nonfinite)
    mlo = read_variables(mlo_path, schema.mlo_variables, mlo_data, allow_nonfinite)
    return PairVariables(mli, mlo, time)


def float32_samples_of(
    pair: PairVariables, schema: Schema, float64_input: str, float64_target: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What an encoded block holds of one pair, built directly (no float64 matrices): float32 inputs
    and targets (equal to :func:`samples_of`'s cast to float32), and the ``float64_input`` and
    ``float64_target`` profiles in float64, (ncol, levels) each (ncol, 0) where the schema lacks them."""
    inputs = with_derived(pair.mli, schema.inputs)
    targets = target_values(pair.mli, pair.mlo, schema)

    def exact(values: dict[str, np.ndarray], name: str, names: tuple[str, ...]) -> np.ndarray:
        return np.ascontiguousarray(values[name].T) if name in names else np.empty((NCOL, 0))

    return (
        _flatten(inputs, schema.inputs, np.float32),
        _flatten(targets, schema.targets, np.float32),
        exact(inputs, float64_input, schema.inputs),
        exact(targets, float64_target, schema.targets),
    )


def samples_of(pair: PairVariables, schema: Schema) -> RawSamples:
    """The numpy half of :func:`read_pair`: flattened inputs (derived ones included) and targets."""
    mli, mlo, time = pair.mli, pair.mlo, pair.time
    return RawSamples(
        inputs=_flatten(with_derived(mli, schema.inputs), schema.inputs),
        targets=build_targets(mli, mlo, schema),
        ncol=np.arange(NCOL, dtype=np.int32),
        time=time,
    )
