"""tfpipe.data.sampling: validation hold-outs in samples, balanced sub-epochs, exact per-batch source mixes."""

from __future__ import annotations

import numpy as np
import pytest

from tfpipe.data.sampling import (
    DataFile,
    Piece,
    SamplingError,
    mix_counts,
    plan_stage,
    plan_sub_epoch,
    shares,
    split_files,
    sub_epoch_pieces,
)

DAY = 86400


def files_of(sizes: list[int], step_s: int = 3600, times: bool = True) -> list[DataFile]:
    """Files in listed order, each ``step_s`` after the previous one (a shuffled listing order)."""
    order = np.random.default_rng(0).permutation(len(sizes))
    return [DataFile(f"f{i:03d}", n, int(order[i]) * step_s if times else None) for i, n in enumerate(sizes)]


def samples(files: list[DataFile]) -> int:
    return sum(f.samples for f in files)


def test_last_holds_out_the_latest_period_measured_in_samples() -> None:
    sizes = [384 * 4, 384] * 20  # files differ in size, as shards' last files do
    files = files_of(sizes)
    train, val = split_files(files, 0.25, "last")
    assert abs(samples(val) / samples(files) - 0.25) < 0.02  # in samples, not files
    assert min(f.time_min for f in val) > max(f.time_min for f in train)  # contiguous: the last period
    assert split_files(files, 0.25, "last") == (train, val)
    assert sorted(train + val, key=lambda f: f.path) == files


def test_random_is_fixed_and_measured_in_samples() -> None:
    files = files_of([384 * 4, 384] * 20)
    train, val = split_files(files, 0.25, "random")
    assert abs(samples(val) / samples(files) - 0.25) < 0.03
    assert split_files(files, 0.25, "random") == (train, val)
    assert not set(f.path for f in train) & set(f.path for f in val)


