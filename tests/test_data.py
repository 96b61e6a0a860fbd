"""tfpipe.data: sub-epoch plans, splits, batches, mixing, determinism, graph purity, tf.distribute."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data_prep.encode import EncodeConfig, encode_shard
from data_prep.stats import compute_stats
from tfpipe.config import DataConfig, SourceConfig
from tfpipe.data import (
    DataError,
    diagnose_read_error,
    make_dataset,
    resolve_sources,
    split_files,
    sub_epoch_files,
)
from tfpipe.schema import AUX_TARGETS, KAGGLE, NCOL, NLEV

ROOT = Path(__file__).resolve().parents[1]


def encode_tree(tree: Path, dst: Path, shards: int = 2, blocks_per_file: int = 2) -> Path:
    for i in range(shards):
        encode_shard(
            EncodeConfig(str(tree), str(dst), i, shards, blocks_per_file=blocks_per_file, progress=False)
        )
    (dst / "stats.json").write_text(compute_stats(str(dst)).to_json())
    return dst


@pytest.fixture(scope="module")
def lowres(raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """74 steps in 38 files of one or two blocks (384 samples each)."""
    return encode_tree(raw_tree, tmp_path_factory.mktemp("lowres") / "d")


@pytest.fixture(scope="module")
def highres(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second source (other weather, June 1st) standing in for high-resolution data."""
    from data_prep.synth import synthesize

    tree = tmp_path_factory.mktemp("hr") / "tree"
    synthesize(tree, days=20 / 72, start="0001-06-01", seed=7)
    return encode_tree(tree, tmp_path_factory.mktemp("highres") / "d", shards=1, blocks_per_file=1)


def config(path: Path, **kw) -> DataConfig:
    kw.setdefault("batch_size", 128)
    kw.setdefault("sub_epochs", 4)
    kw.setdefault("shuffle_buffer", 2048)
    kw.setdefault("deterministic", True)
    return DataConfig(sources=[SourceConfig(name="lowres", path=str(path))], **kw)


def test_split_and_plan_partition_the_files() -> None:
    files = [f"f{i:03d}" for i in range(50)]
    train, val = split_files(files, 0.1)
    assert len(val) == 5 and not set(train) & set(val) and sorted(train + val) == files
    assert split_files(files, 0.1) == (train, val)  # fixed, whatever the run's seed
    for epoch in range(3):
        chunks = [sub_epoch_files(train, 1, epoch, k, 4) for k in range(4)]
        assert sorted(sum(chunks, [])) == sorted(train)  # a partition of the training files
        assert chunks == [sub_epoch_files(train, 1, epoch, k, 4) for k in range(4)]  # pure function
    assert sub_epoch_files(train, 1, 0, 0, 4) != sub_epoch_files(train, 1, 1, 0, 4)  # new epoch, new order
    with pytest.raises(DataError, match="3 training files cannot make 4 sub-epochs"):
        sub_epoch_files(files[:3], 0, 0, 0, 4)


def test_batches_have_static_shapes_and_the_right_content(lowres: Path) -> None:
    cfg = config(lowres)
    (source,) = resolve_sources(cfg)
    assert not set(source.train_files) & set(source.val_files)
    ds = make_dataset(cfg, "train", epoch=0, sub_epoch=1, seed=3)
    spec = ds.element_spec
    assert spec[0].shape == (128, NLEV, 75) and spec[1].shape == (128, KAGGLE.n_targets)
    assert spec[2].shape == (128, KAGGLE.n_targets) and spec[3]["targets"].shape == (128, len(AUX_TARGETS))
    batches = list(ds)
    files = sub_epoch_files(source.train_files, 3, 0, 1, 4)
    n_samples = sum(len(list(tf.data.TFRecordDataset(f))) for f in files) * NCOL
    assert len(batches) == n_samples // 128
    x, y, mask, aux = batches[0]
    assert np.isfinite(x.numpy()).all() and np.isfinite(y.numpy()).all()
    assert mask.numpy()[0].sum() == KAGGLE.n_targets - 60 - 16
    lat_sin, lat_cos = aux["targets"].numpy()[:, 0], aux["targets"].numpy()[:, 1]
    np.testing.assert_allclose(lat_sin**2 + lat_cos**2, 1, rtol=1e-5)
    assert (aux["mask"].numpy() == 1).all()
    val = list(make_dataset(cfg, "val"))
    n_val = sum(len(list(tf.data.TFRecordDataset(f))) for f in source.val_files) * NCOL
    assert sum(int(b[0].shape[0]) for b in val) == n_val > 0  # every validation sample, once


def test_same_seed_epoch_subepoch_gives_the_same_batches(lowres: Path) -> None:
    cfg = config(lowres)
    sources = resolve_sources(cfg)
    a = [b[1].numpy() for b in make_dataset(cfg, "train", 1, 2, seed=5, sources=sources)]
    b = [b[1].numpy() for b in make_dataset(cfg, "train", 1, 2, seed=5, sources=sources)]
    c = [b[1].numpy() for b in make_dataset(cfg, "train", 1, 2, seed=6, sources=sources)]
    assert len(a) == len(b) and all((p == q).all() for p, q in zip(a, b, strict=True))
    assert not all(p.shape == q.shape and (p == q).all() for p, q in zip(a, c, strict=False))


