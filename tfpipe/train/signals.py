"""SIGTERM and Ctrl-C during training: stop cleanly at the next chunk of steps; a second Ctrl-C aborts."""

from __future__ import annotations

import signal
import sys


class Signals:
    """SIGTERM and SIGINT (Ctrl-C) become a request to stop at the next chunk; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received:
            raise KeyboardInterrupt
        self.received.append(signum)
        name = signal.Signals(signum).name
        print(f"\n[train] {name}: stopping after the current chunk of steps (Ctrl-C again aborts now)",
              file=sys.stderr, flush=True)  # fmt: skip

    def __enter__(self) -> Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # signals can only be handled in the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
