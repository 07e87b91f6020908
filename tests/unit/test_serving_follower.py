"""The one follower (issue 20, items 1 and 2): pointers, transient vs corrupt, backoff, health, leases.

The follower is generic over what it loads, so these tests drive it with a fake store (the three
pointers, a lease log) and a loader that fails as told; a clock is injected so backoff is checked
without sleeping. ``tests/unit/test_serving.py`` drives it with real versions.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.errors import UnsupportedError
from serving.follower import LeaseSettings, RetryPolicy, VersionFollower, is_corrupt
from serving.telemetry import ReplicaTelemetry
from tests.support.follower import FakeStore, Model
from versions.errors import CorruptVersionError, NoSuchVersionError, StoreUnavailableError


class Loader:
    """Loads Model(v); ``fail[v]`` is a list of exceptions raised by the next loads of v, in order."""

    def __init__(self):
        self.fail: dict[int, list[BaseException]] = {}
        self.calls: list[int] = []

    def __call__(self, v, previous):
        self.calls.append(v)
        if self.fail.get(v):
            raise self.fail[v].pop(0)
        return Model(v, previous.version if previous is not None else None)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Sink:
    def __init__(self):
        self.sent = []

    def __call__(self, name, value, **tags):
        self.sent.append((name, value, tags))

    def kinds(self):
        return [t["kind"] for n, _, t in self.sent if n == "freshrec_serving_load_failures_total"]


def follower(store, loader, **kw):
    clock, sink = Clock(), Sink()
    f = VersionFollower(store, loader, clock=clock, seed=0, telemetry=ReplicaTelemetry("r", record=sink), **kw)
    return f, clock, sink


def test_the_target_is_pin_then_pinned_then_published_then_latest():
    store, loader = FakeStore(latest=5, published=4, pinned=2), Loader()
    f, _, _ = follower(store, loader)
    assert f.poll() and f.version == 2 and f.why == "pinned" and f.pinned
    store._pinned = None
    assert f.poll() and f.version == 4 and f.why == "published" and f.model.base == 2  # forward: deltas on 2
    store._published = None
    assert f.poll() and f.version == 5 and f.why == "latest"
    f.configure(pin_version=3)
    assert f.version == 3 and f.why == "config-pin" and f.model.base is None  # backward: built whole


def test_a_transient_store_error_is_retried_with_backoff_never_refused():
    store, loader = FakeStore(latest=1), Loader()
    loader.fail[1] = [StoreUnavailableError("mem://s", "503 Slow Down")] * 3
    f, clock, sink = follower(store, loader)
    ok, why = f.health()
    assert not ok and "no version loaded yet" in why
    waits = []
    for _ in range(3):
        assert not f.poll()
        assert 1 not in f.refused and "retried in" in f.last_error
        assert not f.poll() and loader.calls.count(1) == len(waits) + 1  # inside the backoff: not tried again
        waits.append(f._backoff[1].next_at - clock.t)
        clock.t += waits[-1]
    ok, why = f.health()
    assert not ok and "503 Slow Down" in why  # not ready, and says why
    assert f.poll() and f.version == 1 and f.health()[0]
    assert sink.kinds() == ["transient"] * 3
    assert all(0 < w <= RetryPolicy().base_s * 2**i for i, w in enumerate(waits))


def test_a_pinned_rollback_target_survives_a_transient_error():
    store, loader = FakeStore(latest=3), Loader()
    f, clock, _ = follower(store, loader)
    assert f.poll() and f.version == 3
    store._pinned = 1
    loader.fail[1] = [NoSuchVersionError(1, (1, 2, 3)), OSError("connection reset")]
    assert not f.poll() and f.version == 3 and 1 not in f.refused
    clock.t += 60
    assert not f.poll() and 1 not in f.refused
    clock.t += 60
    assert f.poll() and f.version == 1 and f.pinned


def test_a_corrupt_version_is_refused_then_rechecked_after_a_while():
    store, loader = FakeStore(latest=1), Loader()
    f, clock, sink = follower(store, loader, retry=RetryPolicy(recheck_corrupt_s=100))
    assert f.poll()
    store._latest = 2
    loader.fail[2] = [CorruptVersionError(2, "ps/shard-0/user", "fails its checksum")] * 2
    assert not f.poll() and f.version == 1 and "checksum" in f.refused[2]
    clock.t += 99
    assert not f.poll() and loader.calls.count(2) == 1  # not retried before recheck_corrupt_s
    clock.t += 2
    assert not f.poll() and loader.calls.count(2) == 2 and 2 in f.refused  # re-checked, still corrupt
    clock.t += 101
    assert f.poll() and f.version == 2 and 2 not in f.refused  # repaired: served
    assert sink.kinds() == ["corrupt", "recheck", "corrupt", "recheck"]


@pytest.mark.parametrize(
    "exc,corrupt",
    [
        (CorruptVersionError(1, "p", "truncated"), True),
        (UnsupportedError("no spec"), True),
        (ValueError("shape"), True),
        (KeyError("table"), True),
        (StoreUnavailableError("s3://b", "reset"), False),
        (NoSuchVersionError(1), False),
        (OSError("EIO"), False),
        (TimeoutError(), False),
        (RuntimeError("ray actor died"), False),
    ],
)
def test_only_checksum_and_format_failures_are_corrupt(exc, corrupt):
    assert is_corrupt(exc) is corrupt


def test_a_store_that_cannot_be_read_backs_off_and_keeps_serving():
    store, loader = FakeStore(latest=1), Loader()
    f, _, _ = follower(store, loader, poll_interval_s=0.2)
    assert f.poll()
    store.down = True
    for _ in range(6):
        assert not f.poll() and f.version == 1
    assert "unavailable" in f.last_error and f.health()[0]  # still serving its version
    assert f._next_wait() >= 0.2 and f._store_failures == 6
    store.down = False
    assert not f.poll() and f.last_error is None and f._next_wait() == 0.2


def test_leases_follow_the_served_version_and_are_released_on_stop():
    store, loader = FakeStore(latest=1), Loader()
    f, clock, _ = follower(store, loader, lease=LeaseSettings(holder="replica-a", role="replica", ttl_s=30))
    f.poll()
    assert store.leases == {"replica-a": (1, "replica")}
    n = store.renewals
    f.poll()
    assert store.renewals == n  # renewed every ttl/3, not every poll
    clock.t += 11
    f.poll()
    assert store.renewals == n + 1
    store._latest = 2
    f.poll()
    assert store.leases == {"replica-a": (2, "replica")}
    store._latest = 3
    loader.fail[3] = [OSError("reset")] * 2
    seen = []
    store.renew_lease = lambda holder, v, **kw: (seen.append(v), FakeStore.renew_lease(store, holder, v, **kw))
    f.poll()
    # leased before loading under the loading holder, released after the failure; the served version's lease stays
    assert seen == [3] and store.leases == {"replica-a": (2, "replica")}
    f.poll()  # inside the backoff: nothing to renew yet
    assert len(seen) == 1
    clock.t += 11
    f.poll()  # retried after the backoff, fails again: only the served version is leased
    assert seen[1:] == [3] and store.leases == {"replica-a": (2, "replica")}
    f.start()
    f.stop()
    assert store.leases == {}


def test_remembered_failures_are_bounded():
    store, loader = FakeStore(), Loader()
    f, clock, _ = follower(store, loader)
    for v in range(1, 200):
        store._latest = v
        loader.fail[v] = [CorruptVersionError(v, "p", "bad") if v % 2 else OSError("reset")]
        f.poll()
    assert len(f.refused) <= 64 and len(f._backoff) <= 64 and len(f._refused_at) <= 64


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**32))
def test_backoff_is_jittered_and_bounded(attempt, seed):
    p = RetryPolicy(base_s=0.2, max_s=5.0)
    d = [p.delay(attempt, random.Random(seed + k)) for k in range(8)]
    assert all(p.floor_s <= x <= min(p.max_s, 0.2 * 2 ** (attempt - 1)) for x in d)
    assert len(set(d)) > 1 or attempt == 1 and p.floor_s == d[0]
