"""Small pieces shared by every command-line entry point."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE`` on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def stop_on_signals(prog: str) -> None:
    """Until a command installs its own handlers: SIGTERM (and SIGINT) end it with one line, no traceback.

    Exit code 128 + the signal number, as a shell reports a killed command. Atomic writes leave
    nothing behind (their temporary files are removed while the exception unwinds).
    """
    import signal

    def stop(signum, frame):
        name = signal.Signals(signum).name
        print(f"{prog}: stopped by {name} (nothing half-written was published)", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, stop)
        except ValueError:  # not the main thread (an embedding application): leave signals alone
            return