def test_periodic_holds_out_the_end_of_every_period() -> None:
    files = files_of([100] * 96, step_s=DAY // 4)  # 24 days, 4 files a day
    train, val = split_files(files, 0.25, "periodic", period_days=2.0)
    phases = {(f.time_min % (2 * DAY)) / (2 * DAY) for f in val}
    assert phases == {0.75, 0.875} and len(val) == 24
    assert all((f.time_min % (2 * DAY)) / (2 * DAY) < 0.75 for f in train)


def test_unknown_times_keep_the_listed_order_and_bad_splits_are_refused() -> None:
    files = files_of([100] * 10, times=False)
    train, val = split_files(files, 0.2, "last")
    assert val == files[-2:] and train == files[:-2]  # Kaggle CSV shards: listing order is row order
    with pytest.raises(SamplingError, match="periodic.*needs file times"):
        split_files(files, 0.2, "periodic")
    with pytest.raises(SamplingError, match="val_split"):
        split_files(files, 0.2, "future")
    with pytest.raises(SamplingError, match="cannot be split"):
        split_files(files[:1], 0.2, "last")
    assert split_files(files, 0.0) == (files, [])


def chunk_files(files: list[DataFile], seed: int, epoch: int, k: int, n: int) -> list[DataFile]:
    pieces = sub_epoch_pieces(files, seed, epoch, k, n)
    assert all(p == Piece(p.file) for p in pieces)  # whole files
    return [p.file for p in pieces]


def test_sub_epochs_are_balanced_by_samples_and_partition_the_files() -> None:
    files = files_of([384 * 4, 384] * 20)
    for epoch in range(3):
        chunks = [chunk_files(files, 1, epoch, k, 4) for k in range(4)]
        assert sorted(sum(chunks, []), key=lambda f: f.path) == files
        counts = [samples(c) for c in chunks]
        assert max(counts) - min(counts) <= 384 * 4, counts  # within one file, not 96 vs 24 steps
        assert chunks == [chunk_files(files, 1, epoch, k, 4) for k in range(4)]  # pure function
    assert chunk_files(files, 1, 0, 0, 4) != chunk_files(files, 1, 1, 0, 4)


def test_with_enough_files_the_cuts_are_those_earlier_versions_planned() -> None:
    """Runs checkpointed by an earlier tfpipe re-plan the same chunks on resume (their plan hash holds)."""
    files = [DataFile(f"f{i:03d}", n, None, n // 384) for i, n in enumerate([384 * 4, 384] * 5 + [384 * 3] * 3)]
    chunks = [[int(f.path[1:]) for f in chunk_files(files, 7, 2, k, 4)] for k in range(4)]
    assert chunks == [[1, 11, 4], [3, 5, 0, 10], [6, 8], [2, 9, 7, 12]]  # sub_epoch_files of tfpipe 0.x


@pytest.mark.parametrize("sizes", [[16, 16], [16, 16, 4], [4], [5, 1, 2]])
def test_fewer_files_than_sub_epochs_are_cut_between_records(sizes: list[int]) -> None:
    """Notebook 01's 16 blocks per file on half a day leave 2-3 training files for 4 sub-epochs."""
    files = [DataFile(f"f{i}", n * 384, None, n) for i, n in enumerate(sizes)]
    for epoch in range(2):
        chunks = [sub_epoch_pieces(files, 0, epoch, k, 4) for k in range(4)]
        read = sorted((p.path, r) for c in chunks for p in c for r in range(p.first, p.stop))
        assert read == sorted((f.path, r) for f in files for r in range(f.records))  # every record once
        counts = [sum(p.samples for p in c) for c in chunks]
        assert sum(counts) == samples(files) and max(counts) - min(counts) <= 384, counts  # within a record
        assert chunks == [sub_epoch_pieces(files, 0, epoch, k, 4) for k in range(4)]


def test_a_partial_last_record_counts_its_own_samples() -> None:
    csv = DataFile("rows", 1000, None, 3, 384)  # Kaggle CSV blocks: 384, 384, 232
    assert [Piece(csv, r, 1).samples for r in range(3)] == [384, 384, 232] and Piece(csv).samples == 1000
    assert sum(p.samples for k in range(3) for p in sub_epoch_pieces([csv], 0, 0, k, 3)) == 1000


def test_too_few_records_name_the_setting_to_change() -> None:
    files = [DataFile("a", 384, None, 1), DataFile("b", 768, None, 2)]
    with pytest.raises(SamplingError, match="3 record.*cannot make 4 sub-epochs: set data.sub_epochs to at most 3"):
        sub_epoch_pieces(files, 0, 0, 0, 4)
    with pytest.raises(SamplingError, match="source 'extra': "):
        plan_stage({"main": files * 2, "extra": files}, [1.0, 1.0], 8, 1, 0, 0, 0, 4)
    plan = plan_stage({"main": files * 2, "extra": files}, [1.0, 1.0], 8, 1, 0, 0, 0, 3)
    assert len(plan.pieces) == 2 and 8 * plan.steps // 2 <= sum(p.samples for p in plan.pieces[0])


@pytest.mark.parametrize(
    "batch, weights",
    [(64, [2.0, 1.0]), (64, [1.0, 1.0, 1.0]), (10, [3.0, 1.0]), (1000, [0.7, 0.2, 0.1]), (8, [1.0])],
)
def test_every_batch_holds_the_configured_mix_exactly(batch: int, weights: list[float]) -> None:
    steps = 101
    counts = mix_counts(batch, weights, steps)
    assert counts.shape == (len(weights), steps) and (counts.sum(axis=0) == batch).all()
    p = shares(weights)
    for i in range(1, len(weights)):
        assert set(counts[i]) <= {int(np.floor(batch * p[i])), int(np.ceil(batch * p[i]))}  # round(b x share)
        for s in (1, 7, 50, 101):  # the rounding is carried: exact after any number of steps
            assert counts[i, :s].sum() == (s * batch * p[i].numerator) // p[i].denominator
    assert (counts >= 1).all()


def test_a_source_that_gets_no_sample_is_refused() -> None:
    with pytest.raises(SamplingError, match="less than one sample of source"):
        mix_counts(4, [10.0, 1.0], 3)
    with pytest.raises(SamplingError, match="weights"):
        mix_counts(4, [1.0, 0.0], 3)


def test_the_plan_reads_the_first_source_once_in_whole_global_batches() -> None:
    plan = plan_sub_epoch(10_000, 64, 2, [2.0, 1.0])
    used = 2 * plan.counts[0].sum()
    assert used <= 10_000 < used + 2 * 64  # the first source's chunk once, minus less than one batch
    assert plan.counts.shape == (2, plan.steps) and (plan.counts.sum(axis=0) == 64).all()
    assert plan_sub_epoch(100, 64, 2, [1.0]).steps == 0
