"""A job's shard from its environment: the task index a batch system gives each of its tasks.

``data_prep.encode`` and ``data_prep.download`` default ``--shard`` to the first of
:data:`SHARD_ENV` that is set (Kubernetes indexed Jobs, then Cloud Run jobs and Cloud Batch), and
``download`` defaults ``--num-shards`` to :data:`COUNT_ENV`, so one command fans out over the tasks.
"""

from __future__ import annotations

import os

SHARD_ENV = ("JOB_COMPLETION_INDEX", "CLOUD_RUN_TASK_INDEX")
"""Variables that hold a task's index, in order of precedence."""
COUNT_ENV = ("CLOUD_RUN_TASK_COUNT",)
"""Variables that hold the number of tasks."""


class ShardEnvError(ValueError):
    """A shard variable that is set but does not hold an integer."""


def int_from_env(names: tuple[str, ...]) -> tuple[int | None, str | None]:
    """``(value, name)`` of the first of ``names`` set to a non-empty value; ``(None, None)`` if none is.

    An empty value counts as unset. Any other value must parse with ``int()`` (surrounding
    whitespace allowed, so a blank value is an error): otherwise ShardEnvError
    ``$NAME='value' is not an integer``, with the value as it is in the environment.
    """
    for name in names:
        value = os.environ.get(name, "")
        if value != "":
            try:
                return int(value), name
            except ValueError:
                raise ShardEnvError(f"${name}={value!r} is not an integer") from None
    return None, None
