"""Small helpers for the notebooks in ``notebooks/`` (Colab, Kaggle, local Jupyter).

The notebooks hold parameters and calls only; what they need beyond the pipeline's own functions
lives here: where they run, a summary printer whose JSON the notebook tests read back, and the
"statistics once every shard is encoded" step of ``01_encode_shard``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

from tfpipe import storage

STATS_FILE = "stats.json"


def in_colab() -> bool:
    """Running in a Google Colab runtime."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def in_kaggle() -> bool:
    """Running in a Kaggle notebook session."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or "KAGGLE_URL_BASE" in os.environ


def platform() -> str:
    """``colab``, ``kaggle`` or ``local``."""
    return "colab" if in_colab() else "kaggle" if in_kaggle() else "local"


def environment() -> dict:
    """Where the notebook runs: platform, versions and whether a TPU is hinted (no TPU connection)."""
    import keras
    import tensorflow as tf

    from tfpipe import distribute

    tpu_env = any(k in os.environ for k in distribute._TPU_ENV)
    return {
        "platform": platform(),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tpu_hint": tpu_env or distribute._local_tpu_hint(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def show_summary(summary: Any) -> None:
    """Print ``summary`` (a dict or dataclass) as one JSON document on stdout."""
    print(json.dumps(summary, indent=1, default=_plain))


def stats_when_complete(data: str, num_shards: int) -> dict:
    """Write ``DATA/stats.json`` once all ``num_shards`` shards under ``data`` are encoded.

    Each shard's job (notebook 01) calls this after encoding; the first to find every shard complete
    computes the float64 statistics (the others find the file and skip). Returns what happened:
    ``{"stats": path, "written": bool, "missing_shards": [...]}``.
    """
    from data_prep.stats import compute_stats
    from tfpipe.data.manifest import manifest_name

    path = storage.join(data, STATS_FILE)
    missing = [
        i for i in range(num_shards) if not storage.exists(storage.join(data, manifest_name(i, num_shards)))
    ]
    result: dict[str, Any] = {"stats": path, "written": False, "missing_shards": missing}
    if missing or storage.exists(path):
        return result
    stats = compute_stats(data)
    storage.write_bytes(path, stats.to_json().encode())
    return result | {"written": True, "samples": stats.count}
