"""Small pieces shared by every command-line entry point."""

from __future__ import annotations

import argparse
import atexit
import os
import re
import sys
import threading
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
    rb"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} \d\d:\d\d:\d+\.\d+ )"
)
"""Native start-up lines of TensorFlow/XLA: absl's pre-initialisation warning and its INFO lines
(``I0000 00:00:... service.cc] XLA service ... initialized``, ``Compiled cluster using XLA!``)."""
_terminal: TextIO | None = None


def quiet_native_logs() -> None:
    """Drop TensorFlow/XLA's native INFO start-up lines from this process's stderr (fd 2).

    absl writes them from C++ before it is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not silence
    them. Everything else (warnings, errors, our lines, progress bars) passes through a thread that
    reads a pipe in place of fd 2. Skipped when ``TF_CPP_MIN_LOG_LEVEL`` is 0 or 1 (the user wants
    TensorFlow's logs) or ``TFPIPE_NATIVE_LOGS=1``.
    """
    global _terminal
    if _terminal is not None or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1"):
        return
    if os.environ.get("TFPIPE_NATIVE_LOGS") == "1":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    _terminal = os.fdopen(os.dup(saved), "w", buffering=1)

    def forward() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not _NATIVE_NOISE.match(line))
            if pending and not pending.startswith((b"I", b"W")):  # a progress bar redraw: pass it now
                out, pending = out + pending, b""
            if out:
                os.write(saved, out)
        if pending:
            os.write(saved, pending)

    thread = threading.Thread(target=forward, name="tfpipe-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end in this process: the thread sees EOF
        thread.join(timeout=2.0)

    atexit.register(restore)


def terminal_stderr() -> TextIO:
    """The real stderr as a text stream (its ``isatty()`` is the terminal's, for progress bars)."""
    return _terminal if _terminal is not None else sys.stderr
