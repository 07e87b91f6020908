"""The chaos harness's stream generator and its expectation model (no Ray)."""

from __future__ import annotations

import hashlib

import pytest

from bench.chaos import streams
from bench.chaos.streams import Anomalies, expected, make_plan


def _log(n: int = 2000, step: int = 1):
    """A small clean log: unique events, one second apart."""
    return [
        f"{u},{1000 + u},{u % 7},{'buy' if u % 5 == 0 else 'pv'},{1_511_658_000 + step * u}" for u in range(n)
    ], "test"


def test_plans_are_reproducible_by_seed_and_differ_across_seeds():
    a, b, c = make_plan(5, log=_log()), make_plan(5, log=_log()), make_plan(6, log=_log())
    assert a == b
    assert a != c


def test_a_clean_stream_trains_every_row_once_in_name_order():
    plan = make_plan(1, Anomalies.none(), files=5, rows_per_file=50, waves=2, log=_log())
    exp = expected(plan)
    assert [e.name for e in exp] == sorted(e.name for e in exp)
    assert all(e.trained == e.good == e.rows_in == 50 and not e.dead and not e.duplicate for e in exp)
    assert all(e.balanced() for e in exp)


def test_duplicates_across_file_boundaries_are_expected_as_duplicates():
    plan = make_plan(
        2,
        Anomalies(
            duplicates=True, late_file=False, future_ts=False, dead_rows=False, in_progress=False, replaced=False
        ),
        files=5,
        rows_per_file=40,
        waves=2,
        log=_log(),
    )
    exp = expected(plan)
    assert exp[0].duplicate == 0
    assert all(1 <= e.duplicate <= 3 for e in exp[1:])
    assert sum(e.trained for e in exp) == 5 * 40  # every distinct event exactly once
    assert all(e.balanced() for e in exp)


def test_a_late_file_is_consumed_after_later_names_and_its_rows_are_deferred_then_trained():
    plan = make_plan(
        3,
        Anomalies(
            late_file=True, duplicates=False, future_ts=False, dead_rows=False, in_progress=False, replaced=False
        ),
        files=6,
        rows_per_file=40,
        waves=3,
        log=_log(),
    )
    exp = expected(plan)
    names = [e.name for e in exp]
    late = next(i for i, n in enumerate(names) if i > 0 and n < names[i - 1])
    assert exp[late].deferred > 0 and exp[late].good == 0
    if late + 1 < len(exp):
        assert exp[late + 1].trained == exp[late + 1].good + exp[late].deferred
    assert all(e.balanced() for e in exp)


def test_dead_letter_policy_makes_late_rows_dead():
    plan = make_plan(
        3,
        Anomalies(
            late_file=True, duplicates=False, future_ts=False, dead_rows=False, in_progress=False, replaced=False
        ),
        files=6,
        rows_per_file=40,
        waves=3,
        policy="dead_letter",
        log=_log(),
    )
    exp = expected(plan)
    assert any(e.dead.get(streams.R_LATE) for e in exp)
    assert not any(e.deferred for e in exp)


def test_a_far_future_event_is_dead_and_does_not_move_the_watermark():
    plan = make_plan(
        4,
        Anomalies(
            future_ts=True, duplicates=False, late_file=False, dead_rows=False, in_progress=False, replaced=False
        ),
        files=5,
        rows_per_file=40,
        waves=2,
        log=_log(),
    )
    exp = expected(plan, now=1_700_000_000)
    assert sum(e.dead.get(streams.R_FUTURE, 0) for e in exp) == 1
    assert not any(e.deferred for e in exp)  # the watermark stayed in 2017


