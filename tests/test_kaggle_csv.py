"""tfpipe.data.kaggle_csv: the Kaggle CSV reader shared by data_prep.encode and tfpipe predict (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfpipe.data.kaggle_csv import CsvError, check_header, count_rows, csv_blocks, read_header
from tfpipe.data.schema import KAGGLE, NCOL


def write_csv(path: Path, rows: int, with_targets: bool, seed: int = 0) -> pd.DataFrame:
    """A Kaggle-layout CSV of ``rows`` random float64 rows (exact round trip with %.17g)."""
    columns = [*KAGGLE.input_columns, *(KAGGLE.target_columns if with_targets else ())]
    values = np.random.default_rng(seed).normal(size=(rows, len(columns)))
    frame = pd.DataFrame(values, columns=columns)
    frame.insert(0, "sample_id", [f"id_{i}" for i in range(rows)])
    frame.to_csv(path, index=False, float_format="%.17g")
    return frame


def test_header_and_row_count(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    write_csv(train, 5, with_targets=True)
    write_csv(test, 3, with_targets=False)
    assert check_header(str(train), read_header(str(train)), KAGGLE) is True
    assert check_header(str(test), read_header(str(test)), KAGGLE) is False
    assert count_rows(str(train)) == 5 and count_rows(str(test)) == 3
    test.write_text(test.read_text().rstrip("\n"))  # no newline after the last row
    assert count_rows(str(test)) == 3
    header = read_header(str(train))
    with pytest.raises(CsvError, match=r"train.csv: unexpected extra column 'x'"):
        check_header(str(train), [*header, "x"], KAGGLE)
    with pytest.raises(CsvError, match=r"train.csv: column 2 is 'state_t_2', expected 'state_t_1'"):
        check_header(str(train), [header[0], header[1], header[3], header[2], *header[4:]], KAGGLE)


def test_shards_cover_the_rows_in_order_exactly(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    frame = write_csv(path, 2 * NCOL + 10, with_targets=True)
    blocks = [b for shard in range(3) for b in csv_blocks(str(path), KAGGLE, 100, shard, 3)]
    ids = [i for b in blocks for i in b.sample_id]
    assert ids == frame["sample_id"].tolist()
    inputs = np.concatenate([b.inputs for b in blocks])
    assert np.array_equal(inputs, frame[list(KAGGLE.input_columns)].to_numpy(np.float32))
    x64 = np.concatenate([b.x64 for b in blocks])
    q0002 = [f"state_q0002_{k}" for k in range(60)]
    assert np.array_equal(x64, frame[q0002].to_numpy(np.float64))  # exact float64
    assert np.array_equal(np.concatenate([b.ncol for b in blocks]), np.arange(len(frame)) % NCOL)
    assert all((b.time == -1).all() and len(b) <= 100 for b in blocks)


def test_test_rows_have_no_targets_and_no_column(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    write_csv(path, 7, with_targets=False)
    (block,) = csv_blocks(str(path), KAGGLE, 100)
    assert block.targets is None and block.y64 is None and (block.ncol == -1).all()


def test_bad_values_are_an_error_or_dropped_and_described(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    frame = write_csv(path, 30, with_targets=False)
    frame.iloc[12, 5] = np.nan
    frame.to_csv(path, index=False, float_format="%.17g")
    with pytest.raises(
        CsvError, match=r"test.csv: row 13 \(id_12\) has NaN/Inf or empty values, e.g. in .* \(do X\)"
    ):
        list(csv_blocks(str(path), KAGGLE, 10, bad_values_hint="do X"))
    dropped: list[dict] = []
    blocks = list(csv_blocks(str(path), KAGGLE, 10, dropped=dropped))
    assert sum(len(b) for b in blocks) == 29 and "id_12" not in [i for b in blocks for i in b.sample_id]
    assert dropped == [
        {"file": str(path), "rows": [10, 20], "dropped_samples": 1, "column": KAGGLE.input_columns[4]}
    ]


def test_empty_file_and_non_numeric_cell(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    frame = write_csv(path, 4, with_targets=False)
    frame.iloc[:0].to_csv(path, index=False)
    with pytest.raises(CsvError, match="test.csv: no data rows"):
        list(csv_blocks(str(path), KAGGLE, 10))
    frame = frame.astype({frame.columns[3]: object})
    frame.iloc[2, 3] = "oops"
    frame.to_csv(path, index=False)
    with pytest.raises(
        CsvError, match=rf"test.csv: row 3, column {frame.columns[3]}: 'oops' is not a number"
    ):
        list(csv_blocks(str(path), KAGGLE, 10))
