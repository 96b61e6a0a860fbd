"""The one source of truth for ClimSim variables, levels and column order.

Every other module asks this one for variable names, units, profile/scalar shape, the
flattened column order of the Kaggle CSV, where each target comes from in the raw files,
and which targets are masked or replaced. No other module lists variable names.

Four schemas are defined (the lists of the official ClimSim ``climsim_utils/data_utils.py``):

* ``v1``: the ClimSim paper's low-res subset (124 inputs, 128 targets).
* ``v2``: the full low-res variable set (557 inputs, 368 targets).
* ``v2_rh``: v2 with relative humidity ``state_rh`` in place of ``state_q0001`` and the gas
  profiles moved before the scalars (557 / 368); ``state_rh`` is derived from ``state_t``,
  ``state_q0001`` and ``state_pmid`` of the raw input file (see :data:`DERIVED_INPUTS`).
* ``kaggle``: the LEAP competition layout = v2 without ``cam_in_SNOWHICE`` (556 / 368).

Profiles have 60 levels, level 0 at the top of the atmosphere; a profile ``NAME``
expands to columns ``NAME_0 .. NAME_59``; a scalar keeps its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

NLEV = 60
"""Vertical levels of the low-res grid (``lev``); interfaces (``ilev``) are NLEV + 1."""

NCOL = 384
"""Grid columns of the low-res ne4pg2 grid (``ncol``)."""

TIMESTEP_S = 1200
"""Seconds between two raw files; ``ptend_X = (mlo.state_X - mli.state_X) / TIMESTEP_S``."""

STEPS_PER_DAY = 86400 // TIMESTEP_S

ZERO_WEIGHT_TOP_LEVELS = 12
"""Kaggle scored ``ptend_{q0001,q0002,q0003,u,v}`` with weight 0 on levels 0..11."""

Q0002_REPLACEMENT_LEVELS: tuple[int, ...] = tuple(range(12, 28))
"""Default levels where ``ptend_q0002_k = -state_q0002_k / 1200`` replaces the model.

