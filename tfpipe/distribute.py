"""Choose the distribution strategy once, at the edge, and resolve the matching precision policy.

Order of preference with ``prefer="auto"``: a TPU (Colab, Kaggle, Cloud TPU VM or node), several
workers named in ``TF_CONFIG`` (MultiWorkerMirroredStrategy), the visible GPUs (MirroredStrategy),
else the default strategy. ``prefer="cpu-mirrored"`` mirrors over every logical CPU device: with
:func:`configure_logical_cpus` (8) it stands in for the 8 cores of a TPU in tests.

TPU discovery never waits on the network unless there is a hint of a TPU: ``TPUClusterResolver()``
without a TPU name fails at once, and ``tpu="local"`` (TPU VMs) is only tried when TPU devices
(``/dev/accel*``, ``/dev/vfio/*``) or TPU environment variables are present. On a Cloud TPU node (a
remote TPU host) the data must be on ``gs://`` (the input pipeline runs on that host); checkpoints
are written from this process (:func:`checkpoint_options`), so the run dir may be local or ``gs://``.
"""

from __future__ import annotations

import glob
import json
import logging
import os

import tensorflow as tf

from tfpipe.config import PRECISIONS

log = logging.getLogger(__name__)

KINDS = ("tpu", "multiworker", "mirrored", "default")
PREFER = ("auto", "tpu", "multiworker", "mirrored", "default", "cpu-mirrored")
_TPU_ENV = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG")
_LOCAL_TPU_ENV = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "TPU_SKIP_MDS_QUERY")


def configure_logical_cpus(n: int) -> None:
    """Split the first physical CPU into ``n`` logical devices.

    Must run before TensorFlow initialises its devices (before any op or strategy).

    Raises:
        RuntimeError: devices were already initialised with another count.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise RuntimeError(
                f"cannot split the CPU into {n} logical devices: TensorFlow already initialised {have}; "
                "call configure_logical_cpus before any TensorFlow op"
            ) from err


def tf_config_workers() -> int:
    """Number of worker tasks (chief included) named in ``TF_CONFIG``; 0 when it is unset."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as err:
        raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster': {raw[:200]!r}") from err
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _local_tpu_hint() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")) or any(
        k in os.environ for k in _LOCAL_TPU_ENV
    )


def _tpu_strategy(required: bool) -> tf.distribute.TPUStrategy | None:
    """Connect to a TPU and return its strategy; None (or an error if ``required``) without one."""
    candidates: list[str | None] = []
    if required or any(k in os.environ for k in _TPU_ENV):
        candidates.append(None)  # a named TPU: Cloud TPU node, GKE
    if required or _local_tpu_hint():
        candidates.append("local")  # TPU VM: Colab, Kaggle, Cloud TPU VM
    errors = []
    for tpu in candidates:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as err:
            errors.append(f"tpu={tpu!r}: {err}")
    if required:
        raise RuntimeError("no TPU found: " + "; ".join(errors))
    if errors:
        log.warning("TPU hinted but not usable, falling back: %s", "; ".join(errors))
    return None


def choose_strategy(prefer: str = "auto") -> tuple[tf.distribute.Strategy, str]:
    """The strategy to train under and its kind (``tpu``, ``multiworker``, ``mirrored``, ``default``).

    Args:
        prefer: ``auto`` (TPU, then TF_CONFIG workers, then GPUs, then default), one kind to force,
            or ``cpu-mirrored`` (MirroredStrategy over all logical CPU devices; kind ``mirrored``).

    Raises:
        RuntimeError: a forced kind is not available (no TPU, no GPU, fewer than two workers).
    """
    if prefer not in PREFER:
        raise ValueError(f"prefer must be one of {PREFER}, got {prefer!r}")
    if prefer == "cpu-mirrored":
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus), "mirrored"
    if prefer in ("auto", "tpu"):
        strategy = _tpu_strategy(required=prefer == "tpu")
        if strategy is not None:
            return strategy, "tpu"
    if prefer in ("auto", "multiworker"):
        if tf_config_workers() > 1:
            return tf.distribute.MultiWorkerMirroredStrategy(), "multiworker"
        if prefer == "multiworker":
            raise RuntimeError("multiworker needs TF_CONFIG naming at least two workers")
    if prefer in ("auto", "mirrored"):
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if gpus:
            return tf.distribute.MirroredStrategy(gpus), "mirrored"
        if prefer == "mirrored":
            raise RuntimeError("mirrored needs at least one visible GPU")
    return tf.distribute.get_strategy(), "default"


def checkpoint_options(strategy: tf.distribute.Strategy) -> tf.train.CheckpointOptions:
    """How to save and restore checkpoints under ``strategy``.

    Under a TPU strategy TF runs a checkpoint's file operations on the CPU of the TPU host, which on a
    Cloud TPU *node* (a TPU reached over gRPC, as in older Colab/Kaggle images) is another machine:
    the files would land on its disk, not in this process's local checkpoint folder (the mirror of a
    ``gs://`` run dir included). ``experimental_io_device="/job:localhost"`` makes them run here
    (the option TF's docs give for saving to a local folder in a distributed setting). On a TPU VM
    the host is this machine, so the option changes nothing there. Other strategies: the defaults
    (``/job:localhost`` would not exist on a multi-worker cluster).
    """
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return tf.train.CheckpointOptions(experimental_io_device="/job:localhost")
    return tf.train.CheckpointOptions()


def resolve_precision(policy: str, kind: str) -> str:
    """The Keras policy name for a config ``precision``: ``auto`` is bf16 on TPU, float32 elsewhere."""
    if policy not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {policy!r}")
    if policy == "auto":
        return "mixed_bfloat16" if kind == "tpu" else "float32"
    return policy
