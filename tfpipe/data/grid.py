"""The ClimSim low-res grid: an ne4pg2 cubed sphere with 60 hybrid sigma-pressure levels.

Computed here rather than copied: 6 cube faces x (4 x 4 spectral elements) x (2 x 2 physics
cells) = 384 columns on an equiangular gnomonic cube, and a smooth 60-level hybrid
coordinate from ~0.05 hPa to the surface. ``read_grid`` loads the same quantities from a
grid-info file (ours or the real ``ClimSim_low-res_grid-info.nc``); ``grid_to_dict`` and
``grid_from_dict`` carry a grid inside a truth file's metadata (exactly: JSON floats round-trip).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from tfpipe.data.schema import NCOL, NLEV

GRID_FILE = "grid-info.nc"
"""The grid file's name in a raw tree and, copied there by encoding, in an encoded folder."""

P0 = 100_000.0
"""Reference pressure (Pa) of the hybrid coordinate."""

NE = 4
"""Spectral elements along a cube-face edge."""

NPG = 2
"""Physics cells along an element edge (the "pg2" in ne4pg2)."""

P_TOP = 5.0
"""Model-top interface pressure (Pa)."""

SIGMA_HYBRID = 0.3
"""Reference-pressure fraction above which levels are pure pressure (hybi = 0)."""


@dataclass(frozen=True)
class Grid:
    """Horizontal and vertical grid: per-column lat/lon/area and the hybrid coefficients."""

    lat: np.ndarray  # (ncol,) degrees north
    lon: np.ndarray  # (ncol,) degrees east, [0, 360)
    area: np.ndarray  # (ncol,) steradians; sums to 4*pi
    hyai: np.ndarray  # (nlev+1,)
    hybi: np.ndarray  # (nlev+1,)
    hyam: np.ndarray  # (nlev,)
    hybm: np.ndarray  # (nlev,)
    p0: float = P0

    def pmid(self, ps: np.ndarray) -> np.ndarray:
        """Mid-level pressure (lev, ncol) in Pa for surface pressure ``ps`` (ncol,)."""
        return self.hyam[:, None] * self.p0 + self.hybm[:, None] * ps[None, :]

    def pint(self, ps: np.ndarray) -> np.ndarray:
        """Interface pressure (ilev, ncol) in Pa."""
        return self.hyai[:, None] * self.p0 + self.hybi[:, None] * ps[None, :]


def _face_frames() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(centre, east axis, north axis) of each cube face: 4 equatorial faces, then N and S."""
    frames = []
    for lon_c in (0.0, 90.0, 180.0, 270.0):
        lam = np.deg2rad(lon_c)
        centre = np.array([np.cos(lam), np.sin(lam), 0.0])
        east = np.array([-np.sin(lam), np.cos(lam), 0.0])
        frames.append((centre, east, np.array([0.0, 0.0, 1.0])))
    frames.append((np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0]), np.array([-1.0, 0.0, 0.0])))
    frames.append((np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])))
    return frames


def _corner_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Antiderivative of the equiangular cube's area element on the unit sphere."""
    ta, tb = np.tan(a), np.tan(b)
    return np.arctan(ta * tb / np.sqrt(1.0 + ta**2 + tb**2))


