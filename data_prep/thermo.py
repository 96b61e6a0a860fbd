"""Physical constants (E3SM values) and moist thermodynamics shared by the synthetic climate
and the toy column physics."""

from __future__ import annotations

import numpy as np

GRAVITY = 9.80616  # m/s2
CP = 1004.64  # J/kg/K, dry-air heat capacity
RD = 287.042  # J/kg/K, dry-air gas constant
RV = 461.505  # J/kg/K, water-vapour gas constant
LV = 2.501e6  # J/kg, latent heat of vaporisation
LF = 3.337e5  # J/kg, latent heat of fusion
EPS = RD / RV
SIGMA = 5.67e-8  # W/m2/K4, Stefan-Boltzmann
SOLAR_CONSTANT = 1361.0  # W/m2
RHO_WATER = 1000.0  # kg/m3
T_FREEZE = 273.15  # K
T_ICE = 253.15  # K: below this all condensate is ice


def ice_fraction(t: np.ndarray) -> np.ndarray:
    """Fraction of condensate that forms as ice: 0 above freezing, 1 below T_ICE, linear between."""
    return np.clip((T_FREEZE - t) / (T_FREEZE - T_ICE), 0.0, 1.0)


def saturation_vapour_pressure(t: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure (Pa), over liquid above freezing and ice below, blended."""
    liquid = 611.2 * np.exp(17.67 * (t - T_FREEZE) / (t - 29.65))
    ice = 611.2 * np.exp(22.46 * (t - T_FREEZE) / (t - 0.53))
    f = ice_fraction(t)
    return (1.0 - f) * liquid + f * ice


def saturation_specific_humidity(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Saturation specific humidity (kg/kg) at temperature ``t`` (K) and pressure ``p`` (Pa)."""
    es = saturation_vapour_pressure(t)
    return EPS * es / np.maximum(p - (1.0 - EPS) * es, es)


def latent_heat(t: np.ndarray) -> np.ndarray:
    """Effective latent heat of condensation (J/kg): vaporisation plus fusion for the ice part."""
    return LV + LF * ice_fraction(t)


def dqsat_dt(t: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Clausius-Clapeyron slope d(qsat)/dT (1/K), used to linearise saturation adjustment."""
    return latent_heat(t) * qs / (RV * t**2)
