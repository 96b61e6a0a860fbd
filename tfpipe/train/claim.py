"""The run dir's claim: one training session at a time, taken atomically before anything is written.

``status.json`` says ``running`` only a few seconds into a session, so two trainers started together
both passed the busy check and wrote into one run dir. The claim closes that gap: the chief takes it
right after its session is planned (before the run dir's leftovers are cleaned or anything written)
and a second trainer is refused at once (:class:`RunDirBusy`, exit code 2).

- Local run dir: an exclusive ``flock`` on ``RUN/train.lock`` (the file holds the owner's host and
  pid, for the message). The kernel drops the lock when its process dies, so a SIGKILLed trainer
  never blocks the next one (its file stays until the next session ends). The owner unlinks the file
  before it unlocks, and a taker checks that the file it locked is still the one at the path.
- ``gs://`` run dir: the object ``RUN/train.lock`` created with ``if_generation_match=0``. A claim
  whose owner is dead (same host: its pid is gone; another host: neither the claim nor the owner's
  ``status.json`` heartbeat is younger than :data:`~tfpipe.train.status.STALE_AFTER_S`) is taken over
  by deleting that generation (``if_generation_match``), then creating anew: of two takers, one wins.
  The claim is deleted when the session ends.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

from tfpipe import storage
from tfpipe.train.checkpoints import TrainError
from tfpipe.train.rundir import CLAIM
from tfpipe.train.status import STALE_AFTER_S, _alive, read_status

CLAIM_FILE = CLAIM
_HELD: set[str] = set()
"""Tokens of the claims this process holds."""


class RunDirBusy(TrainError):
    """Another live session holds the run dir."""


def claim_path(run_dir: str) -> str:
    return storage.join(run_dir, CLAIM_FILE)


def _record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": uuid.uuid4().hex}


def _busy(run_dir: str, owner: dict) -> RunDirBusy:
    host, pid = owner.get("host", "?"), owner.get("pid", "?")
    return RunDirBusy(
        f"{claim_path(run_dir)}: {run_dir} is being trained by {host} pid {pid}: wait for it, stop it, or "
        f"use another run dir (a claim from another host counts as dead {STALE_AFTER_S:.0f} s after its "
        "session's last heartbeat)"
    )


def is_stale(run_dir: str, owner: dict, now: float | None = None) -> bool:
    """Whether the claim ``owner`` belongs to a session that is gone."""
    host, pid = owner.get("host"), int(owner.get("pid", -1))
    if host == socket.gethostname():
        if pid == os.getpid():  # ours: stale unless a session of this process still holds it
            return owner.get("token") not in _HELD
        return not _alive(pid)
    seen = float(owner.get("time", 0.0))
    status = read_status(run_dir) or {}
    if status.get("host") == host and status.get("pid") == pid:
        seen = max(seen, float(status.get("time", 0.0)))
    return (now or time.time()) - seen > STALE_AFTER_S


class Claim:
    """The held claim of one run dir; :meth:`release` (or a ``with`` block) gives it back."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.record = _record()
        self._fd: int | None = None
        if storage.is_remote(run_dir):
            self._take_remote()
        else:
            self._take_local()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- local: flock ------------------------------------------------------------------------------------

    def _take_local(self) -> None:
        import fcntl

        storage.makedirs(self.run_dir)
        path = claim_path(self.run_dir)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_local(fd)
                os.close(fd)
                raise _busy(self.run_dir, owner) from None
            except OSError as err:  # a file system without locks (some FUSE mounts): say so, go on
                os.close(fd)
                print(f"[train] warning: {path}: cannot lock ({err.strerror}); nothing stops a second "
                      "trainer of this run dir", flush=True)  # fmt: skip
                return
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder unlinked it as we opened it: lock the file that is there now
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.record).encode(), 0)
        self._fd = fd

    # -- gs://: generation-match create --------------------------------------------------------------------

    def _take_remote(self) -> None:
        path = claim_path(self.run_dir)
        data = json.dumps(self.record).encode()
        for _attempt in range(3):
            try:
                storage.write_bytes(path, data, overwrite=False)
                _HELD.add(self.record["token"])
                return
            except storage.StorageNotFoundError:
                raise
            except storage.StorageError as err:
                if "already exists" not in str(err):
                    raise
            owner, generation = _read_remote(path)
            if owner is None:
                continue  # deleted meanwhile: try again
            if not is_stale(self.run_dir, owner):
                raise _busy(self.run_dir, owner)
            print(f"[train] {path}: taking over the claim of {owner.get('host')} pid {owner.get('pid')} "
                  "(gone)", flush=True)  # fmt: skip
            _delete_remote(path, generation)  # a racing taker deletes nothing: its generation is gone
        raise RunDirBusy(f"{path}: the claim kept changing; another trainer is starting on {self.run_dir}")

    def release(self) -> None:
        """Give the run dir back (locally: unlock; gs://: delete the claim if it is still ours)."""
        if self._fd is not None:
            import fcntl

            try:  # unlinked while still locked: a trainer that opened it meanwhile sees another inode
                os.unlink(claim_path(self.run_dir))
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif storage.is_remote(self.run_dir) and self.record is not None:
            path = claim_path(self.run_dir)
            try:
                owner, generation = _read_remote(path)
                if owner is not None and owner.get("token") == self.record["token"]:
                    _delete_remote(path, generation)
            except storage.StorageError as err:  # the claim is stale once we are gone anyway
                print(f"[train] warning: {path}: not removed ({err})", flush=True)
            _HELD.discard(self.record["token"])
        self.record = None


def _read_local(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _read_remote(path: str) -> tuple[dict | None, int | None]:
    """(the claim, its generation), or (None, None) when there is none."""
    from google.api_core import exceptions as gexc

    from tfpipe.storage.gcs import _blob, _call

    blob = _blob(path)
    try:
        data = _call(path, blob.download_as_bytes)
    except storage.StorageNotFoundError:
        return None, None
    except gexc.NotFound:
        return None, None
    try:
        owner = json.loads(data)
    except ValueError:
        owner = {}  # unreadable: treated as a dead owner's (no pid, no time)
    return owner if isinstance(owner, dict) else {}, blob.generation


def _delete_remote(path: str, generation: int | None) -> None:
    from google.api_core import exceptions as gexc

    from tfpipe.storage.gcs import _blob

    try:
        _blob(path).delete(if_generation_match=generation)
    except (gexc.NotFound, gexc.PreconditionFailed):
        pass  # already gone or replaced: the next create decides
