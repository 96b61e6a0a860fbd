"""``python -m tfpipe.predict``."""

import sys

from tfpipe.console import stop_on_signals

stop_on_signals("python -m tfpipe.predict")  # before anything heavy is imported

from tfpipe.cli.predict import predict_main  # noqa: E402

sys.exit(predict_main(prog="python -m tfpipe.predict"))
