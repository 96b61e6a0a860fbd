"""Config loading, overrides, type checks, hashes and the generated reference."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import pytest

from tfpipe.config import (
    RESUME_MUTABLE,
    ConfigError,
    DataConfig,
    OptimConfig,
    SourceConfig,
    TrainConfig,
    changed_fields,
    config_from_dict,
    config_hash,
    config_to_dict,
    dump_config,
    is_resume_mutable,
    load_config,
    parse_duration,
    resume_conflicts,
)
from tfpipe.config.__main__ import main
from tfpipe.config.models import ModelConfig
from tfpipe.config.reference import config_reference_markdown
from tfpipe.losses import LossConfig

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "configs" / "reference.yaml"
TINY = ROOT / "configs" / "tiny.yaml"


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reference_config_is_the_reference_experiment():
    cfg = load_config(REFERENCE)
    assert cfg.name == "reference"
    assert (cfg.model.name, cfg.model.n_blocks, cfg.model.d_model) == ("squeezeformer", 12, 384)
    assert (cfg.epochs, cfg.data.sub_epochs, cfg.data.batch_size) == (4, 10, 1024)
    assert cfg.optim.learning_rate == 1e-3 and cfg.optim.resolved_weight_decay == pytest.approx(4e-3)
    assert cfg.precision == "auto"
    assert [s.name for s in cfg.data.sources] == ["lowres", "highres"]
    assert [s.weight for s in cfg.data.sources] == [2.0, 1.0]
    assert [s.path for s in cfg.data.sources] == ["data/lowres", "data/highres"]  # override with yours
    assert cfg.data.sources[1].stats_path == cfg.data.sources[1].path + "/stats.json"
    assert cfg.data.grid_path == cfg.data.sources[0].path + "/grid-info.nc"


def test_tiny_config_uses_demo_data_and_small_sizes():
    cfg = load_config(TINY)
    assert (cfg.model.d_model, cfg.model.n_blocks, cfg.model.n_heads, cfg.model.head_units) == (32, 2, 2, 64)
    assert (cfg.data.batch_size, cfg.epochs, cfg.data.sub_epochs) == (64, 2, 4)
    assert cfg.data.sources[0].path == "" and cfg.data.sources[0].stats_path == ""
    assert cfg.precision == "float32" and cfg.jit_compile is True
    assert cfg.resolved_run_dir == "runs/tiny"


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg == TrainConfig(name="default")
    assert cfg.model == ModelConfig() and cfg.loss == LossConfig()
    assert cfg.data.representations == ("column", "variable", "log")
    assert cfg.data.q0002_replacement_levels == tuple(range(12, 28))
    assert cfg.optim.weight_decay is None and cfg.optim.resolved_weight_decay == pytest.approx(4e-3)
    assert cfg.time_budget_s is None


def test_name_defaults_to_the_file_stem_and_empty_sections_are_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\nmodel: {}\n", "my-run.yaml"))
    assert cfg.name == "my-run" and cfg.optim == OptimConfig() and cfg.model == ModelConfig()


def test_overrides_are_parsed_and_coerced():
    cfg = load_config(
        TINY,
        [
            "model.d_model=128",
            "data.sources.0.path=gs://b/x",
            "optim.learning_rate=3e-4",  # YAML 1.1 reads this as a string
            "data.representations=[column,log]",
            "optim.weight_decay=null",
            "data.q0002_replacement_levels=[12, '13']",
            "time_budget=8h30m",
            "float32_after_epoch=3",
            "name=run-7",
        ],
    )
    assert cfg.model.d_model == 128 and cfg.data.sources[0].path == "gs://b/x"
    assert cfg.optim.learning_rate == 3e-4 and isinstance(cfg.optim.learning_rate, float)
    assert cfg.data.representations == ("column", "log")
    assert cfg.optim.weight_decay is None and cfg.optim.resolved_weight_decay == pytest.approx(1.2e-3)
    assert cfg.data.q0002_replacement_levels == (12, 13)
    assert cfg.time_budget_s == 8.5 * 3600 and cfg.float32_after_epoch == 3
    assert cfg.resolved_run_dir == "runs/run-7"


def test_override_one_past_the_end_appends_a_list_element():
    cfg = load_config(None, ["data.sources.1.path=gs://b/hi", "data.sources.1.name=highres"])
    assert [(s.name, s.path) for s in cfg.data.sources] == [("lowres", ""), ("highres", "gs://b/hi")]
    with pytest.raises(ConfigError, match="index past the end"):
        load_config(None, ["data.sources.3.path=x"])


def test_whole_list_of_sources_can_be_overridden():
    cfg = load_config(None, ["data.sources=[{name: a, path: p, weight: 2}, {name: b}]"])
    assert cfg.data.sources == [SourceConfig("a", "p", "", 2.0), SourceConfig("b")]


def test_warmup_steps_is_a_count_or_a_fraction():
    assert load_config(None, ["optim.warmup_steps=0.1"]).optim.resolved_warmup_steps(1000) == 100
    assert load_config(None, ["optim.warmup_steps=250"]).optim.resolved_warmup_steps(1000) == 250
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(None, ["optim.warmup_steps=2.5"])


def test_unknown_key_in_file_names_key_path_and_file(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: 8\n  bogus: 1\n")
    with pytest.raises(ConfigError, match="data.bogus") as err:
        load_config(path)
    assert str(path) in str(err.value)
    path = write(tmp_path, "data:\n  sources:\n    - {path: x, colour: red}\n", "b.yaml")
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.colour"):
        load_config(path)


def test_unknown_override_key_names_the_override():
    with pytest.raises(ConfigError, match=r"model\.d_modle.*override 'model\.d_modle=3'"):
        load_config(None, ["model.d_modle=3"])
    with pytest.raises(ConfigError, match=r"epochs\.x"):
        load_config(None, ["epochs.x=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("epochs: many\n", "epochs", "int"),
        ("epochs: 2.5\n", "epochs", "int"),
        ("jit_compile: maybe\n", "jit_compile", "bool"),  # OmegaConf reads 1/0, yes/no, on/off as bools
        ("data:\n  q0002_replacement_levels: [12, 13.5]\n", r"data\.q0002_replacement_levels\.1", "int"),
        ("optim:\n  learning_rate: fast\n", "optim.learning_rate", "float"),
        ("optim:\n  clipnorm: [1]\n", "optim.clipnorm", r"float \| None"),
        ("data:\n  representations: {a: 1}\n", "data.representations", r"tuple\[str, \.\.\.\]"),
        ("data: 3\n", "data", "DataConfig"),
        ("data:\n  sources: [3]\n", r"data\.sources\.0", "SourceConfig"),
    ],
)
def test_wrong_type_names_key_expected_type_and_value(tmp_path, text, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"{key}.*{expected}") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_wrong_override_type_names_the_override():
    with pytest.raises(ConfigError, match=r"seed: expected int, got 'abc' \(override 'seed=abc'\)"):
        load_config(None, ["seed=abc"])


@pytest.mark.parametrize(
    "override",
    [
        "precision=fp8",
        "data.schema=v9",
        "data.representations=[column,column]",
        "data.val_fraction=1.0",
        "data.sources.0.weight=0",
        "data.q0002_replacement_levels=[60]",
        "optim.min_lr_ratio=2",
        "time_budget=soon",
        "model.d_model=100",  # not a multiple of n_heads: the model config's own check
        "loss.kind=l3",
    ],
)
def test_invalid_values_raise_config_error(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_override_into_a_malformed_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(write(tmp_path, "data: 3\n"), ["data.batch_size=8"])


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_dump_and_load_round_trip_atomically(tmp_path):
    cfg = load_config(REFERENCE, ["optim.weight_decay=null", "float32_after_epoch=2"])
    out = tmp_path / "run" / "config.yaml"
    dump_config(cfg, out)
    dump_config(cfg, out)  # replaces
    assert load_config(out) == cfg
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]
    d = config_to_dict(cfg)
    assert d["data"]["representations"] == ["column", "variable", "log"]
    assert d["data"]["sources"][0] == dataclasses.asdict(cfg.data.sources[0])


def test_values_are_assigned_as_their_declared_type_so_omegaconf_24_does_not_warn(tmp_path):
    """OmegaConf 2.4 warns (FutureWarning) on every implicit int->float or list->tuple assignment."""
    from tfpipe.config.tree import as_declared

    assert type(as_declared(1000, float)) is float and type(as_declared(1, float | None)) is float
    assert as_declared(True, float) is True  # no widening of bools: OmegaConf refuses them
    assert as_declared([1, 2], tuple[float, ...]) == (1.0, 2.0) and as_declared(3, int | float) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(REFERENCE, ["optim.learning_rate=1", "data.sources.0.weight=2"])
        dump_config(cfg, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == cfg  # what predict and resumes load


def test_config_hash_covers_model_and_data_fields():
    base = load_config(TINY)
    h_model, h_data = config_hash(base, "model"), config_hash(base, "data")
    assert len(h_model) == 64 and h_model != h_data
    assert config_hash(load_config(TINY), "model") == h_model  # stable

    def hashes(*overrides: str) -> tuple[str, str]:
        cfg = load_config(TINY, list(overrides))
        return config_hash(cfg, "model"), config_hash(cfg, "data")

    for o in ["model.d_model=128", "data.representations=[column]", "data.feature_clip=4", "data.schema=v2"]:
        assert hashes(o)[0] != h_model and hashes(o)[1] == h_data, o
    for o in ["data.sources.0.path=gs://b/x", "data.sources.0.weight=3", "seed=1", "data.batch_size=32"]:
        assert hashes(o)[0] == h_model and hashes(o)[1] != h_data, o
    assert hashes("optim.learning_rate=0.01", "epochs=9", "run_dir=/tmp/x") == (h_model, h_data)
    with pytest.raises(ValueError):
        config_hash(base, "optim")


def test_changed_fields_and_resume_conflicts():
    old = config_to_dict(load_config(REFERENCE))
    new = config_to_dict(
        load_config(
            REFERENCE,
            ["epochs=6", "optim.learning_rate=5e-4", "data.sources.1.path=/local/hi", "model.n_blocks=8"],
        )
    )
    assert changed_fields(old, new) == [
        "data.sources.1.path",
        "epochs",
        "model.n_blocks",
        "optim.learning_rate",
    ]
    assert resume_conflicts(old, new) == ["model.n_blocks"]
    assert changed_fields(old, old) == []
    one_more = config_to_dict(load_config(REFERENCE, ["data.sources.2.name=extra"]))
    assert changed_fields(old, one_more) == ["data.sources.2.name", "data.sources.2.path"] + [
        "data.sources.2.stats",
        "data.sources.2.weight",
    ]
    assert {"epochs", "optim.learning_rate"} <= RESUME_MUTABLE
    assert is_resume_mutable("data.sources.3.path") and not is_resume_mutable("data.sources.3.weight")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("8h30m", 30600), ("90m", 5400), ("45s", 45), ("1h", 3600), ("2h 15m", 8100), ("3600", 3600),
     ("1.5h", 5400), ("1d", 86400), (120, 120)],
)  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "8x", "h", "1h30", "-5", "ten minutes", "inf"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_reference_doc_is_up_to_date_and_lists_every_key():
    text = config_reference_markdown()
    assert (ROOT / "docs" / "configuration.md").read_text() == text, (
        "regenerate: python -m tfpipe.config --reference > docs/configuration.md"
    )
    for cls, prefix in [(TrainConfig, ""), (DataConfig, "data."), (OptimConfig, "optim.")]:
        for f in dataclasses.fields(cls):
            if f.name not in ("data", "model", "loss", "optim", "finetune", "tracking"):
                assert f"| `{prefix}{f.name}` |" in text
            assert f.metadata["doc"], f"{prefix}{f.name} has no documentation"
    assert "| `data.sources.<i>.path` |" in text and "| `model.d_model` |" in text
    assert "| `loss.kind` |" in text and r"`float \| None`" in text


def test_cli_prints_resolved_config_or_an_error(tmp_path, capsys):
    assert main(["--config", str(TINY), "seed=3"]) == 0
    assert "seed: 3" in capsys.readouterr().out
    assert main(["--config", str(TINY), "sed=3"]) == 2
    assert "unknown key 'sed'" in capsys.readouterr().err


def test_each_model_has_its_own_config_class():
    from tfpipe.config.models import CNNConfig, MLPConfig, SqueezeformerConfig

    assert type(load_config(TINY).model) is SqueezeformerConfig
    mlp = load_config(TINY, ["model.name=mlp", "model.mlp_units=[8,8]"]).model  # the file's sizes are dropped
    assert mlp == MLPConfig(mlp_units=(8, 8)) and not hasattr(mlp, "d_model")
    assert "d_model" not in config_to_dict(load_config(TINY, ["model.name=mlp"]))["model"]
    assert type(load_config(None, ["model.name=cnn"]).model) is CNNConfig
    # an override of another model's key, or a file mixing models, is a mistake, not silently ignored
    with pytest.raises(ConfigError, match=r"model\.lstm_units.*override.*squeezeformer model's keys"):
        load_config(TINY, ["model.lstm_units=3"])
    with pytest.raises(ConfigError, match=r"model\.d_model.*mlp model's keys"):
        load_config(None, ["model.name=mlp", "model.d_model=3"])
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        load_config(None, ["model.name=nope"])


def test_a_saved_config_of_an_older_tfpipe_with_every_models_fields_still_resumes():
    """An older tfpipe saved every model's fields; the unused ones no longer count as changes."""
    new = config_to_dict(load_config(TINY))
    old = copy.deepcopy(new)
    old["model"] |= {"mlp_units": [768, 640], "lstm_units": 256, "cnn_filters": 256}
    assert changed_fields(old, new) == [] and resume_conflicts(old, new) == []
    assert config_from_dict(old) == load_config(TINY)
    old["model"]["lstm_units"] = 7  # a change of an unused key does not block the Squeezeformer run
    assert changed_fields(old, new) == []
    old["model"]["d_model"] = 64
    assert resume_conflicts(old, new) == ["model.d_model"]