def cubed_sphere(ne: int = NE, npg: int = NPG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell-centre lat, lon (degrees) and area (sr) of an ``ne``-``npg`` cubed-sphere grid.

    Columns are ordered face by face; within a face element by element (west to east,
    south to north); within an element the ``npg x npg`` physics cells, west-east fastest.
    """
    n = ne * npg
    edges = np.linspace(-np.pi / 4, np.pi / 4, n + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    lats, lons, areas = [], [], []
    for centre, east, north in _face_frames():
        for ej in range(ne):
            for ei in range(ne):
                for cj in range(npg):
                    for ci in range(npg):
                        i, j = ei * npg + ci, ej * npg + cj
                        p = centre + np.tan(centres[i]) * east + np.tan(centres[j]) * north
                        p = p / np.linalg.norm(p)
                        lats.append(np.rad2deg(np.arcsin(p[2])))
                        lons.append(np.rad2deg(np.arctan2(p[1], p[0])) % 360.0)
                        a0, a1, b0, b1 = edges[i], edges[i + 1], edges[j], edges[j + 1]
                        areas.append(
                            _corner_area(a1, b1)
                            - _corner_area(a0, b1)
                            - _corner_area(a1, b0)
                            + _corner_area(a0, b0)
                        )
    return np.array(lats), np.array(lons), np.array(areas)


def hybrid_coefficients(nlev: int = NLEV) -> tuple[np.ndarray, np.ndarray]:
    """Interface coefficients (hyai, hybi), each (nlev+1,), top first.

    Reference interface pressure ``p = P_TOP + (P0 - P_TOP) sin(pi t / 2)^3`` for
    ``t = i / nlev``: thin layers aloft and near the surface, like E3SM's L60. Levels are
    pure pressure above ``SIGMA_HYBRID * P0`` and blend quadratically into sigma below.
    """
    t = np.arange(nlev + 1) / nlev
    eta = (P_TOP + (P0 - P_TOP) * np.sin(0.5 * np.pi * t) ** 3) / P0
    hybi = np.clip((eta - SIGMA_HYBRID) / (1.0 - SIGMA_HYBRID), 0.0, 1.0) ** 2
    hybi[-1] = 1.0
    hyai = eta - hybi
    hyai[-1] = 0.0
    return hyai, hybi


def make_grid() -> Grid:
    """The synthetic ne4pg2 L60 grid."""
    lat, lon, area = cubed_sphere()
    hyai, hybi = hybrid_coefficients()
    assert lat.size == NCOL
    return Grid(
        lat=lat,
        lon=lon,
        area=area,
        hyai=hyai,
        hybi=hybi,
        hyam=0.5 * (hyai[:-1] + hyai[1:]),
        hybm=0.5 * (hybi[:-1] + hybi[1:]),
    )


def read_grid(path: str, memory: bytes | None = None) -> Grid:
    """Load a grid-info netCDF file (ours or the real ClimSim one), or its bytes ``memory``."""
    import netCDF4

    try:
        # in memory, the name is only a label: a gs:// one would make netCDF-C try a remote protocol
        with netCDF4.Dataset(path if memory is None else "grid-info.nc", memory=memory) as ds:
            get = {
                name: np.asarray(ds.variables[name][:], dtype=np.float64)
                for name in ("lat", "lon", "area", "hyai", "hybi", "hyam", "hybm", "P0")
            }
    except KeyError as err:
        raise ValueError(f"{path}: grid file lacks variable {err}") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read grid file ({err})") from None
    return Grid(
        lat=get["lat"],
        lon=get["lon"],
        area=get["area"],
        hyai=get["hyai"],
        hybi=get["hybi"],
        hyam=get["hyam"],
        hybm=get["hybm"],
        p0=float(get["P0"]),
    )


def load_grid(path: str) -> Grid:
    """:func:`read_grid` of a local or gs:// grid-info file (a remote one is read into memory)."""
    from tfpipe import storage

    if not storage.is_remote(path):
        return read_grid(path)
    if not storage.exists(path):
        raise ValueError(f"{path}: grid file not found")
    return read_grid(path, memory=storage.read_bytes(path))


def grid_to_dict(grid: Grid, source: str) -> dict:
    """The grid as JSON-ready lists (float64 values round-trip exactly), with where it came from."""
    out: dict = {"source": source}
    for f in fields(grid):
        value = getattr(grid, f.name)
        out[f.name] = float(value) if f.name == "p0" else np.asarray(value, dtype=np.float64).tolist()
    return out


def grid_from_dict(data: dict, where: str = "the grid") -> Grid:
    """The :class:`Grid` of :func:`grid_to_dict` output; ValueError naming ``where`` if it is incomplete."""
    missing = [f.name for f in fields(Grid) if f.name not in data]
    if missing:
        raise ValueError(f"{where}: embedded grid lacks {', '.join(missing)}")
    values = {f.name: np.asarray(data[f.name], dtype=np.float64) for f in fields(Grid) if f.name != "p0"}
    return Grid(**values, p0=float(data["p0"]))
