"""What a run dir has committed, for readers and for the writer's clean-up and failures.

- Readers (``tfpipe predict --checkpoint RUN``, ``tfpipe export-models``; ``tfpipe runs ls`` reads the
  same states) take the best model that the newest committed state names: :func:`best_model_path`.
- A write of a checkpoint's files that fails (a full disk, a read-only run dir) is one
  :class:`~tfpipe.train.checkpoints.TrainError` naming the file: :func:`writing`.
- The next start deletes states that a kill left behind the manager's rotation:
  :func:`drop_unlisted_states`.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

from tfpipe import storage
from tfpipe.train.checkpoints import (
    BEST,
    CHECKPOINTS,
    RunState,
    TrainError,
    available_checkpoints,
    ckpt_dir,
    drop_stale_states,
    listed_checkpoints,
    read_best_record,
    read_state,
    state_path,
)
from tfpipe.train.rundir import RunDir


def committed_best(run_dir: str) -> tuple[int, bool]:
    """(the best checkpoint B that the newest readable committed state names, whether ``best.keras``
    holds it). ``best.keras`` is replaced before the state that names it is written (see the module
    docstring), so between a kill and the next start it may hold a model no state names; readers then
    take ``best/ckpt-B`` (the best manager keeps the two latest, B among them).

    Raises TrainError when no checkpoint of the run is committed (whatever ``best.keras`` holds was
    never committed) or the states name no best checkpoint.
    """
    for n in reversed(available_checkpoints(run_dir)):
        try:
            state = read_state(run_dir, n)
            break
        except TrainError:  # corrupt, or another version's: the one before, as a resume does
            continue
    else:
        raise TrainError(
            f"{run_dir}: no committed checkpoint yet (no readable {CHECKPOINTS}/ckpt-N.state.json), so its "
            "best.keras, if any, was never committed; train it (the run resumes) and read it after"
        )
    if state.best_checkpoint is None:
        raise TrainError(f"{state_path(run_dir, n)}: names no best checkpoint")
    record = read_best_record(run_dir)
    holds = record is None or record.get("checkpoint") == f"ckpt-{state.best_checkpoint}"  # None: older runs
    return state.best_checkpoint, holds


_TOLD: set[tuple[str, int]] = set()
"""Run dirs whose uncommitted best.keras this process has reported (once each)."""


def best_model_path(run_dir: str) -> str:
    """What ``RUN`` means to a reader (predict, export-models): ``RUN/best.keras`` when it holds the
    committed best checkpoint, else that checkpoint's prefix ``RUN/best/ckpt-B`` (TrainError when the
    run has no committed checkpoint)."""
    best, holds = committed_best(run_dir)
    if holds:
        return RunDir(run_dir).best_keras
    if (run_dir, best) not in _TOLD:
        _TOLD.add((run_dir, best))
        print(f"[tfpipe] {run_dir}/best.keras holds a checkpoint that was never committed (a kill while it "
              f"was written): using the committed best, {BEST}/ckpt-{best}", file=sys.stderr)  # fmt: skip
    return storage.join(run_dir, BEST, f"ckpt-{best}")


@contextlib.contextmanager
def writing(path: str, n: int) -> Iterator[None]:
    """A failed write of ``path`` for checkpoint ``n`` (TensorFlow's PermissionDeniedError or
    ResourceExhaustedError, an OSError) as one TrainError naming it; nothing of ``n`` is committed."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.OpError, OSError) as err:
        first = (str(getattr(err, "message", "") or err).strip().splitlines() or [""])[0]
        first = re.sub(r"\s*\[Op:\w+\]$", "", re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first))[:300]
        raise TrainError(
            f"{path}: cannot be written ({type(err).__name__}: {first}); ckpt-{n} is not committed: "
            "free space or fix the permissions, then run the same command again (it resumes from the "
            "last committed checkpoint)"
        ) from None


def drop_unlisted_states(run_dir: str, state: RunState | None) -> list[str]:
    """States of checkpoints the manager's index no longer lists (a kill between a checkpoint's commit
    and the rotation's clean-up), except the best one's (``state``: the resumed one): what the next
    commit would have deleted. The paths deleted."""
    if state is None:
        return []  # a fresh run dir (or one without a committed checkpoint): nothing names a best yet
    return drop_stale_states(run_dir, listed_checkpoints(ckpt_dir(run_dir)), state.best_checkpoint)
