"""Writing a shard's TFRecord files: each published atomically under a content-hashed name.

:class:`ShardWriter` frames, hashes (sha256, while writing: no second read) and writes blocks into
``part-IIIII-of-NNNNN-JJJJJ-HHHHHHHH.tfrecord`` files; :class:`BackgroundWriter` runs it on a
thread, so that framing, hashing and writing overlap with reading the next raw file (netCDF
decoding, numpy conversions, sha256 and file writes all release the GIL).
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from pathlib import Path

from tfpipe import storage
from tfpipe.data.manifest import FileEntry
from tfpipe.data.records import Block, block_pieces, frame_pieces


class ShardWriter:
    """Writes blocks into ``part-IIIII-of-NNNNN-JJJJJ-HHHHHHHH.tfrecord`` files, each published atomically.

    ``HHHHHHHH`` is the start of the file's sha256: a re-run with the same input writes the same names
    (byte-identical), while other content never takes the name of a file that a committed manifest
    still lists, so ``--overwrite`` keeps the old shard readable until the new manifest replaces it.
    """

    def __init__(self, shard: int, num_shards: int, dst: str, blocks_per_file: int) -> None:
        self.shard, self.num_shards, self.dst, self.blocks_per_file = shard, num_shards, dst, blocks_per_file
        self.entries: list[FileEntry] = []
        self._writer = None
        self._local = None
        self._records = self._samples = 0

    def _name(self, index: int, digest: str) -> str:
        return f"part-{self.shard:05d}-of-{self.num_shards:05d}-{index:05d}-{digest[:8]}.tfrecord"

    def _stem(self) -> str:
        return f"part-{self.shard:05d}-of-{self.num_shards:05d}-{len(self.entries):05d}"

    def write(self, block: Block) -> None:
        try:
            self._write(block)
        except OSError as err:  # a full disk, a quota, a lost mount: one line naming the file
            raise self._error(err) from None

    def _error(self, err: OSError) -> storage.StorageError:
        if isinstance(err, storage.StorageError):
            return err
        return storage.StorageError(
            f"{storage.join(self.dst, self._stem())}.tfrecord: {err.strerror or err} (while writing it)"
        )

    def _write(self, block: Block) -> None:
        if self._writer is None:
            # beside a local dst (renamed into place), in the system temp folder for gs:// (uploaded)
            self._local = storage.local_temp_for(storage.join(self.dst, self._stem()))
            self._writer = open(self._local, "wb")  # noqa: SIM115 - closed in close_file/abort
            self._hash, self._bytes = hashlib.sha256(), 0
            self._times: list[int] = []
        for piece in frame_pieces(block_pieces(block)):  # the large arrays are never copied into one record
            self._writer.write(piece)
            self._hash.update(piece)  # hashed while written: no second read of the file
            self._bytes += len(piece)
        self._records += 1
        self._samples += len(block)
        known = block.time[block.time >= 0]
        if len(known):
            self._times += [int(known.min()), int(known.max())]
        if self._records >= self.blocks_per_file:
            self._close_file()

    def abort(self) -> None:
        """Drop the file being written (nothing half-written is ever published)."""
        if self._writer is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush of close(): dropped anyway
                self._writer.close()
            Path(self._local).unlink(missing_ok=True)
            self._writer = None

    def close_file(self) -> None:
        """Publish the file being written (StorageError naming it on failure)."""
        try:
            self._close_file()
        except OSError as err:
            raise self._error(err) from None

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        digest = self._hash.hexdigest()
        name = self._name(len(self.entries), digest)
        storage.publish(self._local, storage.join(self.dst, name))  # fsync'ed, then renamed or uploaded
        times = (min(self._times), max(self._times)) if self._times else (None, None)
        self.entries.append(FileEntry(name, self._bytes, digest, self._records, self._samples, *times))
        self._writer = None
        self._records = self._samples = 0


class BackgroundWriter:
    """A :class:`ShardWriter` on its own thread, fed through a short queue (bounded memory).

    ``write`` hands a block over (and re-raises an error the thread met); ``close`` waits for every
    block to be written and the last file published; ``abort`` stops and deletes the file in progress.
    """

    _DONE = object()

    def __init__(self, writer: ShardWriter, depth: int = 2) -> None:
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tfpipe-shard-writer", daemon=True)
        self._thread.start()

    @property
    def entries(self) -> list[FileEntry]:
        return self.writer.entries

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not self._DONE:
                if not self._stop.is_set():
                    self.writer.write(item)
            if not self._stop.is_set():
                self.writer.close_file()
        except BaseException as err:  # handed to the caller by write/close
            self._error = err
            self._stop.set()
            while self._queue.get() is not self._DONE:  # let a blocked put() finish
                pass

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, block: Block) -> None:
        self._raise()
        self._queue.put(block)

    def close(self) -> None:
        self._queue.put(self._DONE)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()
        self.writer.abort()