def test_the_normalization_layer_is_the_one_the_data_config_asks_for(tiny_encoded):
    """Training and predict-from-checkpoint build the layer through one helper, from the config."""
    from tfpipe.data.normalize import Normalization
    from tfpipe.data.stats import load_stats

    data = load_config(TINY, ["data.representations=[column, log]", "data.feature_clip=3",
                              "data.target_clip=5", "data.q0002_replacement_levels=[0, 1]"]).data  # fmt: skip
    layer = Normalization.for_data(data, load_stats(str(tiny_encoded / "stats.json")))
    got = layer.get_config()
    assert (got["schema"], got["representations"], got["feature_clip"], got["target_clip"]) == (
        "kaggle", ["column", "log"], 3.0, 5.0,
    )  # fmt: skip
    assert got["replacement_levels"] == [0, 1]


def test_log_every_steps_is_gone_but_configs_that_set_it_still_load_and_resume(tmp_path):
    """It was read nowhere: removed from the schema; a file or a run's saved config with it loads."""
    assert "log_every_steps" not in {f.name for f in dataclasses.fields(TrainConfig)}
    old = write(tmp_path, "log_every_steps: 10\nepochs: 3\n")
    assert load_config(old).epochs == 3
    saved = config_to_dict(load_config(TINY)) | {"log_every_steps": 50}
    assert config_from_dict(saved) == load_config(TINY)
    assert changed_fields(saved, config_to_dict(load_config(TINY))) == []  # a resume sees no change
