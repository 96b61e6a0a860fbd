"""A toy column physics: the ML-output (mlo) state one 1200 s step after an mli state.

Deterministic (no random numbers), non-linear and vertically non-local, so that a model has
something real to learn and a better model does measurably better. Processes, in order:

1. Short-wave radiation: Beer-Lambert absorption by ozone, water vapour and cloud along the
   slant path (``1/cos z``); each layer's heating depends on the absorbers *above* it.
   Clouds scatter part of the direct beam into diffuse light. Surface fluxes ``SOLS``,
   ``SOLL`` (direct, visible / near-IR), ``SOLSD``, ``SOLLD`` (diffuse) and ``NETSW`` with the
   surface albedos.
2. Long-wave radiation: a grey two-stream without scattering; layer emissivity from water
   vapour, a well-mixed CO2-like absorber and cloud water. ``FLWDS`` is the downward flux at
   the surface; heating is the flux divergence, so every layer sees every other.
3. Boundary layer: the surface heat, moisture and momentum fluxes spread over the lowest
   100 hPa, and winds there mixed towards their layer mean.
4. Deep convection (Betts-Miller-like): a parcel with the moist static energy of the lowest
   levels; where it exceeds the saturation MSE aloft, temperature relaxes towards the
   parcel's moist adiabat and humidity towards 70 % RH over 2 h, with an energy correction
   so that heating equals the latent heat of the rain produced. Convective momentum mixing.
5. Large-scale condensation: saturation adjustment from Clausius-Clapeyron (linearised, one
   Newton step), liquid or ice by temperature.
6. Microphysics and precipitation: autoconversion of cloud liquid and ice above thresholds;
   precipitation falls through the column and partly re-evaporates in dry air below (cooling
   it); clouds evaporate in sub-saturated air, traces below 1e-12 kg/kg vanish entirely (as
   in the real upper levels, where ``ptend_q0002 = -state_q0002 / 1200``). ``PRECC`` is the
   surface precipitation rate (m/s), ``PRECSC`` its frozen part.
7. Middle atmosphere: Rayleigh drag on the winds growing with height above 300 hPa (a
   stand-in for gravity-wave drag), a sponge above 1 hPa, and water vapour produced by
   methane oxidation.
"""

from __future__ import annotations

import numpy as np

from data_prep import thermo
from tfpipe.data.grid import Grid
from tfpipe.data.schema import TIMESTEP_S

DT = float(TIMESTEP_S)
TAU_CONVECTION = 7200.0
TAU_PBL_MIXING = 3600.0
TAU_CLOUD_EVAPORATION = 3600.0
TAU_SPONGE = 5 * 86400.0
TAU_DRAG = 10 * 86400.0  # Rayleigh drag time scale at 1 hPa
TAU_METHANE = 100 * 86400.0  # methane oxidation time scale at 1 hPa
PBL_DEPTH = 10_000.0  # Pa
AUTOCONVERSION_LIQUID = 5e-5  # kg/kg
AUTOCONVERSION_ICE = 1e-5  # kg/kg
TRACE = 1e-12  # kg/kg: cloud water below this evaporates within the step
CONVECTIVE_RH = 0.7  # relative humidity of the convective reference profile
RAIN_EVAPORATION = 0.8  # fraction of rain evaporated per 100 hPa of fully dry air (e-folding)

# Mass absorption coefficients (m2/kg), tuned for realistic heating rates.
K_SW_OZONE = 40.0
K_SW_VAPOUR = 0.006
K_SW_CLOUD = 30.0
K_LW_VAPOUR = 0.09
K_LW_CO2 = 1.2e-4
K_LW_CLOUD = 60.0


def layer_mass(grid: Grid, ps: np.ndarray) -> np.ndarray:
    """Air mass per unit area of each layer (kg/m2), shape (lev, ncol)."""
    return np.diff(grid.pint(ps), axis=0) / thermo.GRAVITY


