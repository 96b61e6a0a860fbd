"""A synthetic climate: the ML-input (mli) state of every column at any model time.

Realistic magnitudes per variable, from simple closed forms:

* a fixed planet: smooth continents (~30 % land, Antarctica), orography lowering the
  surface pressure to ~720 hPa on the highest ground, sea ice poleward of ~58 degrees;
* the sun: declination from the day of the year, hour angle from the time of day and
  longitude, giving ``pbuf_SOLIN`` and ``pbuf_COSZRS``;
* temperature: a surface temperature from latitude, season, land diurnal cycle and weather,
  a 6.5 K/km troposphere, a tropopause at 195-220 K, a stratosphere warming to ~260 K at
  1 hPa and a mesosphere cooling above;
* humidity from a relative-humidity profile times saturation, ~2-4 ppm in the stratosphere;
  liquid (``q0002``) and ice (``q0003``) clouds where the air is near saturation, and the
  vanishing traces (1e-50 .. 1e-30 kg/kg) that the real data holds at the upper levels;
* winds: subtropical jets, trades and westerlies, a polar-night jet;
* surface: bulk-formula heat fluxes and stresses, CAM-like albedos (1 at night, as in
  the real files), ``cam_in_SNOWHICE`` = 1e30 (the fill value) where there is no sea ice;
* trace gases: ozone peaking near 10 hPa, CH4 and N2O well mixed below 100 hPa.

Weather is a sum of travelling planetary waves (random but fixed per seed) plus white noise
drawn from a generator seeded by ``(seed, step)``, so any step can be generated alone,
deterministically, in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep import thermo
from tfpipe.data.grid import Grid
from tfpipe.data.rawtree import DAYS_PER_YEAR, SECONDS_PER_DAY, ModelTime

FILL_VALUE = 1.0e30  # E3SM's fill value, seen in real cam_in_SNOWHICE


@dataclass(frozen=True)
class Waves:
    """A few travelling waves: value(lat, lon, t) in roughly [-1, 1]."""

    wavenumber: np.ndarray
    omega: np.ndarray  # rad/s
    phase: np.ndarray
    lat_centre: np.ndarray  # radians
    amplitude: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, n: int = 6) -> Waves:
        amplitude = rng.uniform(0.5, 1.0, n)
        return cls(
            wavenumber=rng.integers(1, 8, n).astype(float),
            omega=np.deg2rad(rng.uniform(-6.0, 15.0, n)) / SECONDS_PER_DAY,
            phase=rng.uniform(0.0, 2 * np.pi, n),
            lat_centre=np.deg2rad(rng.uniform(-60.0, 60.0, n)),
            amplitude=amplitude / amplitude.sum(),
        )

    def __call__(self, lat: np.ndarray, lon: np.ndarray, seconds: float) -> np.ndarray:
        arg = self.wavenumber[:, None] * lon[None, :] - self.omega[:, None] * seconds
        envelope = np.exp(-(((lat[None, :] - self.lat_centre[:, None]) / 0.45) ** 2))
        return (self.amplitude[:, None] * np.cos(arg + self.phase[:, None]) * envelope).sum(0) * 1.6


class SyntheticClimate:
    """The mli state of all grid columns at a model time; deterministic for a seed."""

    def __init__(self, grid: Grid, seed: int = 0) -> None:
        self.grid = grid
        self.seed = seed
        self.lat = np.deg2rad(grid.lat)
        self.lon = np.deg2rad(grid.lon)
        rng = np.random.default_rng([seed, 0x5EED])
        self.waves = {k: Waves.random(rng) for k in ("t", "q", "u", "v", "ps", "cloud")}
        lat, lon = self.lat, self.lon
        continents = (
            0.55 * np.sin(2 * lon + 0.6) * np.cos(lat)
            + 0.35 * np.sin(3 * lat + lon)
            + 0.25 * np.cos(lon - 1.0) * np.sin(2 * lat)
        )
        self.landfrac = np.clip(2.5 * (continents - 0.12), 0.0, 1.0)
        self.landfrac[np.rad2deg(lat) < -66.0] = 1.0  # Antarctica
        height = 2800.0 * self.landfrac * np.clip(np.cos(3 * lon) * np.cos(2 * lat), 0.0, 1.0) ** 2
        height[np.rad2deg(lat) < -66.0] = 2500.0
        self.surface_height = height
        self.ps_mean = 101_325.0 * np.exp(-height / 8000.0)

    def solar(self, time: ModelTime) -> tuple[np.ndarray, np.ndarray]:
        """Cosine of the solar zenith angle (may be negative) and TOA insolation (W/m2)."""
        doy = time.day_of_year + time.seconds / SECONDS_PER_DAY
        decl = np.deg2rad(23.44) * np.sin(2 * np.pi * (doy - 80.0) / DAYS_PER_YEAR)
        hour_angle = 2 * np.pi * time.seconds / SECONDS_PER_DAY + self.lon - np.pi
        cosz = np.sin(self.lat) * np.sin(decl) + np.cos(self.lat) * np.cos(decl) * np.cos(hour_angle)
        distance = 1.0 + 0.033 * np.cos(2 * np.pi * doy / DAYS_PER_YEAR)
        return cosz, thermo.SOLAR_CONSTANT * distance * np.maximum(cosz, 0.0)

    def state(self, time: ModelTime) -> dict[str, np.ndarray]:
        """Every mli variable (float64): profiles (lev, ncol), scalars (ncol)."""
        t_abs = float(time.absolute_seconds)
        rng = np.random.default_rng([self.seed, time.absolute_seconds // 1200])
        lat, lon, land = self.lat, self.lon, self.landfrac
        ncol = lat.size
        w = {k: wave(lat, lon, t_abs) for k, wave in self.waves.items()}
        season = np.cos(2 * np.pi * (time.day_of_year - 196.0) / DAYS_PER_YEAR)
        cosz, solin = self.solar(time)
        noise = lambda scale, shape=(ncol,): scale * rng.standard_normal(shape)  # noqa: E731

        # Surface.
        ps = np.clip(self.ps_mean + 1200.0 * w["ps"] + noise(150.0), 68_000.0, 105_500.0)
        pmid = self.grid.pmid(ps)
        ts = (
            301.0
            - 50.0 * np.sin(lat) ** 2
            + 12.0 * np.sin(lat) * season * (0.3 + land)
            + land * (9.0 * np.maximum(cosz, 0.0) - 3.0)
            - 0.0065 * self.surface_height
            + 4.0 * w["t"] * (0.4 + np.abs(np.sin(lat)))
            + noise(0.4)
        )
        sea_ice = (1.0 - land) * np.clip((np.abs(np.rad2deg(lat)) - 58.0) / 12.0, 0.0, 1.0)
        sea_ice *= np.clip(0.7 - 0.3 * np.sign(lat) * season, 0.0, 1.0)
        ocean = 1.0 - land - sea_ice

        # Temperature profile.
        t_trop = ts * (pmid / ps) ** (thermo.RD * 0.0065 / thermo.GRAVITY)
        t_tropopause = 197.0 + 22.0 * np.sin(lat) ** 2 + 2.0 * w["t"]
        log_p = np.log(pmid)
        warming = np.clip((np.log(10_000.0) - log_p) / np.log(100.0), 0.0, 1.0) ** 1.2
        mesosphere = np.clip((np.log(100.0) - log_p) / np.log(20.0), 0.0, 1.0)
        t_strat = t_tropopause + (58.0 + 10.0 * np.sin(lat) * season) * warming - 45.0 * mesosphere
        t = np.maximum(t_trop, t_strat) + 1.5 * w["t"] * (pmid / ps) + noise(0.3, pmid.shape)

        # Water: vapour, liquid (q0002), ice (q0003).
        sigma = pmid / ps
        rh = 0.88 * np.clip((sigma - 0.05) / 0.95, 0.0, 1.0) ** 0.6 - 0.25 * land * sigma**6
        rh = np.clip(rh + 0.18 * w["q"] + noise(0.04, pmid.shape), 0.02, 1.02)
        qsat = thermo.saturation_specific_humidity(t, pmid)
        stratosphere = np.clip((20_000.0 - pmid) / 10_000.0, 0.0, 1.0)
        q_strat = 2.6e-6 * (1.0 + 0.15 * w["q"]) * (1.0 + 0.05 * rng.standard_normal(pmid.shape))
        q = (1.0 - stratosphere) * rh * qsat + stratosphere * np.minimum(q_strat, 1.02 * qsat)
        cloudy = np.clip((rh - 0.82) / 0.2 + 0.3 * w["cloud"], 0.0, None) ** 2
        liquid = 1.5e-4 * cloudy * np.clip((t - 250.0) / 20.0, 0.0, 1.0)
        ice = 4.0e-5 * cloudy * np.clip((268.0 - t) / 30.0, 0.0, 1.0) * (pmid > 8_000.0)
        # Traces where there is no cloud: 1e-50..1e-30 above 100 hPa (below float32's range).
        upper = pmid < 10_000.0
        trace_liquid = np.where(
            upper,
            10.0 ** rng.uniform(-50.0, -30.0, pmid.shape),
            10.0 ** rng.uniform(-30.0, -14.0, pmid.shape),
        )
        q0002 = np.where(upper | (liquid == 0.0), trace_liquid, liquid)
        q0003 = np.where(upper | (ice == 0.0), 10.0 ** rng.uniform(-26.0, -13.0, pmid.shape), ice)

        # Winds.
        abs_lat = np.abs(np.rad2deg(lat))
        jet_core = np.exp(-((np.log(pmid / 22_000.0)) ** 2) / 0.8)
        jet = 38.0 * np.exp(-(((abs_lat - 35.0) / 12.0) ** 2)) * jet_core
        surface_wind = np.where(abs_lat < 30.0, -6.0, 7.0) * np.clip(sigma, 0.0, 1.0) ** 4
        polar_night = -45.0 * np.sin(lat) * season * np.exp(-((np.log(pmid / 300.0)) ** 2) / 3.0)
        u = jet + surface_wind + polar_night + 9.0 * w["u"] + noise(1.0, pmid.shape)
        v = 5.0 * w["v"] * (1.0 + sigma) + noise(1.0, pmid.shape)

        # Surface fluxes from bulk formulas with the lowest model level.
        t_low, q_low, u_low, v_low = t[-1], q[-1], u[-1], v[-1]
        speed = np.sqrt(u_low**2 + v_low**2 + 1.0)
        rho = ps / (thermo.RD * t_low)
        wetness = ocean + sea_ice + 0.35 * land
        shflx = rho * thermo.CP * 1.3e-3 * speed * (ts - t_low + 1.0) + noise(3.0)
        lhflx = rho * thermo.LV * 1.3e-3 * speed * np.maximum(
            wetness * thermo.saturation_specific_humidity(ts, ps) - q_low, -1e-3
        ) + noise(3.0)
        drag = rho * 1.5e-3 * speed
        day = cosz > 0.0
        mu = np.clip(cosz, 0.0, 1.0)
        ocean_direct = 0.026 / (mu**1.7 + 0.065) + 0.15 * (mu - 0.1) * (mu - 0.5) * (mu - 1.0)
        snow_cover = np.clip((thermo.T_FREEZE - ts) / 15.0, 0.0, 1.0) * land
        albedo = {}
        for name, surface_vis, surface_nir in (
            ("ASDIR", ocean_direct, 0.0),
            ("ASDIF", 0.06, 0.0),
            ("ALDIR", ocean_direct, 1.0),
            ("ALDIF", 0.06, 1.0),
        ):
            land_albedo = (0.12 + 0.16 * surface_nir) * (1 - snow_cover) + 0.7 * snow_cover
            mix = ocean * surface_vis + land * land_albedo + sea_ice * (0.72 - 0.12 * surface_nir)
            albedo[name] = np.where(day, np.clip(mix, 0.02, 0.95), 1.0)
        emissivity = 0.98 - 0.03 * land

        state = {
            "state_t": t,
            "state_q0001": q,
            "state_q0002": q0002,
            "state_q0003": q0003,
            "state_u": u,
            "state_v": v,
            "state_pmid": pmid,
            "state_ps": ps,
            "pbuf_SOLIN": solin,
            "pbuf_LHFLX": lhflx,
            "pbuf_SHFLX": shflx,
            "pbuf_TAUX": -drag * u_low,
            "pbuf_TAUY": -drag * v_low,
            "pbuf_COSZRS": mu,
            "cam_in_ALDIF": albedo["ALDIF"],
            "cam_in_ALDIR": albedo["ALDIR"],
            "cam_in_ASDIF": albedo["ASDIF"],
            "cam_in_ASDIR": albedo["ASDIR"],
            "cam_in_LWUP": emissivity * thermo.SIGMA * ts**4,
            "cam_in_ICEFRAC": sea_ice,
            "cam_in_LANDFRAC": land.copy(),
            "cam_in_OCNFRAC": ocean,
            "cam_in_SNOWHICE": np.where(sea_ice > 0.0, 0.05 + 0.3 * sea_ice, FILL_VALUE),
            "cam_in_SNOWHLAND": 0.4 * snow_cover,
        }
        state.update(self._gases(pmid, lat, season))
        return state

    @staticmethod
    def _gases(pmid: np.ndarray, lat: np.ndarray, season: np.ndarray) -> dict[str, np.ndarray]:
        """Ozone, CH4 and N2O volume mixing ratios (mol/mol)."""
        above_100hpa = np.minimum(pmid / 10_000.0, 1.0)
        ozone = (
            1.25e-5 * np.exp(-((np.log(pmid / 1_000.0)) ** 2)) * (1.0 + 0.15 * np.sin(lat) * season)
            + 4.0e-8 * (1.0 + 0.3 * np.cos(lat))
            + 2.5e-7 * np.exp(-((np.log(pmid / 5.0)) ** 2) / 2.0)
        )
        return {
            "pbuf_ozone": ozone,
            "pbuf_CH4": 9.986e-7 * above_100hpa**0.35,
            "pbuf_N2O": 4.909e-7 * above_100hpa**0.6,
        }
