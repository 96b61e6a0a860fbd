"""Which samples go where: the validation hold-out, the sub-epoch chunks and the mix of every batch.

Pure numpy, no TensorFlow: each function is a deterministic function of its arguments, so a resumed
run rebuilds exactly the plan it was following.

- :func:`split_files`: the validation hold-out, measured in samples (shard files differ in size).
  ``last`` (the default) holds out the latest period, as the Kaggle test set follows the training
  years; ``periodic`` holds out the end of every period of ``period_days`` days (e.g. the last day of
  every 10); ``random`` is a seeded choice of files, interleaved in time with training (optimistic on
  ClimSim, whose files are consecutive 20-minute steps).
- :func:`sub_epoch_pieces`: chunk ``k`` of a seeded permutation of the training files, cut where the
  cumulative sample count is closest to ``k/K`` of the total, so sub-epochs have about equal steps.
  The cuts fall between files when there are at least ``K`` files, else between records (blocks)
  inside files, so any file count works (a chunk is a list of :class:`Piece`: a file or a record range).
- :func:`mix_counts` and :func:`plan_sub_epoch`: how many samples of each source every batch holds;
  :func:`plan_stage`: both for one sub-epoch of every source (the one place a sub-epoch's data is fixed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

SPLIT_SEED = 20240717
"""Seed of the ``random`` validation split: fixed, so that runs with different seeds share it."""
VAL_SPLITS = ("last", "periodic", "random")
DAY_S = 86400


class SamplingError(ValueError):
    """A split, chunking or mix that the data cannot satisfy."""


@dataclass(frozen=True)
class DataFile:
    """One encoded file as the manifests describe it."""

    path: str
    samples: int
    time_min: int | None = None
    """Earliest model time in the file (seconds since 0001-01-01); None when unknown (Kaggle CSV)."""
    records: int = 1
    """TFRecord records (blocks of samples) in the file."""
    block_size: int | None = None
    """Samples of a full record (the manifest's ``block_size``); None: samples / records, rounded up."""

    def samples_before(self, record: int) -> int:
        """Samples in the records before ``record``: encode fills every block but a file's last.

        (Exact but where ``--on-bad-values=drop-sample`` shortened blocks: there a sub-epoch reads
        a few samples less than planned and its source wraps around; see :mod:`tfpipe.data.pipeline`.)
        """
        per_record = self.block_size or -(-self.samples // max(self.records, 1))
        return min(record * per_record, self.samples)


@dataclass(frozen=True)
class Piece:
    """Records ``[first, first + count)`` of a file (``count`` None: to its end) that a sub-epoch reads."""

    file: DataFile
    first: int = 0
    count: int | None = None

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def stop(self) -> int:
        """The record after the piece's last."""
        return self.file.records if self.count is None else self.first + self.count

    @property
    def samples(self) -> int:
        return self.file.samples_before(self.stop) - self.file.samples_before(self.first)


def _time_order(files: list[DataFile]) -> np.ndarray:
    """Indices of ``files`` by time (earliest first); files of unknown time keep their listed order."""
    if all(f.time_min is not None for f in files):
        return np.argsort([f.time_min for f in files], kind="stable")
    return np.arange(len(files))


def _closest_cut(cumulative: np.ndarray, target: float, low: int, high: int) -> int:
    """Index ``j`` in ``[low, high]`` whose ``cumulative[j]`` is closest to ``target`` (first on ties)."""
    window = cumulative[low : high + 1]
    return low + int(np.argmin(np.abs(window - target)))


def split_files(
    files: list[DataFile], val_fraction: float, mode: str = "last", period_days: float = 10.0
) -> tuple[list[DataFile], list[DataFile]]:
    """``(train, val)``: about ``val_fraction`` of the *samples* held out, at least one file each side.

    Raises:
        SamplingError: unknown mode, a fraction outside [0, 1), too few files, or ``periodic`` on data
            without times.
    """
    if mode not in VAL_SPLITS:
        raise SamplingError(f"val_split must be one of {', '.join(VAL_SPLITS)}, got {mode!r}")
    if not 0 <= val_fraction < 1:
        raise SamplingError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return list(files), []
    if len(files) < 2:
        raise SamplingError(
            f"{len(files)} file(s) cannot be split into training and validation files: re-encode with "
            "a smaller --blocks-per-file, or give a separate validation folder (data.val_path)"
        )
    if mode == "periodic":
        held = _periodic(files, val_fraction, period_days)
    else:
        order = (
            _time_order(files)
            if mode == "last"
            else np.random.default_rng(SPLIT_SEED).permutation(len(files))
        )
        order = order[::-1]  # ``last``: from the end; ``random``: any fixed order
        samples = np.cumsum([files[i].samples for i in order])
        cut = _closest_cut(samples, val_fraction * samples[-1], 0, len(files) - 2)
        held = set(order[: cut + 1].tolist())
    train = [f for i, f in enumerate(files) if i not in held]
    val = [f for i, f in enumerate(files) if i in held]
    if not train or not val:
        raise SamplingError(
            f"val_split {mode!r} with val_fraction {val_fraction} leaves {len(train)} training and "
            f"{len(val)} validation files; change val_fraction or val_period_days"
        )
    return train, val


def _periodic(files: list[DataFile], val_fraction: float, period_days: float) -> set[int]:
    if any(f.time_min is None for f in files):
        raise SamplingError("val_split 'periodic' needs file times, which this data lacks (use 'last')")
    if period_days <= 0:
        raise SamplingError(f"val_period_days must be > 0, got {period_days}")
    period = period_days * DAY_S
    phase = np.array([(f.time_min % period) / period for f in files])
    return set(np.nonzero(phase >= 1 - val_fraction)[0].tolist())


def sub_epoch_pieces(
    files: list[DataFile], seed: int, epoch: int, sub_epoch: int, sub_epochs: int
) -> list[Piece]:
    """Chunk ``sub_epoch`` of the permutation seeded by ``(seed, epoch)``, balanced by sample count.

    The permuted files are laid end to end and cut where the cumulative sample count is closest to
    ``k/K`` of the total: between files when every chunk can get a whole one (what runs of earlier
    versions planned, so their resumes stay exact), else between records, inside files.

    Raises:
        SamplingError: ``sub_epoch`` out of range, or fewer records in all than sub-epochs.
    """
    if not 0 <= sub_epoch < sub_epochs:
        raise SamplingError(f"sub-epoch {sub_epoch} outside 0..{sub_epochs - 1}")
    order = np.random.default_rng([seed, epoch]).permutation(len(files))
    if len(files) >= sub_epochs:  # units: whole files
        units = [(int(i), 0, files[i].records) for i in order]
    else:  # units: records
        units = [(int(i), r, 1) for i in order for r in range(files[i].records)]
    if len(units) < sub_epochs:
        raise SamplingError(
            f"{len(files)} training file(s) of {len(units)} record(s) (blocks) in all cannot make "
            f"{sub_epochs} sub-epochs: set data.sub_epochs to at most {len(units)}"
        )
    sizes = [files[i].samples_before(r + n) - files[i].samples_before(r) for i, r, n in units]
    cumulative = np.cumsum(sizes)
    bounds = [0]
    for k in range(1, sub_epochs):
        # the chunk ends at unit j (inclusive): at least one unit per chunk on either side of the cut
        j = _closest_cut(
            cumulative, cumulative[-1] * k / sub_epochs, bounds[-1], len(units) - 1 - (sub_epochs - k)
        )
        bounds.append(j + 1)
    bounds.append(len(units))
    return _pieces(files, units[bounds[sub_epoch] : bounds[sub_epoch + 1]])


def _pieces(files: list[DataFile], units: list[tuple[int, int, int]]) -> list[Piece]:
    """Consecutive units of one file merged into one piece (a whole file as ``Piece(file)``)."""
    merged: list[list[int]] = []
    for i, first, n in units:
        if merged and merged[-1][0] == i and merged[-1][1] + merged[-1][2] == first:
            merged[-1][2] += n
        else:
            merged.append([i, first, n])
    return [
        Piece(files[i]) if (first, n) == (0, files[i].records) else Piece(files[i], first, n)
        for i, first, n in merged
    ]


def shares(weights: list[float]) -> list[Fraction]:
    """Exact sampling shares of the sources (weights as fractions, normalised to sum 1)."""
    if not weights or any(not w > 0 for w in weights):
        raise SamplingError(f"source weights must all be > 0, got {weights}")
    exact = [Fraction(w).limit_denominator(10**6) for w in weights]
    total = sum(exact)
    return [w / total for w in exact]


def mix_counts(batch: int, weights: list[float], steps: int) -> np.ndarray:
    """``[sources, steps]`` samples of each source in each (per-replica) batch of ``batch`` samples.

    Source ``i > 0`` gets ``floor((s+1) b p_i) - floor(s b p_i)`` at step ``s`` (``p_i`` its share):
    ``b p_i`` rounded with the remainder carried, so that after ``S`` steps it has had exactly
    ``floor(S b p_i)`` samples. The first source takes the rest of each batch.

    Raises:
        SamplingError: a source would get less than one sample in some batch.
    """
    p = shares(weights)
    too_small = [i for i, share in enumerate(p) if batch * share < 1]
    if too_small:
        raise SamplingError(
            f"a batch of {batch} samples per replica holds less than one sample of source(s) "
            f"{too_small} (shares {[round(float(s), 4) for s in p]}): raise batch_size or their weight"
        )
    counts = np.zeros((len(p), steps), dtype=np.int64)
    s = np.arange(steps + 1, dtype=np.int64)
    for i in range(1, len(p)):
        counts[i] = np.diff((s * (batch * p[i].numerator)) // p[i].denominator)
    counts[0] = batch - counts[1:].sum(axis=0)
    if (counts[0] < 1).any():
        raise SamplingError(f"the first source gets no sample in some batch of {batch}: raise its weight")
    return counts


@dataclass(frozen=True)
class SubEpochPlan:
    """The steps of one training sub-epoch and the per-replica samples of each source per step."""

    steps: int
    counts: np.ndarray
    """``[sources, steps]`` per-replica samples of each source in each step (sums to the batch)."""
    pieces: tuple[tuple[Piece, ...], ...] = ()
    """Per source, what the sub-epoch reads (:func:`sub_epoch_pieces`); empty in a bare mix plan."""


def plan_sub_epoch(
    first_source_samples: int, batch: int, replicas: int, weights: list[float]
) -> SubEpochPlan:
    """Steps that read the first source's chunk once (whole global batches), with the mix of each step.

    The first source's chunk is read once; the other sources repeat as needed to keep their shares.
    """
    p0 = float(shares(weights)[0])
    guess = int(first_source_samples / (replicas * batch * p0)) + 2
    counts = mix_counts(batch, weights, max(guess, 1))
    used = replicas * np.cumsum(counts[0])
    steps = int(np.searchsorted(used, first_source_samples, side="right"))
    return SubEpochPlan(steps, counts[:, :steps])


def plan_stage(
    sources: dict[str, list[DataFile]], weights: list[float], batch: int, replicas: int,
    seed: int, epoch: int, sub_epoch: int, sub_epochs: int,
) -> SubEpochPlan:  # fmt: skip
    """Sub-epoch ``sub_epoch`` of ``epoch``: every source's pieces (``sources``: name to training files,
    in order), the steps that read the first source's pieces once, and the mix of each step."""
    pieces = []
    for name, files in sources.items():
        try:
            pieces.append(tuple(sub_epoch_pieces(files, seed, epoch, sub_epoch, sub_epochs)))
        except SamplingError as err:
            raise SamplingError(f"source {name!r}: {err}") from None
    plan = plan_sub_epoch(sum(p.samples for p in pieces[0]), batch, replicas, weights)
    return dataclasses.replace(plan, pieces=tuple(pieces))
