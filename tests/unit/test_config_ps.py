"""PSConfig is the one definition of the parameter server's settings: a run's ``ps:`` section is a PSConfig
without tables, the run fills in the rest (trainer.backends.ps_config_for), every default is defined once."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from cluster.config import RunConfig, load_run_config
from common.config import ConfigError
from paramserver.config import RUN_FILLED, PSConfig, TableConfig
from trainer.backends import ps_config_for
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec

REPO = Path(__file__).resolve().parents[2]


def test_a_runs_ps_section_is_a_psconfig_and_the_run_fills_in_the_rest():
    cfg = load_run_config(None, ["ps.num_shards=3", "ps.capacity_per_shard=2048", "train.sparse_lr=0.2", "workers=2"])
    assert type(cfg.ps) is PSConfig and cfg.ps.tables == ()
    full = ps_config_for(load_spec("taobao"), cfg.train, cfg.ps, num_workers=cfg.workers, model=cfg.model)
    assert full.num_shards == 3 and full.capacity_per_shard == 2048  # from ps:
    assert full.learning_rate == 0.2 and full.num_workers == 2 and full.seed == cfg.train.seed  # from train/workers
    assert {t.name for t in full.tables} >= {f.name for f in load_spec("taobao").model_sparse}
    untouched = {f.name for f in dataclasses.fields(PSConfig)} - set(RUN_FILLED)
    assert all(getattr(full, k) == getattr(cfg.ps, k) for k in untouched)


@pytest.mark.parametrize("key", sorted(RUN_FILLED))
def test_a_run_filled_key_in_the_ps_section_says_where_it_belongs(key):
    with pytest.raises(ConfigError, match=f"ps.{key} comes from {RUN_FILLED[key].split(' ')[0]}"):
        RunConfig.from_dict({"ps": {key: 1}})


def test_shards_need_tables_and_say_so():
    from paramserver import create_parameter_server

    with pytest.raises(ConfigError, match="ps.tables is empty"):
        create_parameter_server(PSConfig(), placement="in_process")
    assert PSConfig(tables=(TableConfig("a", 4),)).require_tables().table_names == ("a",)


def test_the_settings_a_version_records_read_back_as_the_same_psconfig():
    """A version's manifest carries ``RunConfig.to_dict()["ps"]``; serving and evaluate read it back."""
    cfg = load_run_config(None, ["ps.num_shards=2", "ps.weights_dtype=fp16", "ps.ttl_versions=5"])
    stored = cfg.to_dict()["ps"]
    assert set(stored) == {f.name for f in dataclasses.fields(PSConfig)} - set(RUN_FILLED)
    assert PSConfig.settings_from_dict(stored) == cfg.ps


def test_the_defaults_a_run_trains_with_are_psconfigs_own():
    """One default per setting: the run's ps section IS PSConfig() (no second copy with other defaults)."""
    assert RunConfig().ps == PSConfig()
    assert PSConfig().num_shards == 1 and PSConfig().capacity_per_shard == 1 << 17
    assert ps_config_for(load_spec("taobao"), TrainConfig(), None, model=ModelConfig()).capacity_per_shard == 1 << 17


def test_no_other_module_defines_a_ps_settings_class():
    """Every dataclass with a field named like a PS knob (num_shards, capacity_per_shard...) is PSConfig."""
    knobs = {"capacity_per_shard", "admission_threshold", "lfu_decay_every", "stale_policy", "pipeline_depth"}
    found = []
    for path in REPO.glob("*/**/*.py"):
        parts = path.relative_to(REPO).parts  # relative: a clone under a directory named tests still counts
        if ".venv" in parts or "tests" in parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                fields = {t.target.id for t in node.body if isinstance(t, ast.AnnAssign) and hasattr(t.target, "id")}
                if len(fields & knobs) >= 2:
                    found.append(f"{path.relative_to(REPO)}:{node.name}")
    assert found == ["paramserver/config.py:PSConfig"], found
