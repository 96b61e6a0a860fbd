"""Benchmark: synthetic raw-data generation vs writing the same arrays only.

    python bench/synth.py

Generates 36 steps (half a day) twice in one process: the full path (synthetic climate +
toy physics + netCDF writes) and a baseline that writes pre-computed arrays to netCDF.
The last line is JSON: {"steps_per_s", "mb_per_s", "ratio_vs_write_only"}; the ratio is
the one to compare across machines (both measured in the same run).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import physics  # noqa: E402
from data_prep.climate import SyntheticClimate  # noqa: E402
from data_prep.synth import write_raw_file  # noqa: E402
from tfpipe.data.grid import make_grid  # noqa: E402
from tfpipe.data.rawtree import ModelTime, raw_file_path  # noqa: E402
from tfpipe.data.schema import MLI_VARIABLES, MLO_VARIABLES  # noqa: E402

STEPS = 36


def main() -> None:
    grid = make_grid()
    climate = SyntheticClimate(grid, seed=0)
    start = ModelTime(1, 2, 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        states = []
        for i in range(STEPS):
            when = start.plus_steps(i)
            mli = climate.state(when)
            mlo = physics.step(grid, mli)
            write_raw_file(root / "full" / raw_file_path("mli", when), mli, MLI_VARIABLES, when.stamp)
            write_raw_file(root / "full" / raw_file_path("mlo", when), mlo, MLO_VARIABLES, when.stamp)
            states.append((when, mli, mlo))
        full = time.perf_counter() - t0
        nbytes = sum(p.stat().st_size for p in (root / "full").rglob("*.nc"))

        t0 = time.perf_counter()
        for when, mli, mlo in states:
            write_raw_file(root / "base" / raw_file_path("mli", when), mli, MLI_VARIABLES, when.stamp)
            write_raw_file(root / "base" / raw_file_path("mlo", when), mlo, MLO_VARIABLES, when.stamp)
        base = time.perf_counter() - t0

    result = {
        "steps_per_s": round(STEPS / full, 2),
        "mb_per_s": round(nbytes / 1e6 / full, 1),
        "ratio_vs_write_only": round(base / full, 3),
    }
    summary = f"{STEPS} steps: full {full:.2f} s, write-only {base:.2f} s, {nbytes / 1e6:.0f} MB"
    print(summary, file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
