"""Names and calendar of the raw E3SM-MMF tree.

A raw tree holds ``train/YYYY-MM/E3SM-MMF.{mli,mlo}.YYYY-MM-DD-SSSSS.nc``: one file pair per
1200 s step, ``SSSSS`` the seconds since midnight. E3SM runs a 365-day ``noleap`` calendar
starting at year 1, so dates are handled here rather than with ``datetime``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tfpipe.data.schema import STEPS_PER_DAY, TIMESTEP_S

DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
DAYS_PER_YEAR = sum(DAYS_IN_MONTH)
SECONDS_PER_DAY = 86_400
PREFIX = "E3SM-MMF"
KINDS = ("mli", "mlo")

_FILE_RE = re.compile(r"E3SM-MMF\.(?P<kind>ml[io])\.(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})-(?P<s>\d{5})\.nc$")
_DATE_RE = re.compile(r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})$")


@dataclass(frozen=True, order=True)
class ModelTime:
    """A time in the noleap model calendar."""

    year: int
    month: int
    day: int
    seconds: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.year <= 9999:
            raise ValueError(f"year {self.year} outside 1..9999")
        if not 1 <= self.month <= 12:
            raise ValueError(f"month {self.month} outside 1..12")
        if not 1 <= self.day <= DAYS_IN_MONTH[self.month - 1]:
            raise ValueError(
                f"day {self.day} outside 1..{DAYS_IN_MONTH[self.month - 1]} "
                f"for month {self.month} (noleap calendar)"
            )
        if not 0 <= self.seconds < SECONDS_PER_DAY:
            raise ValueError(f"seconds {self.seconds} outside 0..{SECONDS_PER_DAY - 1}")

    @classmethod
    def parse_date(cls, text: str) -> ModelTime:
        """Parse ``YYYY-MM-DD`` (midnight) with a clear error."""
        match = _DATE_RE.match(text)
        if not match:
            raise ValueError(f"bad date {text!r}: expected YYYY-MM-DD, e.g. 0001-02-01")
        try:
            return cls(int(match["y"]), int(match["m"]), int(match["d"]))
        except ValueError as err:
            raise ValueError(f"bad date {text!r}: {err}") from None

    @property
    def day_of_year(self) -> int:
        """0-based day of the year."""
        return sum(DAYS_IN_MONTH[: self.month - 1]) + self.day - 1

    @property
    def absolute_seconds(self) -> int:
        """Seconds since 0001-01-01 00:00 (the model epoch)."""
        days = (self.year - 1) * DAYS_PER_YEAR + self.day_of_year
        return days * SECONDS_PER_DAY + self.seconds

    @classmethod
    def from_absolute_seconds(cls, total: int) -> ModelTime:
        days, seconds = divmod(int(total), SECONDS_PER_DAY)
        year, doy = divmod(days, DAYS_PER_YEAR)
        month = 0
        while doy >= DAYS_IN_MONTH[month]:
            doy -= DAYS_IN_MONTH[month]
            month += 1
        return cls(year + 1, month + 1, doy + 1, seconds)

    def plus_steps(self, steps: int) -> ModelTime:
        return ModelTime.from_absolute_seconds(self.absolute_seconds + steps * TIMESTEP_S)

    @property
    def stamp(self) -> str:
        """``YYYY-MM-DD-SSSSS`` as in file names."""
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}-{self.seconds:05d}"


def raw_file_path(kind: str, time: ModelTime, split: str = "train") -> str:
    """Relative path of a raw file, e.g. ``train/0001-02/E3SM-MMF.mli.0001-02-01-00000.nc``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return f"{split}/{time.year:04d}-{time.month:02d}/{PREFIX}.{kind}.{time.stamp}.nc"


def parse_raw_file_name(path: str) -> tuple[str, ModelTime]:
    """``(kind, time)`` from a raw file path or name; ValueError if it is not one."""
    match = _FILE_RE.search(path)
    if not match:
        raise ValueError(f"{path}: not a raw E3SM-MMF file name (E3SM-MMF.mli.YYYY-MM-DD-SSSSS.nc)")
    time = ModelTime(int(match["y"]), int(match["m"]), int(match["d"]), int(match["s"]))
    return match["kind"], time


def partner_path(mli_path: str) -> str:
    """The ``.mlo.`` file that pairs with an ``.mli.`` file (same folder)."""
    kind, _ = parse_raw_file_name(mli_path)
    if kind != "mli":
        raise ValueError(f"{mli_path}: expected an mli file")
    head, _, tail = mli_path.rpartition(f"{PREFIX}.mli.")
    return f"{head}{PREFIX}.mlo.{tail}"


def steps_for_days(days: float) -> int:
    """Number of 1200 s steps in ``days`` (fractions allowed, at least one step)."""
    if not days > 0:
        raise ValueError(f"days must be > 0, got {days}")
    return max(1, round(days * STEPS_PER_DAY))
