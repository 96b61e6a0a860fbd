"""The blocks of a raw ClimSim tree: its (mli, mlo) pairs, read in order by one or more processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from data_prep.raw import PairVariables, RawDataError, float32_samples_of, read_pair_variables
from tfpipe import storage
from tfpipe.data.rawtree import parse_raw_file_name, partner_path
from tfpipe.data.records import FLOAT64_TARGET, FLOAT64_VARIABLE, Block
from tfpipe.data.schema import NCOL, Schema, get_schema


def list_raw_pairs(src: str, stride: int) -> list[tuple[str, str]]:
    """Sorted (mli, mlo) pairs of a raw tree, thinned to every ``stride``-th step."""
    names = storage.list_files(src, suffix=".nc")
    mli, present = [], set(names)
    for path in names:
        try:
            kind, t = parse_raw_file_name(path)
        except ValueError:
            continue
        if kind == "mli":
            mli.append((t, path))
    if not mli:
        raise RawDataError(f"{src}: no E3SM-MMF.mli.*.nc files found")
    mli.sort()
    pairs = []
    for _, path in mli[::stride]:
        mlo = partner_path(path)
        if mlo not in present:
            raise RawDataError(f"{path}: its partner {mlo} is missing")
        pairs.append((path, mlo))
    return pairs


def _read_step(mli: str, mlo: str, schema: Schema, drop_bad: bool) -> PairVariables:
    """The variables of one raw pair (fetched first when remote)."""
    data = {path: storage.read_bytes(path) for path in (mli, mlo) if storage.is_remote(path)}
    return read_pair_variables(mli, mlo, schema, data.get(mli), data.get(mlo), allow_nonfinite=drop_bad)


def _step_block(pair: PairVariables, schema: Schema, drop_bad: bool) -> tuple[Block | None, int, str]:
    """(block, dropped samples, bad-value note) of one pair's variables."""
    inputs, targets, x64, y64 = float32_samples_of(pair, schema, FLOAT64_VARIABLE, FLOAT64_TARGET)
    ncol = np.arange(NCOL, dtype=np.int32)
    dropped = 0
    if drop_bad:  # without it, read_variables has already refused any NaN/Inf
        finite = np.isfinite(inputs).all(axis=1) & np.isfinite(targets).all(axis=1)
        dropped = int((~finite).sum())
        if not finite.any():
            return None, dropped, "every sample has NaN/Inf values"
        if dropped:
            inputs, targets, x64, y64, ncol = (
                inputs[finite],
                targets[finite],
                x64[finite],
                y64[finite],
                ncol[finite],
            )
    stamp = pair.time.stamp  # a property: computed once, not per sample
    block = Block(
        inputs=inputs, targets=targets, x64=x64, y64=y64, ncol=ncol,
        time=np.full(len(ncol), pair.time.absolute_seconds, dtype=np.int64),
        sample_id=[f"{stamp}_{c}" for c in ncol.tolist()],
    )  # fmt: skip
    return block, dropped, f"{dropped} samples with NaN/Inf dropped" if dropped else ""


def _read_raw(args: tuple[str, str, str, bool]) -> tuple[str, Block | None, int, str]:
    """Pool worker: one raw pair → (mli path, block, dropped samples, bad-value note)."""
    mli, mlo, schema_name, drop_bad = args
    schema = get_schema(schema_name)
    return mli, *_step_block(_read_step(mli, mlo, schema, drop_bad), schema, drop_bad)


def raw_blocks(
    pairs: list[tuple[str, str]],
    schema: str,
    bad_values: list[dict],
    drop_bad: bool = False,
    workers: int = 1,
) -> Iterator[Block]:
    """Blocks of raw ``pairs`` in order, one per time step, read by ``workers`` processes.

    ``drop_bad``: drop samples with NaN/Inf values (else they raise RawDataError); a file with dropped
    samples appends ``{"file", "dropped_samples", "problem"}`` to ``bad_values``.
    """

    def consume(results):
        for mli, block, dropped, note in results:
            if dropped:
                bad_values.append({"file": mli, "dropped_samples": dropped, "problem": note})
            if block is not None:
                yield block

    jobs = [(mli, mlo, schema, drop_bad) for mli, mlo in pairs]
    if workers <= 1:
        yield from consume(map(_read_raw, jobs))
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        yield from consume(pool.map(_read_raw, jobs))


def die_with_parent(parent: int) -> None:
    """Pool-worker initializer: the kernel kills this worker when its parent dies (even by SIGKILL).

    Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere the pool is only shut down on a clean exit.
    Without it a ``kill -9`` of the encoder left its workers (and multiprocessing's resource tracker,
    which waits for them) running.
    """
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
