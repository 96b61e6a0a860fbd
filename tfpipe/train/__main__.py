"""``python -m tfpipe.train``."""

import sys

from tfpipe.train.cli import main

sys.exit(main(prog="python -m tfpipe.train"))