def test_shuffle_permutes_every_sample_once(lowres: Path) -> None:
    """The two-stage shuffle (blocks, then windows) keeps every sample of the sub-epoch exactly once."""
    sources = resolve_sources(config(lowres))

    def rows(**kw) -> np.ndarray:
        ds = make_dataset(config(lowres, **kw), "train", 0, 1, seed=4, sources=sources, drop_remainder=False)
        ds = ds.unbatch().map(lambda x, y, m, aux: y).batch(10_000)  # unbatch: slow is fine in a test
        return np.concatenate([b.numpy() for b in ds])

    plain, shuffled = rows(shuffle_buffer=0), rows(shuffle_buffer=1000)
    assert plain.shape == shuffled.shape and len(plain) % NCOL == 0
    assert not np.array_equal(plain, shuffled)
    order = np.lexsort(plain.T[:8])
    np.testing.assert_array_equal(plain[order], shuffled[np.lexsort(shuffled.T[:8])])
    # neighbours in the shuffled stream rarely come from one block (one time step, 384 columns)
    first_block = {tuple(r[:8]) for r in plain[:NCOL]}
    assert sum(tuple(r[:8]) in first_block for r in shuffled[:NCOL]) < NCOL // 2


def test_mixing_follows_the_weights(lowres: Path, highres: Path) -> None:
    cfg = DataConfig(
        sources=[
            SourceConfig(name="lowres", path=str(lowres), weight=2.0),
            SourceConfig(name="highres", path=str(highres), weight=1.0),
        ],
        batch_size=500,
        sub_epochs=1,
        shuffle_buffer=1000,
        deterministic=True,
        val_fraction=0.05,
    )
    sources = resolve_sources(cfg)
    # tell the sources apart by their day of year: lowres is Jan 31/Feb 1, highres June 1 (day 151)
    ds = make_dataset(cfg, "train", 0, 0, seed=1, sources=sources).take(20)
    n = 0
    from_low = 0
    for _, _, _, aux in ds:
        doy_sin = aux["targets"].numpy()[:, 4]
        from_low += int((np.abs(doy_sin - np.sin(2 * np.pi * 151 / 365)) > 1e-4).sum())
        n += len(doy_sin)
    assert n == 10_000
    share = from_low / n
    assert abs(share - 2 / 3) < 0.02, share


def test_pipeline_has_no_python_ops(lowres: Path) -> None:
    cfg = config(lowres)
    ds = make_dataset(cfg, "train", 0, 0, seed=0)
    graph = tf.Graph()
    with graph.as_default():
        element = tf.compat.v1.data.make_one_shot_iterator(
            make_dataset(cfg, "train", 0, 0, seed=0)
        ).get_next()
        assert element is not None
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    serialized = ds._as_serialized_graph().numpy()  # the whole pipeline graph
    assert b"PyFunc" not in serialized and b"EagerPyFunc" not in serialized

    @tf.function
    def consume(dataset):
        total = tf.constant(0.0)
        for _x, y, m, _aux in dataset:
            total += tf.reduce_sum(y * m)
        return total

    assert np.isfinite(consume(ds).numpy())


def test_bad_inputs(lowres: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no encoded shards"):
        resolve_sources(config(tmp_path))
    with pytest.raises(ValueError, match="representations.*wavelet"):
        resolve_sources(config(lowres, representations=("column", "wavelet")))
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(lowres, broken)
    victim = sorted(broken.glob("part-*.tfrecord"))[3]
    data = bytearray(victim.read_bytes())
    data[5000] ^= 0xFF
    victim.write_bytes(bytes(data))
    cfg = config(broken, sub_epochs=1, val_fraction=0.0)
    with pytest.raises(tf.errors.DataLossError):
        for _ in make_dataset(cfg, "train", 0, 0):
            pass
    (source,) = resolve_sources(cfg)
    message = diagnose_read_error(source.train_files)
    assert message is not None and victim.name in message and "corrupted" in message
    ignoring = config(broken, sub_epochs=1, val_fraction=0.0, ignore_errors=True)
    total = sum(int(b[0].shape[0]) for b in make_dataset(ignoring, "train", 0, 0))
    assert 0 < total < 74 * NCOL


DISTRIBUTED = textwrap.dedent(
    """
    import json, sys
    from tfpipe.distribute import configure_logical_cpus
    configure_logical_cpus(8)
    import tensorflow as tf
    from tfpipe.config import DataConfig, SourceConfig
    from tfpipe.data import make_dataset
    cfg = DataConfig(sources=[SourceConfig(path=sys.argv[1])], batch_size=64, sub_epochs=2,
                     shuffle_buffer=512, deterministic=True)
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    dist = strategy.experimental_distribute_dataset(make_dataset(cfg, "train", 0, 0, seed=0))

    @tf.function
    def step(x, y, m, aux):
        return tf.reduce_sum(y * m) + tf.reduce_sum(x)

    sums = []
    for batch in dist:
        per = strategy.run(step, args=batch)
        sums.append(float(strategy.reduce("SUM", per, axis=None)))
        if len(sums) == 3:
            break
    local = [r.shape[0] for r in strategy.experimental_local_results(batch[0])]
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "local": local, "n": len(sums)}))
    """
)


def test_works_under_mirrored_strategy_on_8_cpus(lowres: Path, tmp_path: Path) -> None:
    script = tmp_path / "dist.py"
    script.write_text(DISTRIBUTED)
    proc = subprocess.run(
        [sys.executable, str(script), str(lowres)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result == {"replicas": 8, "local": [8] * 8, "n": 3}
