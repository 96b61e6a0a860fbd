"""data_prep.stats' progress bar measures reading, not the TensorFlow import of the first block."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli  # a command's progress output: run once, in `make test`

ROOT = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent(
    """
    import json, sys
    import tqdm
    from data_prep.stats import compute_stats

    seen = []
    init = tqdm.tqdm.__init__

    def observed(self, *args, **kwargs):  # records what is imported when the bar's clock starts
        seen.append("tensorflow" in sys.modules)
        init(self, *args, **kwargs)

    tqdm.tqdm.__init__ = observed
    compute_stats(sys.argv[1], progress=True)
    print(json.dumps(seen))
    """
)


def test_the_bar_starts_after_tensorflow_is_imported(tiny_encoded: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tiny_encoded)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [True]
