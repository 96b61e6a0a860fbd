"""The schema module is the single source of truth for variables and column order."""

from pathlib import Path

import pytest

from tfpipe.data import schema
from tfpipe.data.schema import KAGGLE, NLEV, V1, V2, get_schema, target_source

REFERENCE_COLUMNS = Path(__file__).resolve().parents[2] / "shared" / "climsim_ref" / "kaggle_columns.txt"


def _reference_columns() -> list[str]:
    lines = REFERENCE_COLUMNS.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.skipif(
    not REFERENCE_COLUMNS.exists(),
    reason="needs ../shared/climsim_ref (the real ClimSim reference files; README 'Reference data')",
)
def test_kaggle_columns_equal_the_reference_file():
    assert list(KAGGLE.columns) == _reference_columns()


def test_sizes_of_the_three_schemas():
    assert (V1.n_inputs, V1.n_targets) == (124, 128)
    assert (V2.n_inputs, V2.n_targets) == (557, 368)
    assert (KAGGLE.n_inputs, KAGGLE.n_targets) == (556, 368)
    assert set(V2.input_columns) - set(KAGGLE.input_columns) == {"cam_in_SNOWHICE"}


def test_profiles_expand_top_down_and_scalars_keep_their_name():
    cols = KAGGLE.input_columns
    assert cols[:NLEV] == tuple(f"state_t_{k}" for k in range(NLEV))
    assert "state_ps" in cols and "state_ps_0" not in cols
    assert KAGGLE.input_slice("state_q0002") == slice(120, 180)
    assert KAGGLE.target_slice("cam_out_NETSW") == slice(360, 361)
    assert KAGGLE.input_profiles == (
        "state_t",
        "state_q0001",
        "state_q0002",
        "state_q0003",
        "state_u",
        "state_v",
        "pbuf_ozone",
        "pbuf_CH4",
        "pbuf_N2O",
    )
    assert len(KAGGLE.input_scalars) == 16
    assert len(KAGGLE.target_profiles) == 6 and len(KAGGLE.target_scalars) == 8


def test_sixty_zero_weight_targets_are_the_top_twelve_levels_of_five_tendencies():
    zero = KAGGLE.zero_weight_targets
    assert len(zero) == 60
    expected = {f"ptend_{v}_{k}" for v in ("q0001", "q0002", "q0003", "u", "v") for k in range(12)}
    assert set(zero) == expected
    weights = KAGGLE.target_weights()
    assert sum(w == 0.0 for w in weights) == 60 and len(weights) == 368
    assert V1.zero_weight_targets == ()


def test_target_sources():
    assert target_source("ptend_q0002").state == "state_q0002"
    assert not target_source("cam_out_PRECC").is_tendency
    assert KAGGLE.tendency_targets == (
        "ptend_t",
        "ptend_q0001",
        "ptend_q0002",
        "ptend_q0003",
        "ptend_u",
        "ptend_v",
    )
    assert set(KAGGLE.mlo_variables) == {
        "state_t",
        "state_q0001",
        "state_q0002",
        "state_q0003",
        "state_u",
        "state_v",
    } | set(KAGGLE.target_scalars)
    with pytest.raises(KeyError, match="not a target"):
        target_source("state_t")


def test_q0002_replacement_pairs_targets_with_inputs():
    pairs = KAGGLE.q0002_replacement_columns()
    assert pairs[0] == ("ptend_q0002_12", "state_q0002_12")
    assert len(pairs) == len(schema.Q0002_REPLACEMENT_LEVELS)
    assert V1.q0002_replacement_columns() == ()
    with pytest.raises(ValueError, match="outside"):
        KAGGLE.q0002_replacement_columns((60,))


def test_unknown_schema_and_variable_are_clear_errors():
    with pytest.raises(KeyError, match="unknown schema 'v9'"):
        get_schema("v9")
    with pytest.raises(KeyError, match="unknown variables"):
        schema.Schema("bad", inputs=("state_x",), targets=())


def test_no_other_module_lists_variable_names():
    """Only schema.py lists variables; the synthetic climate and physics, which compute each
    variable, are the exception. Naming one or two variables (e.g. for a report) is fine."""
    root = Path(__file__).resolve().parents[1]
    allowed = {
        root / "tfpipe" / "data" / "schema.py",
        root / "data_prep" / "climate.py",
        root / "data_prep" / "physics.py",
    }
    offenders = []
    for path in sorted((root / "tfpipe").rglob("*.py")) + sorted((root / "data_prep").rglob("*.py")):
        if path in allowed:
            continue
        text = path.read_text()
        named = {name for name in schema.VARIABLES if f'"{name}"' in text or f"'{name}'" in text}
        if len(named) > 2:
            offenders.append(f"{path.relative_to(root)}: {sorted(named)}")
    assert not offenders
