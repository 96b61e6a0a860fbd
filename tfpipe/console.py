"""The terminal side of every entry point (``tfpipe``, ``python -m tfpipe.train``, ``data_prep``):
an argument parser with one-line errors, path arguments checked as they are parsed, stop signals,
and the filter of TensorFlow's native start-up lines. Imports nothing of tfpipe but
:mod:`tfpipe.storage` (lazily), so every layer may use it.

Path arguments of every command are checked when they are parsed: one line, exit 2, before any work.

:func:`check_path_arguments` gives each path option of a parser (and of its sub-commands) the type
:func:`path_argument`, which is :func:`tfpipe.storage.check_path`: ``gs://`` without a bucket, a
bad bucket name, ``gs:`` with its slashes stripped, or an unknown ``xx://`` scheme are refused as
``PROG: error: argument --dst: gs://: gs:// URL without a bucket name (gs://BUCKET/PATH)``, instead
of becoming a local folder ``./gs:`` or a bucket named after the next path component.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import re
import signal as _signal
import subprocess
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``PROG: error: MESSAGE``, exit code 2) and defaults in help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


_stop_signals: list[int] = []


def stopped_by_signal() -> int | None:
    """128 + the number of the signal :func:`stop_on_signals` stopped on, or None.

    A signal that arrives while a native extension module initialises (TensorFlow's, during its
    import) surfaces as that module's ``ImportError`` instead of the handler's SystemExit: the
    commands check this to exit as the handler meant (one line, code 128 + N) instead of a traceback.
    """
    return 128 + _stop_signals[-1] if _stop_signals else None


def stop_on_signals(prog: str) -> None:
    """Until a command installs its own handlers: SIGTERM (and SIGINT) end it with one line, no traceback.

    Exit code 128 + the signal number, as a shell reports a killed command. Atomic writes leave
    nothing behind (their temporary files are removed while the exception unwinds).
    """
    import signal

    def stop(signum, frame):
        name = signal.Signals(signum).name
        _stop_signals.append(signum)
        print(f"{prog}: stopped by {name} (nothing half-written was published)", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, stop)
        except ValueError:  # not the main thread (an embedding application): leave signals alone
            return


_NATIVE_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} \d\d:\d\d:\d+\.\d+ "
    rb"|E\d{4} [^\]]*node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool )"
)
"""Native start-up lines of TensorFlow/XLA: absl's pre-initialisation warning and its INFO lines
(``I0000 00:00:... service.cc] XLA service ... initialized``, ``Compiled cluster using XLA!``), and
TF 2.18+'s harmless error-level note that a ``MapDataset`` node carries ``use_unbounded_threadpool``
(printed when tf.data graphs are built; the pipeline runs as it should)."""
_FILTER = """
import os, re, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
noise, pending = re.compile(sys.argv[1].encode("latin-1")), b""
try:
    while chunk := os.read(0, 65536):
        *lines, pending = (pending + chunk).split(b"\\n")
        out = b"".join(line + b"\\n" for line in lines if not noise.match(line))
        if pending and not pending.startswith((b"I", b"W")):  # a progress bar redraw: pass it now
            out, pending = out + pending, b""
        if out:
            os.write(1, out)
    if pending:
        os.write(1, pending)
except OSError:  # the terminal went away
    pass
"""
"""The filter process: stdin (the pipe that is our fd 2) to stdout (the real stderr), noise dropped."""
_terminal: TextIO | None = None


def quiet_native_logs() -> None:
    """Drop TensorFlow/XLA's native INFO start-up lines from this process's stderr (fd 2).

    TensorFlow's own settings do not reach them: absl writes them from C++ before it is initialised,
    and with TF 2.17 neither ``TF_CPP_MIN_LOG_LEVEL`` (set to 2 by ``import tfpipe``) nor absl's
    ``SetMinLogLevel`` silences them. So fd 2 becomes a pipe to a small filter *process* that passes
    everything else (warnings, errors, our lines, progress bars) to the real stderr. Being another
    process, it outlives an abort of this one: a native ``Check failed`` and the lines before it stay
    in the pipe and are still written out (a reader thread in this process died with it). It ignores
    terminal signals (its own session) and ends when the last writer of the pipe closes it. Skipped
    when ``TF_CPP_MIN_LOG_LEVEL`` is 0 or 1 (the user wants TensorFlow's logs) or
    ``TFPIPE_NATIVE_LOGS=1``.
    """
    global _terminal
    if _terminal is not None or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1"):
        return
    if os.environ.get("TFPIPE_NATIVE_LOGS") == "1":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        pattern = _NATIVE_NOISE.pattern.decode("latin-1")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER, pattern],
            stdin=read_end, stdout=saved, stderr=saved, start_new_session=True,
        )  # fmt: skip
    except OSError:  # no process to spare: leave stderr as it is
        os.close(saved)
        return
    finally:
        os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    _terminal = os.fdopen(os.dup(saved), "w", buffering=1)

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end in this process: the filter sees EOF
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:  # a child of ours still holds the pipe: it goes on without us
            pass

    atexit.register(restore)


def terminal_stderr() -> TextIO:
    """The real stderr as a text stream (its ``isatty()`` is the terminal's, for progress bars)."""
    return _terminal if _terminal is not None else sys.stderr


def restores_signal_handlers(command: Callable[..., int]) -> Callable[..., int]:
    """``command`` with the caller's SIGTERM and SIGINT handlers put back when it returns: the handlers it
    installs (:func:`stop_on_signals`) are for a command line, not for a program that calls it in-process."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> int:
        previous = {sig: _signal.getsignal(sig) for sig in (_signal.SIGTERM, _signal.SIGINT)}
        try:
            return command(*args, **kwargs)
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: installed outside Python, cannot be put back
                    try:
                        _signal.signal(sig, handler)
                    except ValueError:  # not the main thread: the command installed nothing either
                        pass

    return run


def stopped_or_raise() -> int:
    """In an ``except`` block: the stop signal's exit code if one interrupted start-up (TensorFlow's
    import fails with ImportError then, see :func:`tfpipe.console.stopped_by_signal`), else re-raise."""
    code = stopped_by_signal()
    if code is None:
        raise  # noqa: PLE0704 (called from an except block)
    return code


def run_json_command(
    prog: str,
    body: Callable[[], object],
    errors: tuple[type[BaseException], ...],
    on_ctrl_c: str | None = None,
) -> int:
    """Run a command's ``body`` and print what it returns as JSON on stdout: 0. An ``errors`` exception
    is one line ``PROG: error: ...`` on stderr and exit 2; a stop signal during start-up is its exit
    code (:func:`stopped_or_raise`); with ``on_ctrl_c``, KeyboardInterrupt prints it and exits 130."""
    try:
        summary = body()
    except KeyboardInterrupt:
        if on_ctrl_c is None:
            raise
        print(f"{prog}: {on_ctrl_c}", file=sys.stderr)
        return 130
    except errors as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        return stopped_or_raise()
    print(json.dumps(summary))
    return 0


# -- path arguments -----------------------------------------------------------------------------------

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
