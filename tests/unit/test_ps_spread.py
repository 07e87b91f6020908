"""ps.spread: how shard actors are laid out over the nodes (pure logic; the multi-node cluster test is
tests/integration/test_multinode.py)."""

from __future__ import annotations

import pytest

from common.config import ConfigError
from paramserver import actor
from paramserver.config import PSConfig, TableConfig

TABLES = (TableConfig("item", 4),)


def test_an_unknown_spread_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"ps\.spread must be one of \['none', 'spread', 'nodes'\]"):
        PSConfig(tables=TABLES, spread="everywhere")
    with pytest.raises(ConfigError, match=r"ps\.spread"):
        PSConfig(spread="pack")
    assert PSConfig.settings_from_dict({"spread": "nodes"}).spread == "nodes"


def test_nodes_go_round_robin_and_an_empty_cluster_is_an_error():
    assert actor.shard_node_layout(5, ["a", "b"]) == ["a", "b", "a", "b", "a"]
    assert actor.shard_node_layout(1, ["a", "b", "c"]) == ["a"]
    with pytest.raises(RuntimeError, match="no alive node"):
        actor.shard_node_layout(2, [])


def test_scheduling_options_per_spread(monkeypatch):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    assert actor._scheduling(PSConfig(tables=TABLES, num_shards=2)) == ([{}, {}], [None, None])
    assert actor._scheduling(PSConfig(tables=TABLES, num_shards=2, spread="spread")) == (
        [{"scheduling_strategy": "SPREAD"}] * 2,
        [None, None],
    )
    n1, n2 = "a" * 56, "b" * 56  # the form of Ray's node ids (hex)
    monkeypatch.setattr(actor, "alive_node_ids", lambda: [n1, n2])
    got, targets = actor._scheduling(PSConfig(tables=TABLES, num_shards=3, spread="nodes"))
    assert targets == [n1, n2, n1]
    strategies = [o["scheduling_strategy"] for o in got]
    assert all(isinstance(s, NodeAffinitySchedulingStrategy) for s in strategies)
    assert [s.node_id for s in strategies] == [n1, n2, n1]
    assert all(s.soft for s in strategies)  # a node that is gone or full falls back to any node


def test_a_shard_off_its_alive_node_is_misplaced_and_one_whose_node_is_gone_is_not():
    assert actor.misplaced(["a", "b", "a"], ["a", "a", "a"], {"a", "b"}) == [1]
    assert actor.misplaced(["a", "b"], ["a", "b"], {"a", "b"}) == []
    assert actor.misplaced(["a", "b"], ["a", "a"], {"a"}) == []  # b lost meanwhile: the fallback stands
    assert actor.misplaced([None, None], ["a", "b"], {"a", "b"}) == []  # spread none/spread: anywhere
