"""Parquet output: one row group per batch under a temporary name, published atomically; several files
published as one set (a marker file while they are replaced)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tfpipe import storage
from tfpipe.predict.loading import PredictError


class ParquetSink:
    """Writes ``sample_id`` + float64 columns one row group at a time; publishes atomically on close."""

    ROW_GROUP_ROWS = 16384

    def __init__(self, out: str, columns: tuple[str, ...], metadata: dict | None = None) -> None:
        """``metadata``: what the file is (:func:`tfpipe.evaluate.prediction_files.truth_metadata` or
        ``prediction_metadata``), stored as its ``tfpipe`` key-value metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from tfpipe.evaluate.prediction_files import arrow_metadata

        self.out, self.columns = out, columns
        self.schema = pa.schema(
            [pa.field("sample_id", pa.string())] + [pa.field(c, pa.float64()) for c in columns],
            metadata=None if metadata is None else arrow_metadata(metadata),
        )
        self.tmp = storage.local_temp_for(out)
        # dictionary encoding only for the ids: float columns never fill a dictionary (it halves write speed)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, use_dictionary=["sample_id"])
        self.rows = 0
        self._pending: list = []
        self._pending_rows = 0

    def write(self, ids: list[str], values: np.ndarray) -> None:
        """Buffer a batch; a row group is written per ``ROW_GROUP_ROWS`` rows (bounded memory)."""
        import pyarrow as pa

        arrays = [pa.array(ids, pa.string())] + [pa.array(values[:, k]) for k in range(values.shape[1])]
        self._pending.append(pa.Table.from_arrays(arrays, schema=self.schema))
        self._pending_rows += len(ids)
        self.rows += len(ids)
        if self._pending_rows >= self.ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            with self._named():
                self.writer.write_table(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0

    def _named(self):
        """A write error (a full disk) as a PredictError naming the file, not its temp."""
        from contextlib import contextmanager

        @contextmanager
        def named():
            try:
                yield
            except OSError as err:  # pyarrow's carry their errno only in the text: "[errno 28] ..."
                import re

                code = err.errno or int((re.search(r"errno (\d+)", str(err)) or [0, 0])[1])
                reason = os.strerror(code) if code else " ".join(str(err).replace(self.tmp, self.out).split())
                raise PredictError(f"{self.out}: cannot write it: {reason}") from None

        return named()

    def finish(self) -> None:
        """Write the rest and close the temp (nothing published yet)."""
        self._flush()
        with self._named():
            self.writer.close()

    def publish(self) -> None:
        with self._named():
            storage.publish(self.tmp, self.out)

    def close(self) -> None:
        self.finish()
        self.publish()

    def abort(self) -> None:
        import contextlib

        self._pending = []
        with contextlib.suppress(Exception):  # a writer that failed to close (a full disk) fails again
            self.writer.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


PUBLISHING = ".tfpipe-publishing.json"
"""Present in a folder while :func:`publish_together` replaces several files there (its content names
them): a reader (``tfpipe blend --pred-dir``) refuses the folder, as a kill then leaves a mix."""


def publish_together(sinks: Sequence[ParquetSink]) -> None:
    """Publish finished sinks as one set: ``PUBLISHING`` is written in their folder first and deleted
    after the last, so that a kill between two files leaves a folder that readers refuse (the re-run
    publishes the whole set again) instead of a silent mix of two runs."""
    import json

    folders = {posix_dirname(sink.out) for sink in sinks}
    if len(sinks) < 2 or len(folders) != 1:
        for sink in sinks:
            sink.publish()
        return
    marker = storage.join(folders.pop(), PUBLISHING)
    names = [posix_basename(sink.out) for sink in sinks]
    try:
        storage.write_bytes(marker, json.dumps({"files": names, "pid": os.getpid()}).encode())
    except OSError as err:
        raise PredictError(f"{marker}: cannot write it: {err.strerror or err}") from None
    for sink in sinks:
        sink.publish()
    storage.delete(marker, missing_ok=True)


def posix_dirname(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else "."


def posix_basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
