"""Paths for TensorFlow (:func:`tf_path`), and the tensorflow-io GCS plugin for an emulator.

In production (TPU VMs, GPU hosts, Colab) TensorFlow's built-in GCS filesystem reads ``gs://`` paths
directly and ``tensorflow-io`` is not needed. The built-in filesystem cannot be pointed at an
emulator, so when ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` is set (tests, see ``tests/gcs_emulator.py``),
:func:`tf_path` loads the ``tensorflow-io`` GCS plugin, which honours that variable. The plugin only
takes over ``gs://`` when ``TF_USE_MODULAR_FILESYSTEM=1`` is in the environment before TensorFlow is
imported; :func:`tf_path` sets it if TensorFlow is not yet imported and raises a clear error if it was
imported without it. It also fills in the plugin's cache variables, without which the plugin crashes
when an emulator endpoint is set. This module never imports TensorFlow itself.
"""

from __future__ import annotations

import os
import sys
import threading

from tfpipe.storage.base import StorageError, one_line
from tfpipe.storage.paths import GS, scheme, split_gs

#: Cache settings the tensorflow-io GCS plugin needs when an emulator endpoint is set.
_TF_IO_GCS_CACHE_ENV = {
    "GCS_READ_CACHE_BLOCK_SIZE_MB": "16",
    "GCS_READ_CACHE_MAX_SIZE_MB": "0",
    "GCS_READ_CACHE_MAX_STALENESS": "0",
    "GCS_STAT_CACHE_MAX_AGE": "0",
    "GCS_STAT_CACHE_MAX_ENTRIES": "1024",
}

_TF_IO_LOCK = threading.Lock()
_TF_IO_LOADED = False


def tf_path(path: str | os.PathLike[str]) -> str:
    """``path`` in a form ``tf.io.gfile`` and ``tf.data`` can open.

    Local paths and ``gs://`` paths are returned as they are (``gs://bucket`` gets its trailing
    slash, which TF's GCS filesystems need). When ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` is set, the
    tensorflow-io GCS plugin is loaded first (see the module docstring); production uses TF's
    built-in ``gs://`` support and never imports tensorflow-io. ``hf://`` paths cannot be opened by
    TensorFlow: download them first.
    """
    path = os.fspath(path)
    kind = scheme(path)
    if kind == "hf":
        raise StorageError(f"{path}: TensorFlow cannot open hf:// paths; download the files first")
    if kind == "local":
        return path
    bucket, key = split_gs(path)
    if os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT"):
        _load_tf_io_gcs_plugin(path)
    return f"{GS}{bucket}/{key}"


def _load_tf_io_gcs_plugin(path: str) -> None:
    """Import tensorflow_io so that its GCS plugin (which honours the emulator endpoint) serves gs://."""
    global _TF_IO_LOADED
    with _TF_IO_LOCK:
        if _TF_IO_LOADED:
            return
        if os.environ.get("TF_USE_MODULAR_FILESYSTEM") != "1":
            if "tensorflow" in sys.modules:
                raise StorageError(
                    f"{path}: CLOUD_STORAGE_EMULATOR_ENDPOINT is set but TensorFlow was imported without "
                    "TF_USE_MODULAR_FILESYSTEM=1; set it before importing tensorflow"
                )
            os.environ["TF_USE_MODULAR_FILESYSTEM"] = "1"
        for name, value in _TF_IO_GCS_CACHE_ENV.items():
            os.environ.setdefault(name, value)
        try:
            import tensorflow_io  # noqa: F401  (registers the gs:// plugin)
        except Exception as err:
            raise StorageError(
                f"{path}: CLOUD_STORAGE_EMULATOR_ENDPOINT is set but the tensorflow-io GCS plugin cannot be "
                f"loaded ({type(err).__name__}: {one_line(err)[:200]}); pip install tensorflow-io==0.37.1"
            ) from None
        _TF_IO_LOADED = True