state_q0002 (cloud liquid) at these cold upper levels is tiny (down to ~1e-50, below
float32) and is removed within one step, so the top LEAP solutions computed the tendency instead of
predicting it. Levels 0..11 are zero-weight anyway; 12..27 follows those solutions.
"""


@dataclass(frozen=True)
class Variable:
    """One ClimSim variable as stored in the raw netCDF files."""

    name: str
    profile: bool
    units: str
    long_name: str

    @property
    def width(self) -> int:
        """Number of flattened columns: NLEV for a profile, 1 for a scalar."""
        return NLEV if self.profile else 1

    @property
    def dims(self) -> tuple[str, ...]:
        """Dimensions in the raw files: ``(lev, ncol)`` or ``(ncol,)``."""
        return ("lev", "ncol") if self.profile else ("ncol",)

    def columns(self) -> tuple[str, ...]:
        """Flattened column names: ``NAME_0..NAME_59`` or ``NAME``."""
        if self.profile:
            return tuple(f"{self.name}_{k}" for k in range(NLEV))
        return (self.name,)


def _v(name: str, profile: bool, units: str, long_name: str) -> Variable:
    return Variable(name, profile, units, long_name)


# Every variable tfpipe reads or writes, with the units of the real E3SM-MMF files.
_CATALOGUE: tuple[Variable, ...] = (
    # State profiles (mli: before the physics step; mlo: after it).
    _v("state_t", True, "K", "air temperature"),
    _v("state_q0001", True, "kg/kg", "specific humidity (water vapour)"),
    _v("state_q0002", True, "kg/kg", "cloud liquid water mixing ratio"),
    _v("state_q0003", True, "kg/kg", "cloud ice mixing ratio"),
    _v("state_u", True, "m/s", "zonal wind"),
    _v("state_v", True, "m/s", "meridional wind"),
    _v("state_pmid", True, "Pa", "mid-level pressure"),
    _v("state_rh", True, "1", "relative humidity (derived: q / q_sat(T, p) as ClimSim computes it)"),
    # Scalars of the input state and surface.
    _v("state_ps", False, "Pa", "surface pressure"),
    _v("pbuf_SOLIN", False, "W/m2", "top-of-atmosphere solar insolation"),
    _v("pbuf_LHFLX", False, "W/m2", "surface latent heat flux"),
    _v("pbuf_SHFLX", False, "W/m2", "surface sensible heat flux"),
    _v("pbuf_TAUX", False, "N/m2", "zonal surface stress"),
    _v("pbuf_TAUY", False, "N/m2", "meridional surface stress"),
    _v("pbuf_COSZRS", False, "1", "cosine of the solar zenith angle"),
    _v("cam_in_ALDIF", False, "1", "albedo, long-wave diffuse"),
    _v("cam_in_ALDIR", False, "1", "albedo, long-wave direct"),
    _v("cam_in_ASDIF", False, "1", "albedo, short-wave diffuse"),
    _v("cam_in_ASDIR", False, "1", "albedo, short-wave direct"),
    _v("cam_in_LWUP", False, "W/m2", "upward long-wave flux at the surface"),
    _v("cam_in_ICEFRAC", False, "1", "sea-ice area fraction"),
    _v("cam_in_LANDFRAC", False, "1", "land area fraction"),
    _v("cam_in_OCNFRAC", False, "1", "ocean area fraction"),
    _v("cam_in_SNOWHICE", False, "m", "snow depth over ice"),
    _v("cam_in_SNOWHLAND", False, "m", "snow depth (liquid water equivalent) over land"),
    # Trace-gas profiles.
    _v("pbuf_ozone", True, "mol/mol", "ozone volume mixing ratio"),
    _v("pbuf_CH4", True, "mol/mol", "methane volume mixing ratio"),
    _v("pbuf_N2O", True, "mol/mol", "nitrous oxide volume mixing ratio"),
    # Targets: tendencies over one physics step.
    _v("ptend_t", True, "K/s", "heating tendency"),
    _v("ptend_q0001", True, "kg/kg/s", "moistening tendency"),
    _v("ptend_q0002", True, "kg/kg/s", "cloud liquid tendency"),
    _v("ptend_q0003", True, "kg/kg/s", "cloud ice tendency"),
    _v("ptend_u", True, "m/s2", "zonal wind tendency"),
    _v("ptend_v", True, "m/s2", "meridional wind tendency"),
    # Targets: surface fluxes written by the physics (mlo only).
    _v("cam_out_NETSW", False, "W/m2", "net short-wave flux at the surface"),
    _v("cam_out_FLWDS", False, "W/m2", "downward long-wave flux at the surface"),
    _v("cam_out_PRECSC", False, "m/s", "snow rate (liquid water equivalent)"),
    _v("cam_out_PRECC", False, "m/s", "precipitation rate"),
    _v("cam_out_SOLS", False, "W/m2", "direct visible short-wave flux to the surface"),
    _v("cam_out_SOLL", False, "W/m2", "direct near-IR short-wave flux to the surface"),
    _v("cam_out_SOLSD", False, "W/m2", "diffuse visible short-wave flux to the surface"),
    _v("cam_out_SOLLD", False, "W/m2", "diffuse near-IR short-wave flux to the surface"),
)

VARIABLES: dict[str, Variable] = {v.name: v for v in _CATALOGUE}

TENDENCY_PREFIX = "ptend_"
STATE_PREFIX = "state_"

# Variable groups (names only; shapes and units come from VARIABLES).
_STATE_PROFILES = ("state_t", "state_q0001", "state_q0002", "state_q0003", "state_u", "state_v")
_V1_SCALARS = ("state_ps", "pbuf_SOLIN", "pbuf_LHFLX", "pbuf_SHFLX")
_V2_SCALARS = _V1_SCALARS + (
    "pbuf_TAUX",
    "pbuf_TAUY",
    "pbuf_COSZRS",
    "cam_in_ALDIF",
    "cam_in_ALDIR",
    "cam_in_ASDIF",
    "cam_in_ASDIR",
    "cam_in_LWUP",
    "cam_in_ICEFRAC",
    "cam_in_LANDFRAC",
    "cam_in_OCNFRAC",
    "cam_in_SNOWHICE",
    "cam_in_SNOWHLAND",
)
_GAS_PROFILES = ("pbuf_ozone", "pbuf_CH4", "pbuf_N2O")
_CAM_OUT = (
    "cam_out_NETSW",
    "cam_out_FLWDS",
    "cam_out_PRECSC",
    "cam_out_PRECC",
    "cam_out_SOLS",
    "cam_out_SOLL",
    "cam_out_SOLSD",
    "cam_out_SOLLD",
)
_TENDENCIES = tuple(TENDENCY_PREFIX + s[len(STATE_PREFIX) :] for s in _STATE_PROFILES)

DERIVED_INPUTS: dict[str, tuple[str, ...]] = {"state_rh": ("state_t", "state_q0001", "state_pmid")}
"""Inputs computed while reading a raw input file, from these of its variables."""

ENERGY_CONVERSION: dict[str, str] = {
    "ptend_t": "cp", "ptend_q0001": "lv", "ptend_q0002": "lv", "ptend_q0003": "lv",
    "ptend_u": "wind", "ptend_v": "wind",
    "cam_out_NETSW": "1", "cam_out_FLWDS": "1", "cam_out_SOLS": "1", "cam_out_SOLL": "1",
    "cam_out_SOLSD": "1", "cam_out_SOLLD": "1",
    "cam_out_PRECSC": "lv_rho_water", "cam_out_PRECC": "lv_rho_water",
}  # fmt: skip
"""How the ClimSim evaluation turns each target into an energy flux (``tfpipe.evaluate.climsim_metrics``):
times ``cp`` (heating), ``lv`` (moisture tendencies), ``lv x rho_water`` (precipitation rates), 1
(radiative fluxes), or the wind-tendency magnitude (the wind tendencies)."""

MLI_EXTRA = ("state_pmid",)
"""Variables the raw input (mli) files carry besides the schema inputs."""

MLO_VARIABLES = _STATE_PROFILES + ("state_ps", "state_pmid") + _CAM_OUT
"""Variables of the raw output (mlo) files: the state after the physics step and cam_out_*."""


@dataclass(frozen=True)
class TargetSource:
    """Where a target comes from in a raw (mli, mlo) pair.

    ``state`` is set for tendencies: ``(mlo[state] - mli[state]) / TIMESTEP_S``; otherwise
    the target is ``mlo[name]`` as it is.
    """

    name: str
    state: str | None

    @property
    def is_tendency(self) -> bool:
        return self.state is not None


def target_source(name: str) -> TargetSource:
    """How to compute target variable ``name`` from the raw files."""
    if name not in VARIABLES:
        raise KeyError(f"unknown variable {name!r}")
    if name.startswith(TENDENCY_PREFIX):
        state = STATE_PREFIX + name[len(TENDENCY_PREFIX) :]
        if state not in VARIABLES:
            raise KeyError(f"tendency {name!r} has no state variable {state!r}")
        return TargetSource(name, state)
    if name in _CAM_OUT:
        return TargetSource(name, None)
    raise KeyError(f"{name!r} is not a target variable")


@dataclass(frozen=True)
class Schema:
    """An ordered set of input and target variables and their flattened columns."""

    name: str
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    zero_weight_levels: int = 0
    """Top levels of ptend_{q0001,q0002,q0003,u,v} that carry weight 0 in the score."""

    def __post_init__(self) -> None:
        unknown = [v for v in self.inputs + self.targets if v not in VARIABLES]
        if unknown:
            raise KeyError(f"schema {self.name!r}: unknown variables {unknown}")

    @cached_property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(c for v in self.inputs for c in VARIABLES[v].columns())

    @cached_property
    def target_columns(self) -> tuple[str, ...]:
        return tuple(c for v in self.targets for c in VARIABLES[v].columns())

    @property
    def columns(self) -> tuple[str, ...]:
        """All data columns in CSV order: inputs then targets (``sample_id`` not included)."""
        return self.input_columns + self.target_columns

    @property
    def n_inputs(self) -> int:
        return len(self.input_columns)

    @property
    def n_targets(self) -> int:
        return len(self.target_columns)

    @property
    def input_profiles(self) -> tuple[str, ...]:
        return tuple(v for v in self.inputs if VARIABLES[v].profile)

    @property
    def input_scalars(self) -> tuple[str, ...]:
        return tuple(v for v in self.inputs if not VARIABLES[v].profile)

    @property
    def target_profiles(self) -> tuple[str, ...]:
        return tuple(v for v in self.targets if VARIABLES[v].profile)

    @property
    def target_scalars(self) -> tuple[str, ...]:
        return tuple(v for v in self.targets if not VARIABLES[v].profile)

    @property
    def tendency_targets(self) -> tuple[str, ...]:
        """Targets computed as ``(mlo.state_X - mli.state_X) / TIMESTEP_S``."""
        return tuple(v for v in self.targets if target_source(v).is_tendency)

    @property
    def mli_variables(self) -> tuple[str, ...]:
        """Variables needed from an mli file: the inputs and the states behind tendencies."""
        states = tuple(target_source(v).state for v in self.tendency_targets)
        read = tuple(s for v in self.inputs for s in DERIVED_INPUTS.get(v, (v,)))
        return tuple(dict.fromkeys(read + states))  # type: ignore[arg-type]

    @property
    def mlo_variables(self) -> tuple[str, ...]:
        """Variables needed from an mlo file."""
        return tuple(target_source(v).state or v for v in self.targets)

    def input_slice(self, variable: str) -> slice:
        """Column range of ``variable`` in the flattened inputs."""
        return _slice_of(self.inputs, variable)

    def target_slice(self, variable: str) -> slice:
        """Column range of ``variable`` in the flattened targets."""
        return _slice_of(self.targets, variable)

    @cached_property
    def zero_weight_targets(self) -> tuple[str, ...]:
        """Target columns scored with weight 0 (Kaggle: 60 columns)."""
        names = []
        for v in self.targets:
            if v in _TENDENCIES and v != "ptend_t":
                names += [f"{v}_{k}" for k in range(self.zero_weight_levels)]
        return tuple(names)

    def target_weights(self) -> tuple[float, ...]:
        """Score weight per target column: 0.0 for zero-weight targets, else 1.0."""
        zero = set(self.zero_weight_targets)
        return tuple(0.0 if c in zero else 1.0 for c in self.target_columns)

    def q0002_replacement_columns(
        self, levels: tuple[int, ...] = Q0002_REPLACEMENT_LEVELS
    ) -> tuple[tuple[str, str], ...]:
        """``(target column, input column)`` pairs for ``ptend_q0002_k = -state_q0002_k/1200``."""
        if "ptend_q0002" not in self.targets or "state_q0002" not in self.inputs:
            return ()
        for k in levels:
            if not 0 <= k < NLEV:
                raise ValueError(f"replacement level {k} outside 0..{NLEV - 1}")
        return tuple((f"ptend_q0002_{k}", f"state_q0002_{k}") for k in levels)


def _slice_of(variables: tuple[str, ...], name: str) -> slice:
    start = 0
    for v in variables:
        width = VARIABLES[v].width
        if v == name:
            return slice(start, start + width)
        start += width
    raise KeyError(f"{name!r} is not in {variables}")


V1 = Schema(
    name="v1",
    inputs=("state_t", "state_q0001") + _V1_SCALARS,
    targets=("ptend_t", "ptend_q0001") + _CAM_OUT,
)
V2 = Schema(
    name="v2",
    inputs=_STATE_PROFILES + _V2_SCALARS + _GAS_PROFILES,
    targets=_TENDENCIES + _CAM_OUT,
    zero_weight_levels=ZERO_WEIGHT_TOP_LEVELS,
)
V2_RH = Schema(
    name="v2_rh",
    inputs=("state_t", "state_rh") + _STATE_PROFILES[2:] + _GAS_PROFILES + _V2_SCALARS,
    targets=V2.targets,
    zero_weight_levels=ZERO_WEIGHT_TOP_LEVELS,
)
KAGGLE = Schema(
    name="kaggle",
    inputs=tuple(v for v in V2.inputs if v != "cam_in_SNOWHICE"),
    targets=V2.targets,
    zero_weight_levels=ZERO_WEIGHT_TOP_LEVELS,
)

SCHEMAS: dict[str, Schema] = {s.name: s for s in (V1, V2, V2_RH, KAGGLE)}

MLI_VARIABLES = V2.inputs + MLI_EXTRA
"""Variables of a raw input (mli) file: every v2 input plus the extras."""


def get_schema(name: str) -> Schema:
    """Look a schema up by name (``v1``, ``v2``, ``v2_rh``, ``kaggle``) with a clear error."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown schema {name!r}; choose one of {sorted(SCHEMAS)}") from None


#: Auxiliary space-time targets derived from each sample's grid column and time (not scored):
#: latitude, longitude, day of year and time of day, each as sin/cos so that they are continuous.
AUX_TARGETS: tuple[str, ...] = (
    "lat_sin",
    "lat_cos",
    "lon_sin",
    "lon_cos",
    "doy_sin",
    "doy_cos",
    "tod_sin",
    "tod_cos",
)
