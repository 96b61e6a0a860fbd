"""``python -m tfpipe.cli``: the ``tfpipe`` console script."""

import sys

from tfpipe.cli.main import main

sys.exit(main())