def shortwave(s: dict[str, np.ndarray], mass: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Heating rate (K/s) and the surface short-wave fluxes."""
    solin, mu = s["pbuf_SOLIN"], np.maximum(s["pbuf_COSZRS"], 0.05)
    cloud = s["state_q0002"] + s["state_q0003"]
    tau_abs = (K_SW_OZONE * s["pbuf_ozone"] + K_SW_VAPOUR * s["state_q0001"]) * mass
    tau_cloud = K_SW_CLOUD * cloud * mass
    above = np.vstack([np.zeros_like(mu), np.cumsum(tau_abs + 0.05 * tau_cloud, axis=0)])
    flux = solin * np.exp(-above / mu)  # downward flux at interfaces (ilev, ncol)
    heating = (flux[:-1] - flux[1:]) / (thermo.CP * mass)
    transmitted = flux[-1]
    scattering = 1.0 - np.exp(-tau_cloud.sum(0) / mu)
    direct, diffuse = transmitted * (1.0 - scattering), 0.75 * transmitted * scattering
    vapour_path = (s["state_q0001"] * mass).sum(0)
    nir = np.exp(-0.004 * vapour_path / mu)  # extra water-vapour absorption in the near IR
    fluxes = {
        "cam_out_SOLS": 0.5 * direct,
        "cam_out_SOLL": 0.5 * direct * nir,
        "cam_out_SOLSD": 0.5 * diffuse,
        "cam_out_SOLLD": 0.5 * diffuse * nir,
    }
    fluxes["cam_out_NETSW"] = sum(
        fluxes[f"cam_out_{flux}"] * (1 - s[f"cam_in_{albedo}"])
        for flux, albedo in (("SOLS", "ASDIR"), ("SOLL", "ALDIR"), ("SOLSD", "ASDIF"), ("SOLLD", "ALDIF"))
    )
    return heating, fluxes


def longwave(s: dict[str, np.ndarray], t: np.ndarray, mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heating rate (K/s) and downward long-wave flux at the surface (W/m2)."""
    cloud = s["state_q0002"] + s["state_q0003"]
    tau = (K_LW_VAPOUR * s["state_q0001"] + K_LW_CO2 + K_LW_CLOUD * cloud) * mass
    eps = 1.0 - np.exp(-1.66 * tau)
    emission = eps * thermo.SIGMA * t**4
    nlev = t.shape[0]
    down = np.zeros((nlev + 1, t.shape[1]))
    up = np.zeros_like(down)
    up[-1] = s["cam_in_LWUP"]
    for k in range(nlev):
        down[k + 1] = down[k] * (1.0 - eps[k]) + emission[k]
    for k in range(nlev - 1, -1, -1):
        up[k] = up[k + 1] * (1.0 - eps[k]) + emission[k]
    net_in = (down[:-1] - down[1:]) + (up[1:] - up[:-1])
    return net_in / (thermo.CP * mass), down[-1]


def _mix_towards_mean(x: np.ndarray, weights: np.ndarray, rate: float) -> np.ndarray:
    """Relax ``x`` towards its ``weights``-weighted column mean where weights > 0."""
    total = np.maximum(weights.sum(0), 1e-30)
    mean = (x * weights).sum(0) / total
    return np.where(weights > 0.0, x + rate * (mean - x), x)


def boundary_layer(s, t, q, u, v, mass, pmid, ps):
    """Spread surface fluxes over the lowest PBL_DEPTH and mix momentum there."""
    in_pbl = (pmid > ps - PBL_DEPTH).astype(float)
    pbl_mass = (mass * in_pbl).sum(0)
    t = t + in_pbl * s["pbuf_SHFLX"] * DT / (thermo.CP * pbl_mass)
    q = np.maximum(q + in_pbl * s["pbuf_LHFLX"] * DT / (thermo.LV * pbl_mass), 0.0)
    u = u + in_pbl * s["pbuf_TAUX"] * DT / pbl_mass
    v = v + in_pbl * s["pbuf_TAUY"] * DT / pbl_mass
    rate = DT / TAU_PBL_MIXING
    return t, q, _mix_towards_mean(u, mass * in_pbl, rate), _mix_towards_mean(v, mass * in_pbl, rate)


def geopotential_height(t: np.ndarray, pmid: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """Height (m) of each level above the surface, hydrostatic from the bottom up."""
    log_p = np.log(np.vstack([pmid, ps[None, :]]))
    t_ext = np.vstack([t, t[-1:]])
    dz = thermo.RD / thermo.GRAVITY * 0.5 * (t_ext[:-1] + t_ext[1:]) * (log_p[1:] - log_p[:-1])
    return np.cumsum(dz[::-1], axis=0)[::-1]


def convection(t, q, u, v, mass, pmid, ps):
    """Betts-Miller-like deep convection; returns updated fields and rain (kg/m2/s) per level."""
    z = geopotential_height(t, pmid, ps)
    qs = thermo.saturation_specific_humidity(t, pmid)
    h_sat = thermo.CP * t + thermo.GRAVITY * z + thermo.LV * qs
    low = slice(-3, None)
    h = thermo.CP * t + thermo.GRAVITY * z + thermo.LV * q
    h_parcel = (h[low] * mass[low]).sum(0) / mass[low].sum(0)
    buoyant = (h_parcel > h_sat) & (pmid > 15_000.0)
    top = np.where(buoyant.any(0), np.argmax(buoyant, axis=0), t.shape[0])  # highest buoyant level
    layer = (np.arange(t.shape[0])[:, None] >= top[None, :]) & (pmid < ps - 0.5 * PBL_DEPTH)
    gamma = 1.0 + thermo.LV / thermo.CP * thermo.dqsat_dt(t, qs)
    t_ref = t + (h_parcel - h_sat) / (thermo.CP * gamma)
    q_ref = CONVECTIVE_RH * thermo.saturation_specific_humidity(t_ref, pmid)
    rate = DT / TAU_CONVECTION
    dq = np.where(layer, rate * (q_ref - q), 0.0)
    dt = np.where(layer, rate * (t_ref - t), 0.0)
    rain = -(dq * mass).sum(0)  # kg/m2 over the step
    active = rain > 0.0
    # Energy correction: total heating equals the latent heat released by the rain.
    layer_mass = np.maximum((mass * layer).sum(0), 1e-30)
    correction = (thermo.LV * rain - thermo.CP * (dt * mass).sum(0)) / (thermo.CP * layer_mass)
    dt = np.where(layer & active, dt + correction, 0.0)
    dq = np.where(active, dq, 0.0)
    condensed = np.where(active, np.maximum(-dq, 0.0) * mass, 0.0) / DT  # kg/m2/s per level
    mix = (layer & active).astype(float) * mass
    u = _mix_towards_mean(u, mix, DT / (2 * TAU_CONVECTION))
    v = _mix_towards_mean(v, mix, DT / (2 * TAU_CONVECTION))
    return t + dt, np.maximum(q + dq, 0.0), u, v, condensed


def saturation_adjustment(t, q, ql, qi, pmid):
    """Condense vapour above saturation into liquid or ice (one linearised Newton step)."""
    qs = thermo.saturation_specific_humidity(t, pmid)
    excess = np.maximum(q - qs, 0.0) / (1.0 + thermo.latent_heat(t) / thermo.CP * thermo.dqsat_dt(t, qs))
    frozen = thermo.ice_fraction(t)
    t = t + thermo.latent_heat(t) * excess / thermo.CP
    return t, q - excess, ql + (1.0 - frozen) * excess, qi + frozen * excess


def microphysics(t, q, ql, qi, mass, pmid, convective_rain):
    """Autoconversion, falling precipitation with evaporation, cloud evaporation.

    Returns updated (t, q, ql, qi) and the surface rain and snow rates (kg/m2/s).
    """
    auto_l = np.maximum(ql - AUTOCONVERSION_LIQUID, 0.0) * 0.5
    auto_i = np.maximum(qi - AUTOCONVERSION_ICE, 0.0) * 0.5
    ql, qi = ql - auto_l, qi - auto_i
    rain_source = auto_l * mass / DT + convective_rain * (1.0 - thermo.ice_fraction(t))
    snow_source = auto_i * mass / DT + convective_rain * thermo.ice_fraction(t)
    rain = np.zeros_like(t[0])
    snow = np.zeros_like(t[0])
    for k in range(t.shape[0]):  # top to bottom
        rain, snow = rain + rain_source[k], snow + snow_source[k]
        qs = thermo.saturation_specific_humidity(t[k], pmid[k])
        deficit = np.maximum(qs - q[k], 0.0)
        dryness = deficit / np.maximum(qs, 1e-12)
        evap_flux = rain * (1.0 - np.exp(-RAIN_EVAPORATION * dryness * mass[k] * thermo.GRAVITY / 1e4))
        evap_rain = np.minimum(evap_flux * DT / mass[k], 0.5 * deficit)
        rain = rain - evap_rain * mass[k] / DT
        q[k] = q[k] + evap_rain
        t[k] = t[k] - thermo.LV * evap_rain / thermo.CP
        if k < t.shape[0] - 1:
            melting = t[k] > thermo.T_FREEZE + 1.0
            rain, snow = np.where(melting, rain + snow, rain), np.where(melting, 0.0, snow)
    # Clouds evaporate in sub-saturated air; traces vanish entirely.
    qs = thermo.saturation_specific_humidity(t, pmid)
    dry = q < qs
    frac = 1.0 - np.exp(-DT / TAU_CLOUD_EVAPORATION)
    evap_l = np.where(ql < TRACE, ql, np.where(dry, np.minimum(frac * ql, qs - q), 0.0))
    q, ql = q + evap_l, ql - evap_l
    evap_i = np.where(qi < TRACE, qi, np.where(dry, np.minimum(frac * qi, np.maximum(qs - q, 0.0)), 0.0))
    q, qi = q + evap_i, qi - evap_i
    t = t - (thermo.LV * evap_l + (thermo.LV + thermo.LF) * evap_i) / thermo.CP
    return t, q, np.maximum(ql, 0.0), np.maximum(qi, 0.0), rain, snow


def middle_atmosphere(u, v, q, ch4, cosz, pmid):
    """Gravity-wave drag as Rayleigh friction, faster with height, and water vapour from
    (photolytic) methane oxidation; a sponge above 1 hPa."""
    log_height = np.clip(np.log(30_000.0 / pmid), 0.0, None) / np.log(30_000.0 / 100.0)
    drag = DT / TAU_DRAG * log_height
    drag = np.where(pmid < 100.0, drag + DT / TAU_SPONGE, drag)
    sunlight = 0.5 + np.maximum(cosz, 0.0)
    oxidation = 2.0 * (18.0 / 28.96) * ch4 * DT / TAU_METHANE * log_height * sunlight
    return u * (1.0 - drag), v * (1.0 - drag), q + oxidation


def step(grid: Grid, s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mlo variables after one physics step from mli state ``s`` (nothing is modified)."""
    ps, pmid = s["state_ps"], s["state_pmid"]
    mass = layer_mass(grid, ps)
    t, q = s["state_t"].copy(), s["state_q0001"].copy()
    ql, qi = s["state_q0002"].copy(), s["state_q0003"].copy()
    u, v = s["state_u"].copy(), s["state_v"].copy()

    sw_heating, sw_fluxes = shortwave(s, mass)
    lw_heating, flwds = longwave(s, t, mass)
    t = t + DT * (sw_heating + lw_heating)
    t, q, u, v = boundary_layer(s, t, q, u, v, mass, pmid, ps)
    t, q, u, v, convective_rain = convection(t, q, u, v, mass, pmid, ps)
    t, q, ql, qi = saturation_adjustment(t, q, ql, qi, pmid)
    t, q, ql, qi, rain, snow = microphysics(t, q, ql, qi, mass, pmid, convective_rain)
    u, v, q = middle_atmosphere(u, v, q, s["pbuf_CH4"], s["pbuf_COSZRS"], pmid)

    out = {
        "state_t": t,
        "state_q0001": q,
        "state_q0002": ql,
        "state_q0003": qi,
        "state_u": u,
        "state_v": v,
        "state_ps": ps.copy(),
        "state_pmid": pmid.copy(),
        "cam_out_FLWDS": flwds,
        "cam_out_PRECC": (rain + snow) / thermo.RHO_WATER,
        "cam_out_PRECSC": snow / thermo.RHO_WATER,
    }
    out.update(sw_fluxes)
    return out
