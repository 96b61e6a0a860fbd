"""Kaggle LEAP CSV files (``train.csv`` with targets, ``test.csv`` without) read in blocks of rows.

Both ``python -m data_prep.encode --format kaggle-csv`` and ``tfpipe predict --data test.csv`` read
them here. The header must be ``sample_id`` and the schema's columns in order; values are parsed
as exact float64 (round trip); errors are :class:`CsvError` naming the file, the row and the column.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tfpipe import storage
from tfpipe.data.records import Block, make_block
from tfpipe.data.schema import NCOL, Schema


class CsvError(ValueError):
    """A file that is not a Kaggle CSV of the schema, or a row that cannot be read."""


def read_header(path: str) -> list[str]:
    """The column names of the first line."""
    with storage.open_text(path) as f:
        return f.readline().rstrip("\r\n").split(",")


def check_header(path: str, header: list[str], schema: Schema) -> bool:
    """True for a train file (with targets), False for test; CsvError naming the wrong column."""
    expected_train = ["sample_id", *schema.input_columns, *schema.target_columns]
    expected_test = expected_train[: 1 + schema.n_inputs]
    expected = expected_train if len(header) > len(expected_test) else expected_test
    for k, (got, want) in enumerate(zip(header, expected, strict=False)):
        if got != want:
            raise CsvError(f"{path}: column {k} is {got!r}, expected {want!r} ({schema.name} order)")
    if len(header) != len(expected):
        missing = expected[len(header) :]
        if missing:
            raise CsvError(f"{path}: missing columns from {missing[0]!r} on ({len(missing)} in all)")
        raise CsvError(f"{path}: unexpected extra column {header[len(expected)]!r}")
    return expected is expected_train


def count_rows(path: str) -> int:
    """Data rows of a CSV file (newlines after the header), streamed in 16 MiB pieces."""
    rows, last = 0, b"\n"
    with storage.open_binary(path) as f:
        while piece := f.read(1 << 24):
            rows += piece.count(b"\n")
            last = piece[-1:]
    return rows - 1 + (last != b"\n")


def _exact_floats(pandas_version: str) -> dict:
    """``read_csv`` arguments for exact float64 parsing: before pandas 3.1 the default C parser can be
    1 ULP off (``round_trip`` is exact); from 3.1 on every mode is exact and the argument deprecated."""
    major_minor = tuple(int(p) for p in pandas_version.split(".")[:2])
    return {} if major_minor >= (3, 1) else {"float_precision": "round_trip"}


def csv_blocks(
    path: str,
    schema: Schema,
    block_size: int,
    shard: int = 0,
    num_shards: int = 1,
    *,
    dropped: list[dict] | None = None,
    bad_values_hint: str = "fill or remove such rows",
) -> Iterator[Block]:
    """Shard ``shard`` of ``num_shards`` (a contiguous slice of the rows), in blocks of ``block_size`` rows.

    A row with NaN/Inf or empty values is a CsvError ending with ``bad_values_hint`` (what the caller
    can do), unless ``dropped`` is a list: then such rows are left out and every block that had some
    appends ``{"file", "rows", "dropped_samples", "column"}`` to it. Train rows get
    ``ncol = row % 384``, test rows ``-1``; ``time`` is ``-1``.
    """
    import pandas as pd

    header = read_header(path)
    train = check_header(path, header, schema)
    total = count_rows(path)
    if total == 0:
        raise CsvError(f"{path}: no data rows")
    start = total * shard // num_shards
    stop = total * (shard + 1) // num_shards
    if stop == start:
        return
    dtypes = {c: np.float64 for c in header[1:]} | {"sample_id": str}
    with storage.open_text(path) as f:
        reader = pd.read_csv(
            f,
            dtype=dtypes,
            skiprows=range(1, start + 1),
            nrows=stop - start,
            chunksize=block_size,
            engine="c",
            na_filter=True,
            **_exact_floats(pd.__version__),
        )
        row = start
        while True:
            try:
                chunk = next(reader)
            except StopIteration:
                break
            except pd.errors.ParserError:  # a row with too many fields (a ValueError too: check first)
                raise CsvError(_bad_row(path, len(header), row, block_size)) from None
            except ValueError:
                raise CsvError(_non_numeric_cell(path, header, row, block_size)) from None
            n = len(chunk)
            values = chunk.iloc[:, 1:].to_numpy(np.float64)
            inputs = values[:, : schema.n_inputs]
            targets = values[:, schema.n_inputs :] if train else None
            good = np.isfinite(values).all(axis=1)
            ids = chunk["sample_id"].tolist()
            if not good.all():
                bad = int((~good).sum())
                column = header[1 + int(np.nonzero(~np.isfinite(values).all(axis=0))[0][0])]
                if dropped is None:
                    first = int(np.nonzero(~good)[0][0])
                    raise CsvError(
                        f"{path}: row {row + first + 1} ({ids[first]}) has NaN/Inf or empty "
                        f"values, e.g. in {column} ({bad_values_hint})"
                    )
                dropped.append(
                    {"file": path, "rows": [row, row + n], "dropped_samples": bad, "column": column}
                )
            index = np.arange(row, row + n)
            ncol = (index % NCOL).astype(np.int32) if train else np.full(n, -1, np.int32)
            row += n
            if good.any():
                yield make_block(
                    schema,
                    inputs[good],
                    None if targets is None else targets[good],
                    ncol[good],
                    np.full(int(good.sum()), -1, np.int64),
                    [i for i, g in zip(ids, good, strict=True) if g],
                )


def _bad_row(path: str, width: int, row: int, n: int) -> str:
    """Describe the first of CSV data rows ``row .. row + n`` whose field count is not the header's."""
    with storage.open_text(path) as f:
        f.readline()
        for i, line in enumerate(f):
            if i >= row + n:
                break
            fields = line.rstrip("\r\n").count(",") + 1
            if i >= row and fields != width:
                return f"{path}: row {i + 1} has {fields} fields, the header has {width}"
    return f"{path}: rows {row + 1}..{row + n}: malformed CSV (field counts differ from the header's)"


def _non_numeric_cell(path: str, header: list[str], row: int, n: int) -> str:
    """Describe the first cell that is not a number in CSV rows ``row .. row + n``."""
    import pandas as pd

    with storage.open_text(path) as f:
        chunk = pd.read_csv(f, dtype=str, skiprows=range(1, row + 1), nrows=n, keep_default_na=False)
    for k, column in enumerate(header[1:], start=1):
        for i, cell in enumerate(chunk.iloc[:, k]):
            try:
                float(cell or "nan")
            except ValueError:
                return f"{path}: row {row + i + 1}, column {column}: {cell!r} is not a number"
    return f"{path}: rows {row + 1}..{row + n}: unparseable values"