def test_in_progress_names_are_written_half_then_finished_and_renamed_in_the_next_wave(tmp_path):
    plan = make_plan(
        7,
        Anomalies(
            in_progress=True, duplicates=False, late_file=False, future_ts=False, dead_rows=False, replaced=False
        ),
        files=5,
        rows_per_file=30,
        waves=3,
        log=_log(),
    )
    ops = [(w, op) for w, wave in enumerate(plan.waves) for op in wave]
    partial = [(w, op) for w, op in ops if op.kind == "partial"]
    finish = [(w, op) for w, op in ops if op.kind == "finish"]
    assert len(partial) == len(finish) == 1
    (wp, p), (wf, f) = partial[0], finish[0]
    assert wf == wp + 1 and p.temp == f.temp and p.name == f.name
    assert p.temp != p.name and (
        p.temp.startswith((".", "_")) or p.temp.endswith((".tmp", ".inprogress", "._COPYING_"))
    )
    for w in range(len(plan.waves)):
        streams.deliver(plan, w, tmp_path)
        if w == wp:
            assert (tmp_path / p.temp).exists() and not (tmp_path / p.name).exists()
    assert (tmp_path / f.name).read_bytes() == f.data and not (tmp_path / f.temp).exists()
    assert f.name in [e.name for e in expected(plan)]


def test_a_replaced_file_is_expected_refused_and_its_new_bytes_never_trained(tmp_path):
    plan = make_plan(
        8,
        Anomalies(
            replaced=True, duplicates=False, late_file=False, future_ts=False, dead_rows=False, in_progress=False
        ),
        files=5,
        rows_per_file=30,
        waves=2,
        log=_log(),
    )
    exp = expected(plan)
    refused = [e for e in exp if e.refused]
    assert len(refused) == 1 and refused[0].trained == 0
    first = next(e for e in exp if e.name == refused[0].name and not e.refused)
    assert first.sha256 != refused[0].sha256
    for w in range(len(plan.waves)):
        streams.deliver(plan, w, tmp_path)
    assert hashlib.sha256((tmp_path / first.name).read_bytes()).hexdigest() == refused[0].sha256


def test_dead_rows_are_counted_by_reason():
    plan = make_plan(
        9,
        Anomalies(
            dead_rows=True, duplicates=False, late_file=False, future_ts=False, in_progress=False, replaced=False
        ),
        files=5,
        rows_per_file=30,
        waves=2,
        log=_log(),
    )
    exp = expected(plan)
    dead = sum(sum(e.dead.values()) for e in exp)
    assert dead == 2
    assert set().union(*(e.dead for e in exp)) <= {streams.R_UNKNOWN_ACTION, streams.R_MISSING}


def test_slow_writes_are_timing_dependent_and_append_in_chunks(tmp_path):
    plan = make_plan(
        10,
        Anomalies(
            slow_write=True,
            duplicates=False,
            late_file=False,
            future_ts=False,
            dead_rows=False,
            in_progress=False,
            replaced=False,
        ),
        files=4,
        rows_per_file=20,
        waves=2,
        log=_log(),
    )
    assert plan.timing_dependent
    assert any(e.uncertain for e in expected(plan))
    slow = next(op for wave in plan.waves for op in wave if op.kind == "slow")
    streams._slow_write(tmp_path / slow.name, slow.data, slow.chunks, 0.0)
    assert (tmp_path / slow.name).read_bytes() == slow.data


@pytest.mark.parametrize(
    "text, on",
    [
        ("all", set(Anomalies().names()) | {"slow_write"}),
        ("none", set()),
        ("duplicates,late_file", {"duplicates", "late_file"}),
        ("-slow_write", set(Anomalies().names())),
    ],
)
def test_anomaly_lists_parse(text, on):
    assert set(Anomalies.parse(text).names()) == on


def test_an_unknown_anomaly_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown anomaly 'dupes'.*duplicates"):
        Anomalies.parse("dupes")


def test_the_real_taobao_log_makes_a_plan_when_present():
    if not streams.TAOBAO.exists():
        pytest.skip(f"{streams.TAOBAO} is not here (the shared data directory)")
    plan = make_plan(11)
    exp = expected(plan)
    assert plan.source == str(streams.TAOBAO)
    assert all(e.balanced() for e in exp)
    assert sum(e.rows_in for e in exp if not e.refused) >= 6 * 120
