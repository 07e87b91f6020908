"""SnapshotPolicy: cadence decisions, full every K versions, config errors."""

import pytest

from common.config import ConfigError
from versions import SnapshotPolicy


def test_after_each_data_file_by_default_with_a_compaction_every_k():
    p = SnapshotPolicy.from_dict({"full_every": 3})
    assert not p.decide(step=10, now=0.0).snapshot
    got = []
    for i in range(7):
        d = p.decide(step=10 * i, now=float(i), data_file_done=True)
        got.append((d.kind, d.compact))
        p.record(d, step=10 * i, now=float(i))
    # one full cut, then deltas; every third version is followed by a compaction (no full cut)
    assert got == [
        ("full", False),
        ("delta", False),
        ("delta", True),
        ("delta", False),
        ("delta", True),
        ("delta", False),
        ("delta", True),
    ]
    p.restored(step=70, now=7.0, chain_length=2)
    assert p.decide(step=71, now=7.0, data_file_done=True).compact


def test_full_cuts_every_k():
    p = SnapshotPolicy.from_dict({"full_every": 3, "full_by": "cut"})
    assert not p.decide(step=10, now=0.0).snapshot
    kinds = []
    for i in range(7):
        d = p.decide(step=10 * i, now=float(i), data_file_done=True)
        assert d.snapshot and d.reason == "data file done"
        kinds.append(d.kind)
        p.record(d, step=10 * i, now=float(i))
    assert kinds == ["full", "delta", "delta", "full", "delta", "delta", "full"]
    p.restored(step=70, now=7.0, chain_length=1)
    assert p.decide(step=71, now=7.0, data_file_done=True).kind == "delta"


def test_every_steps_and_every_seconds():
    p = SnapshotPolicy.from_dict({"every_steps": 100, "every_seconds": 60, "every_data_file": False})
    assert not p.decide(step=50, now=0.0).snapshot
    d = p.decide(step=100, now=10.0)
    assert d.snapshot and "100 steps" in d.reason
    p.record(d, step=100, now=10.0)
    assert not p.decide(step=150, now=60.0).snapshot
    assert p.decide(step=150, now=70.0).reason == "60 s"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"every_step": 5}, "unknown key"),
        ({"every_steps": 0}, "every_steps"),
        ({"every_seconds": -1}, "every_seconds"),
        ({"every_data_file": False}, "at least one of"),
        ({"full_every": 0}, "full_every"),
        ({"full_by": "magic"}, "full_by"),
        ({"keep": True}, "keep"),
    ],
)
def test_config_errors_say_what_to_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        SnapshotPolicy.from_dict(raw)
