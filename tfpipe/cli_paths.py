"""Path arguments of every command are checked when they are parsed: one line, exit 2, before any work.

:func:`check_path_arguments` gives each path option of a parser (and of its sub-commands) the type
:func:`path_argument`, which is :func:`tfpipe.storage.check_path`: ``gs://`` without a bucket, a
bad bucket name, ``gs:`` with its slashes stripped, or an unknown ``xx://`` scheme are refused as
``PROG: error: argument --dst: gs://: gs:// URL without a bucket name (gs://BUCKET/PATH)``, instead
of becoming a local folder ``./gs:`` or a bucket named after the next path component.
"""

from __future__ import annotations

import argparse

PATH_OPTIONS = frozenset({
    "--src", "--dst", "--grid", "--data", "--out", "--out-dir", "--merge", "--config", "--run-dir",
    "--checkpoint", "--models", "--weights", "--pred", "--pred-dir", "--truth", "--stats", "--apply",
    "--spec", "--workdir", "--runs", "--runs-dir", "--space",
})  # fmt: skip
"""Options that name a file or folder (local, gs:// or hf://) wherever they appear."""


def path_argument(value: str) -> str:
    """argparse type of a path: the path itself, or ArgumentTypeError with the one-line reason."""
    from tfpipe import storage  # no TensorFlow, no cloud client

    try:
        return storage.check_path(value)
    except storage.StorageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_path_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every untyped path option of ``parser`` and its sub-parsers the type :func:`path_argument`."""
    for action in parser._actions:  # argparse has no public walk over a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                check_path_arguments(sub)
        elif action.type is None and PATH_OPTIONS.intersection(action.option_strings):
            action.type = path_argument
    return parser
