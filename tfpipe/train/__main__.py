"""``python -m tfpipe.train``."""

import sys

from tfpipe.console import stop_on_signals

stop_on_signals("python -m tfpipe.train")  # before anything heavy is imported

from tfpipe.cli.train import train_main  # noqa: E402

sys.exit(train_main(prog="python -m tfpipe.train"))
