"""Write a synthetic raw ClimSim tree, laid out exactly like the real low-res data.

    python -m data_prep.synth --out DIR [--days D] [--start 0001-02-01] [--seed S] [--overwrite]

Output: ``DIR/grid-info.nc`` (the real grid file's variables and dimensions) and, for every
1200 s step, ``DIR/train/YYYY-MM/E3SM-MMF.mli.YYYY-MM-DD-SSSSS.nc`` with the matching
``.mlo.`` file. The mli state comes from :mod:`data_prep.climate`, the mlo state from the toy
column physics in :mod:`data_prep.physics`. The tree is built in a temporary folder beside
DIR and renamed into place, so an interrupted run leaves DIR as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import netCDF4
import numpy as np

from data_prep import physics
from data_prep.climate import SyntheticClimate
from tfpipe.console import ArgumentParser
from tfpipe.data.grid import NE, NPG, Grid, make_grid
from tfpipe.data.rawtree import ModelTime, raw_file_path, steps_for_days
from tfpipe.data.schema import MLI_VARIABLES, MLO_VARIABLES, NCOL, NLEV, VARIABLES

GRID_FILE = "grid-info.nc"
SOURCE = "tfpipe data_prep.synth: synthetic climate and toy column physics (not E3SM output)"


@dataclass(frozen=True)
class SynthSummary:
    """What a synth run wrote."""

    out: str
    steps: int
    files: int
    bytes: int
    first: str
    last: str
    seed: int
    seconds: float


def _write_variables(ds: netCDF4.Dataset, values: dict[str, np.ndarray], names: tuple[str, ...]) -> None:
    for name in names:
        var = VARIABLES[name]
        nc_var = ds.createVariable(name, "f8", var.dims)
        nc_var.units = var.units
        nc_var.long_name = var.long_name
        nc_var[:] = values[name]


def write_raw_file(path: Path, values: dict[str, np.ndarray], names: tuple[str, ...], stamp: str) -> None:
    """One mli or mlo file: profiles (lev, ncol), scalars (ncol), float64."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.createDimension("lev", NLEV)
        ds.createDimension("ncol", NCOL)
        ds.source = SOURCE
        ds.time_stamp = stamp
        _write_variables(ds, values, names)


def write_grid_file(path: Path, grid: Grid, ps: np.ndarray) -> None:
    """``grid-info.nc`` with the same variables, dimensions, dtypes and format as the real one."""
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_DATA") as ds:
        ds.createDimension("time", 1)
        ds.createDimension("ncol", grid.lat.size)
        ds.createDimension("ilev", grid.hyai.size)
        ds.createDimension("lev", grid.hyam.size)
        ds.ne = np.int32(NE)
        ds.fv_nphys = np.int32(NPG)
        ds.title = "grid information"
        ds.source = SOURCE

        def add(name, dtype, dims, data, **attrs):
            var = ds.createVariable(name, dtype, dims)
            for key, value in attrs.items():
                var.setncattr(key, value)
            var[:] = data

        add("P0", "f8", (), grid.p0, long_name="reference pressure", units="Pa")
        add(
            "PS",
            "f4",
            ("time", "ncol"),
            ps[None, :].astype(np.float32),
            units="Pa",
            long_name="Surface pressure",
            standard_name="surface_air_pressure",
        )
        add("area", "f8", ("ncol",), grid.area, long_name="physics grid areas")
        add("hyai", "f8", ("ilev",), grid.hyai, long_name="hybrid A coefficient at layer interfaces")
        add("hyam", "f8", ("lev",), grid.hyam, long_name="hybrid A coefficient at layer midpoints")
        add("hybi", "f8", ("ilev",), grid.hybi, long_name="hybrid B coefficient at layer interfaces")
        add("hybm", "f8", ("lev",), grid.hybm, long_name="hybrid B coefficient at layer midpoints")
        for name, a, b, where in (
            ("ilev", grid.hyai, grid.hybi, "interfaces"),
            ("lev", grid.hyam, grid.hybm, "midpoints"),
        ):
            add(
                name,
                "f8",
                (name,),
                1000.0 * (a + b),
                long_name=f"hybrid level at {where} (1000*(A+B))",
                units="hPa",
                positive="down",
                standard_name="atmosphere_hybrid_sigma_pressure_coordinate",
            )
        add("lat", "f8", ("ncol",), grid.lat, long_name="latitude", units="degrees_north")
        add("lon", "f8", ("ncol",), grid.lon, long_name="longitude", units="degrees_east")


def generate(out: Path, start: ModelTime, steps: int, seed: int) -> None:
    """Write a complete tree into ``out`` (which must be new or empty)."""
    grid = make_grid()
    climate = SyntheticClimate(grid, seed)
    write_grid_file(out / GRID_FILE, grid, climate.ps_mean)
    for i in range(steps):
        when = start.plus_steps(i)
        mli = climate.state(when)
        mlo = physics.step(grid, mli)
        write_raw_file(out / raw_file_path("mli", when), mli, MLI_VARIABLES, when.stamp)
        write_raw_file(out / raw_file_path("mlo", when), mlo, MLO_VARIABLES, when.stamp)


def _remove_abandoned(parent: Path, name: str) -> None:
    """Delete staging folders left by killed runs (their process no longer exists)."""
    for path in parent.glob(f".{name}.*-*"):
        pid = path.name.rpartition("-")[2]
        if path.name.startswith((f".{name}.partial-", f".{name}.old-")) and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except PermissionError:
                pass


def synthesize(
    out: str | os.PathLike,
    days: float = 1.0,
    start: str = "0001-02-01",
    seed: int = 0,
    overwrite: bool = False,
) -> SynthSummary:
    """Generate a raw tree at ``out`` atomically; ValueError on bad arguments or targets."""
    t0 = time.perf_counter()
    first = ModelTime.parse_date(start)
    steps = steps_for_days(days)
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out}: directory is not empty (use --overwrite to replace it)")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{parent}: exists and is not a directory")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{parent}: directory is not writable")

    _remove_abandoned(parent, out.name)
    staging = parent / f".{out.name}.partial-{os.getpid()}"
    try:
        staging.mkdir()
        generate(staging, first, steps, seed)
        if out.exists():
            retired = parent / f".{out.name}.old-{os.getpid()}"
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    files = [p for p in out.rglob("*.nc")]
    return SynthSummary(
        out=str(out),
        steps=steps,
        files=len(files),
        bytes=sum(p.stat().st_size for p in files),
        first=first.stamp,
        last=first.plus_steps(steps - 1).stamp,
        seed=seed,
        seconds=round(time.perf_counter() - t0, 3),
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m data_prep.synth",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument(
        "--days",
        type=_positive_float,
        default=1.0,
        help="days to simulate, 72 steps each; fractions allowed",
    )
    parser.add_argument("--start", default="0001-02-01", help="first day, YYYY-MM-DD, noleap calendar")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weather")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = synthesize(args.out, args.days, args.start, args.seed, args.overwrite)
    except ValueError as err:
        print(f"data_prep.synth: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"data_prep.synth: error: {err.filename or args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary.files} files ({summary.bytes / 1e6:.1f} MB, {summary.steps} steps "
        f"{summary.first} .. {summary.last}) to {summary.out} in {summary.seconds:.1f} s",
        file=sys.stderr,
    )
    print(json.dumps(asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
