"""tfpipe.data.pipeline: raw batches, exact mixing of sources, padded validation, determinism, graph purity, tf.distribute."""

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
from tfpipe.data.pipeline import (
    diagnose_read_error,
    make_train_dataset,
    make_validation_dataset,
    resolve_sources,
)
from tfpipe.data.sampling import plan_stage
from tfpipe.data.schema import AUX_TARGETS, KAGGLE, NCOL, NLEV

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
def third(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third source (Sept 1st)."""
    from data_prep.synth import synthesize

    tree = tmp_path_factory.mktemp("third") / "tree"
    synthesize(tree, days=12 / 72, start="0001-09-01", seed=9)
    return encode_tree(tree, tmp_path_factory.mktemp("third-enc") / "d", shards=1, blocks_per_file=1)


def config(path: Path, **kw) -> DataConfig:
    kw.setdefault("batch_size", 128)
    kw.setdefault("sub_epochs", 4)
    kw.setdefault("shuffle_buffer", 2048)
    kw.setdefault("deterministic", True)
    kw.setdefault("val_split", "random")
    return DataConfig(sources=[SourceConfig(name="lowres", path=str(path))], **kw)


def train_dataset(cfg: DataConfig, sources, epoch: int, k: int, seed: int, replicas: int = 1):
    plan = plan_stage({s.name: s.train_files for s in sources}, [s.weight for s in sources], cfg.batch_size,
                      replicas, seed, epoch, k, cfg.sub_epochs)  # fmt: skip
    return make_train_dataset(sources, cfg, seed, epoch, k, plan, replicas), plan


def test_batches_are_raw_columns_with_static_shapes(lowres: Path) -> None:
    cfg = config(lowres)
    (source,) = resolve_sources(cfg)
    assert not {f.path for f in source.train_files} & {f.path for f in source.val_files}
    ds, plan = train_dataset(cfg, [source], 0, 1, 3)
    spec = ds.element_spec
    assert spec[0].shape == (128, KAGGLE.n_inputs) and spec[1].shape == (128, KAGGLE.n_targets)
    assert spec[2].shape == (128, len(AUX_TARGETS)) and spec[3].shape == (128, len(AUX_TARGETS))
    batches = list(ds)
    files = plan.pieces[0]
    n_samples = sum(len(list(tf.data.TFRecordDataset(f.path))) for f in files) * NCOL
    assert len(batches) == plan.steps == n_samples // 128
    x, y, aux, aux_mask = batches[0]
    assert np.isfinite(x.numpy()).all() and np.isfinite(y.numpy()).all()
    t = KAGGLE.input_slice("state_t")
    assert 150 < x.numpy()[:, t].min() and x.numpy()[:, t].max() < 350  # raw kelvins: the model normalises
    lat_sin, lat_cos = aux.numpy()[:, 0], aux.numpy()[:, 1]
    np.testing.assert_allclose(lat_sin**2 + lat_cos**2, 1, rtol=1e-5)
    assert (aux_mask.numpy() == 1).all()


def test_validation_batches_are_padded_and_carry_float64(lowres: Path) -> None:
    cfg = config(lowres)
    (source,) = resolve_sources(cfg)
    batches = list(make_validation_dataset(source.val_paths, KAGGLE, 1000))
    n_val = sum(f.samples for f in source.val_files)
    assert all(b["inputs"].shape == (1000, KAGGLE.n_inputs) for b in batches)
    assert sum(float(b["valid"].numpy().sum()) for b in batches) == n_val > 0  # every sample once
    last = batches[-1]
    rows = int(last["valid"].numpy().sum())
    assert rows < 1000 and (last["inputs"].numpy()[rows:] == 0).all()
    x64 = last["x64"].numpy().view(np.float64).reshape(1000, NLEV)[:rows]
    q = last["inputs"].numpy()[:rows, KAGGLE.input_slice("state_q0002")]
    np.testing.assert_allclose(x64.astype(np.float32), q, rtol=1e-6)  # the exact float64 copy, bit-cast


def test_same_seed_epoch_subepoch_gives_the_same_batches(lowres: Path) -> None:
    cfg = config(lowres)
    sources = resolve_sources(cfg)
    a = [b[1].numpy() for b in train_dataset(cfg, sources, 1, 2, 5)[0]]
    b = [b[1].numpy() for b in train_dataset(cfg, sources, 1, 2, 5)[0]]
    c = [b[1].numpy() for b in train_dataset(cfg, sources, 1, 2, 6)[0]]
    assert len(a) == len(b) and all((p == q).all() for p, q in zip(a, b, strict=True))
    assert not all(p.shape == q.shape and (p == q).all() for p, q in zip(a, c, strict=False))


def test_shuffle_permutes_every_sample_once(lowres: Path) -> None:
    """The two-stage shuffle (blocks, then windows) keeps every sample of the sub-epoch exactly once."""
    sources = resolve_sources(config(lowres))

    def rows(**kw) -> np.ndarray:
        cfg = config(lowres, batch_size=NCOL, **kw)  # whole blocks: no remainder is left out
        return np.concatenate([b[1].numpy() for b in train_dataset(cfg, sources, 0, 1, 4)[0]])

    plain, shuffled = rows(shuffle_buffer=0), rows(shuffle_buffer=1000)
    assert plain.shape == shuffled.shape and len(plain) % NCOL == 0
    assert not np.array_equal(plain, shuffled)
    order = np.lexsort(plain.T[:8])
    np.testing.assert_array_equal(plain[order], shuffled[np.lexsort(shuffled.T[:8])])
    # neighbours in the shuffled stream rarely come from one block (one time step, 384 columns)
    first_block = {tuple(r[:8]) for r in plain[:NCOL]}
    assert sum(tuple(r[:8]) in first_block for r in shuffled[:NCOL]) < NCOL // 2


def mixed(paths: list[Path], weights: list[float], batch: int) -> DataConfig:
    return DataConfig(
        sources=[SourceConfig(name=f"s{i}", path=str(p), weight=w)
                 for i, (p, w) in enumerate(zip(paths, weights, strict=True))],
        batch_size=batch, sub_epochs=2, shuffle_buffer=1000, deterministic=True, val_fraction=0.1, val_split="random",
    )  # fmt: skip


def day_of_year(aux: np.ndarray) -> np.ndarray:
    angle = np.arctan2(aux[:, 4], aux[:, 5]) % (2 * np.pi)
    return np.floor(angle * 365 / (2 * np.pi) + 1e-3).astype(int)


@pytest.mark.parametrize("replicas", [1, 4])
def test_every_batch_holds_the_planned_count_of_every_source(
    lowres: Path, highres: Path, third: Path, replicas: int
) -> None:
    """2 and 3 sources: every sub-epoch runs its planned steps, each replica slice has the configured mix."""
    days = {0: {30, 31}, 1: {151}, 2: {243}}  # Jan 31/Feb 1, June 1, Sept 1 (days since Jan 1)
    for weights, paths in (([2.0, 1.0], [lowres, highres]), ([3.0, 2.0, 1.0], [lowres, highres, third])):
        cfg = mixed(paths, weights, 48)
        sources = resolve_sources(cfg)
        for k in range(2):
            ds, plan = train_dataset(cfg, sources, 0, k, 1, replicas)
            batches = list(ds)
            assert len(batches) == plan.steps > 0
            for step, (_, _, aux, _) in enumerate(batches):
                doy = day_of_year(aux.numpy()).reshape(replicas, 48)
                for i in range(len(sources)):
                    per_replica = np.isin(doy, list(days[i])).sum(axis=1)
                    assert (per_replica == plan.counts[i, step]).all(), (weights, k, step, i, per_replica)
            shares = plan.counts.sum(axis=1) / plan.counts.sum()
            np.testing.assert_allclose(
                shares, np.array(weights) / sum(weights), atol=len(weights) / plan.counts.sum()
            )


def test_pipeline_has_no_python_ops(lowres: Path) -> None:
    cfg = config(lowres)
    ds, _ = train_dataset(cfg, resolve_sources(cfg), 0, 0, 0)
    serialized = ds._as_serialized_graph().numpy()  # the whole pipeline graph
    assert b"PyFunc" not in serialized and b"EagerPyFunc" not in serialized

    @tf.function
    def consume(dataset):
        total = tf.constant(0.0)
        for _x, y, _aux, m in dataset:
            total += tf.reduce_sum(y) + tf.reduce_sum(m)
        return total

    assert np.isfinite(consume(ds).numpy())


def test_bad_inputs(lowres: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no encoded shards"):
        resolve_sources(config(tmp_path))
    with pytest.raises(ValueError, match="val_split"):
        config(lowres, val_split="tomorrow")
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(lowres, broken)
    victim = sorted(broken.glob("part-*.tfrecord"))[3]
    data = bytearray(victim.read_bytes())
    data[5000] ^= 0xFF
    victim.write_bytes(bytes(data))
    cfg = config(broken, sub_epochs=1, val_fraction=0.0)
    sources = resolve_sources(cfg)
    with pytest.raises(tf.errors.DataLossError):
        for _ in train_dataset(cfg, sources, 0, 0, 0)[0]:
            pass
    message = diagnose_read_error(sources[0].train_paths)
    assert message is not None and victim.name in message and "corrupted" in message
    ignoring = config(broken, sub_epochs=1, val_fraction=0.0, ignore_errors=True)
    ds, plan = train_dataset(ignoring, resolve_sources(ignoring), 0, 0, 0)
    assert len(list(ds)) == plan.steps  # a skipped record: the chunk wraps around, the steps stay planned


DISTRIBUTED = textwrap.dedent(
    """
    import json, sys
    from tfpipe.distribute import configure_logical_cpus
    configure_logical_cpus(8)
    import tensorflow as tf
    from tfpipe.config import DataConfig, SourceConfig
    from tfpipe.data.pipeline import make_train_dataset, resolve_sources
    from tfpipe.data.sampling import plan_stage
    cfg = DataConfig(sources=[SourceConfig(path=sys.argv[1])], batch_size=8, sub_epochs=2,
                     shuffle_buffer=512, deterministic=True)
    sources = resolve_sources(cfg)
    plan = plan_stage({"lowres": sources[0].train_files}, [1.0], 8, 8, 0, 0, 0, 2)
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    dist = strategy.experimental_distribute_dataset(make_train_dataset(sources, cfg, 0, 0, 0, plan, 8))

    @tf.function
    def step(x, y, aux, m):
        return tf.reduce_sum(y) + tf.reduce_sum(x)

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
