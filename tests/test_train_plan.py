"""tfpipe.train.plan and the resume guards of tfpipe.train.checkpoints, without training."""

from __future__ import annotations

import dataclasses

import pytest

from tfpipe.config import TrainConfig, config_to_dict, load_config
from tfpipe.schedule import Segment
from tfpipe.train.checkpoints import AllowedChanges, ResumeFacts, RunState, TrainError, check_resume
from tfpipe.train.plan import peak_ratio, phase_at, phase_segments, reanchor, schedule_value


def tiny(*overrides: str) -> TrainConfig:
    return load_config("configs/tiny.yaml", ["data.sources.0.path=/data", *overrides])


def test_phases_of_the_main_epochs_and_of_each_finetune_group() -> None:
    config = tiny("finetune.groups=[ptend_t, cam_out]", "finetune.warmup_steps=5", "optim.min_lr_ratio=0.1")
    groups, steps = [None] * 8 + [0, 1], [100] * 8 + [40, 60]
    main, g0, g1 = phase_segments(config, groups, steps)
    assert (main.start, main.end, main.warmup_end, main.peak) == (0, 800, 80, 1e-3)  # warm-up 0.1 of 800
    assert main.floor == pytest.approx(1e-4)
    assert (g0.start, g0.end, g0.warmup_end, g0.peak, g0.start_lr) == (
        800,
        840,
        805,
        pytest.approx(1e-4),
        0.0,
    )
    assert (g1.start, g1.end, g1.warmup_end) == (840, 900, 845)


def test_reanchor_keeps_the_rate_continuous() -> None:
    old = [Segment(0, 1000, 0.0, 1e-3, 100, 0.0)]
    longer = [Segment(0, 1500, 0.0, 1e-3, 100, 0.0)]
    for step in (50, 400, 999):
        new = reanchor(old, longer, step)
        assert schedule_value(new, step) == pytest.approx(schedule_value(old, step), rel=1e-12)
        assert schedule_value(new, 1500) == pytest.approx(0.0, abs=1e-12)  # decays to the new end
        if step >= 100:
            rates = [schedule_value(new, s) for s in range(step, 1501, 50)]
            assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))  # still decaying
    # the one deliberate jump: a changed learning rate scales the curve from the resume step on
    doubled = [dataclasses.replace(longer[0], peak=2e-3)]
    new = reanchor(old, doubled, 400, ratio=2.0)
    assert schedule_value(new, 400) == pytest.approx(2 * schedule_value(old, 400))
    # at the start of a phase (a fine-tune group) the phase starts as it is
    groups = old + [Segment(1000, 1100, 0.0, 1e-4, 1010, 0.0)]
    assert reanchor(old + [Segment(1000, 1050, 0.0, 1e-4, 1005, 0.0)], groups, 1000) == groups
    assert phase_at(groups, 1000) == 1 and phase_at(groups, 999) == 0


def test_peak_ratio_reads_the_phase_that_changed() -> None:
    old, new = tiny(), tiny("optim.learning_rate=2e-3", "finetune.learning_rate=5e-5")
    assert peak_ratio(old, new, 0) == pytest.approx(2.0)
    assert peak_ratio(old, new, 1) == pytest.approx(5e-5 / 1e-4)


def state_for(config: TrainConfig, **kw) -> RunState:
    fields = dict(
        checkpoint=3, epoch=0, sub_epoch=3, seed=0, step=300, model_hash="m", data_hash="d", stats_sha256="s",
        replicas=1, global_batch=64, plan_hash="p", schedule=[], best_metric=0.1, best_checkpoint=2,
        wall_time_s=1.0, val={}, config=config_to_dict(config), plan_steps=[100] * 8,
    )  # fmt: skip
    return RunState(**(fields | kw))


def facts(config: TrainConfig, **kw) -> ResumeFacts:
    return ResumeFacts(**(dict(config=config, model_hash="m", data_hash="d", stats_sha256="s", replicas=1,
                               global_batch=64) | kw))  # fmt: skip


def test_resume_guards_say_what_changed_and_which_flag_allows_it() -> None:
    base = tiny()
    state = state_for(base)
    assert check_resume(state, facts(base), AllowedChanges(), 3) == []
    assert check_resume(state, facts(tiny("run_dir=/elsewhere", "time_budget=1h")), AllowedChanges(), 3) == []
    cases = [
        (facts(tiny("epochs=5")), "config differs in epochs; pass --allow-config-change", AllowedChanges(config=True)),
        (facts(base, data_hash="other"), "files differ.*--allow-data-change", AllowedChanges(data=True)),
        (facts(base, stats_sha256="other"), "statistics file differs.*--allow-data-change", AllowedChanges(data=True)),
        (facts(base, replicas=8, global_batch=512), "8 replicas .*--allow-replica-change", AllowedChanges(replicas=True)),
    ]  # fmt: skip
    for now, message, allow in cases:
        with pytest.raises(TrainError, match=message):
            check_resume(state, now, AllowedChanges(), 3)
        assert len(check_resume(state, now, allow, 3)) == 1
    with pytest.raises(TrainError, match="another model.d_model.*start a new run dir"):
        check_resume(state, facts(tiny("model.d_model=64")), AllowedChanges(True, True, True), 3)


def test_one_file_feeds_every_sub_epoch_and_each_sample_is_read_once_per_epoch(
    small_raw_tree, tmp_path
) -> None:
    """Fewer files than sub-epochs (one file of 4 blocks, 4 sub-epochs): record ranges of the file."""
    import numpy as np

    from data_prep.encode import EncodeConfig, encode_shard
    from tfpipe.data.manifest import data_files, read_manifests
    from tfpipe.data.pipeline import make_train_dataset, resolve_sources
    from tfpipe.data.records import read_blocks
    from tfpipe.data.schema import KAGGLE
    from tfpipe.train.plan import make_plan

    enc = tmp_path / "enc"
    encode_shard(EncodeConfig(str(small_raw_tree), str(enc), 0, 1, blocks_per_file=16, progress=False))
    config = tiny(f"data.sources.0.path={enc}", "data.val_fraction=0", "epochs=1", "data.shuffle_buffer=256")
    sources = resolve_sources(config.data)
    assert len(sources[0].train_files) == 1 and config.data.sub_epochs == 4
    plan = make_plan(config, sources, 1)
    assert plan.steps == [6, 6, 6, 6]  # 384 samples (one block) / 64 each
    rows = [
        x.numpy().tobytes()
        for stage in plan.stages
        for batch in make_train_dataset(sources, config.data, 0, stage.epoch, stage.sub_epoch, stage.data)
        for x in batch[0]
    ]
    files = data_files(str(enc), read_manifests(str(enc)))
    every = [x.tobytes() for b in read_blocks(files, KAGGLE) for x in np.asarray(b.inputs)]
    assert len(rows) == len(set(rows)) == 1536 and set(rows) == set(every)
