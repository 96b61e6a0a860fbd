"""data_prep.sharding: the shard index from a batch system's environment (encode and download)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.sharding import COUNT_ENV, SHARD_ENV, ShardEnvError, int_from_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_shard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SHARD_ENV + COUNT_ENV:
        monkeypatch.delenv(name, raising=False)


def test_unset_and_empty_variables_give_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert int_from_env(SHARD_ENV) == (None, None)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "")
    assert int_from_env(SHARD_ENV) == (None, None)


def test_the_first_set_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", "5")
    assert int_from_env(SHARD_ENV) == (5, "CLOUD_RUN_TASK_INDEX")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", " 3\n")  # whitespace around an integer is fine
    assert int_from_env(SHARD_ENV) == (3, "JOB_COMPLETION_INDEX")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "")  # empty counts as unset: the next one is used
    assert int_from_env(SHARD_ENV) == (5, "CLOUD_RUN_TASK_INDEX")
    monkeypatch.setenv("CLOUD_RUN_TASK_COUNT", "8")
    assert int_from_env(COUNT_ENV) == (8, "CLOUD_RUN_TASK_COUNT")


@pytest.mark.parametrize("value", ["two", "1.5", "  "])
def test_a_set_variable_must_hold_an_integer(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", value)
    monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", "1")
    with pytest.raises(ShardEnvError) as info:
        int_from_env(SHARD_ENV)
    assert str(info.value) == f"$JOB_COMPLETION_INDEX={value!r} is not an integer"


@pytest.mark.parametrize("module", ["data_prep.encode", "data_prep.download"])
def test_both_commands_take_the_shard_from_it(module: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SHARD_ENV + COUNT_ENV}
    env |= {"JOB_COMPLETION_INDEX": "x", "CLOUD_RUN_TASK_INDEX": "1"}
    args = ["--src", str(tmp_path / "nothing"), "--dst", str(tmp_path / "out"), "--num-shards", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.strip().endswith("error: $JOB_COMPLETION_INDEX='x' is not an integer")
