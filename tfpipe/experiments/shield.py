"""``python -m tfpipe.experiments.shield CMD ...``: run ``CMD`` one process further from a Ray worker.

When a Ray worker exits (its driver, ``tfpipe launch``, was killed), it SIGKILLs its *direct* child
processes (``RAY_kill_child_processes_on_worker_exit``, on by default), so a trainer started by the
task itself would die without its SIGTERM: no clean stop after its chunk, and a ``status.json`` left
``running``. Run through this shield, the trainer is a grandchild: the worker kills the shield, and
the trainer gets SIGTERM from its parent-death signal (Linux) and stops cleanly, as documented for a
killed launcher. While the shield lives it forwards SIGTERM and SIGINT to the trainer and ends the
way the trainer ended (its exit code, or the same signal), so a caller sees no difference.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    """Run ``argv`` in its own session with SIGTERM on this process's death; its exit code."""
    from tfpipe.experiments.trainproc import _death_signal

    if not argv:
        print("usage: python -m tfpipe.experiments.shield CMD [ARG ...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv, start_new_session=True, preexec_fn=_death_signal())

    def forward(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    if code < 0:  # end by the same signal, so that the caller sees "killed by SIGKILL" (and retries)
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
