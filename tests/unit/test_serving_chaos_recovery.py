"""Found by the serving chaos run (issue 20): after the store recovers, a replica must serve the newest
version within about a second, however long the store failed. With the old backoff cap (10 s) a
version that failed during the faults waited up to 10 s for its next try; the default cap is now 1 s.
Seeded: many failure sequences, a fake clock (no sleeping)."""

from __future__ import annotations

import random

import pytest

from serving.follower import VersionFollower
from tests.support.follower import FakeStore, Model
from versions.errors import StoreUnavailableError


@pytest.mark.parametrize("seed", range(20))
def test_after_the_store_recovers_the_newest_version_is_served_within_a_second(seed):
    rng = random.Random(seed)
    now = [0.0]
    store = FakeStore(latest=1)
    down = [False]

    def load(v, previous):
        if down[0]:
            raise StoreUnavailableError("mem://s", "connection reset by peer")
        return Model(v, previous and previous.version)

    f = VersionFollower(store, load, poll_interval_s=0.05, clock=lambda: now[0], seed=seed)
    assert f.poll() and f.version == 1
    store._latest = 2
    down[0] = True
    for _ in range(rng.randint(1, 40)):  # the faults: every load of version 2 fails, for a while
        now[0] += f._next_wait()
        f.poll()
    assert f.version == 1
    down[0] = False  # the store recovers at a random moment between two polls
    now[0] += rng.uniform(0, f._next_wait())
    recovered = now[0]
    while f.version != 2:
        now[0] += f._next_wait()
        f.poll()
    assert now[0] - recovered <= 1.0 + f.poll_interval_s, (seed, now[0] - recovered)


def test_the_served_version_stays_leased_while_the_next_one_loads():
    """Found by the serving chaos run (issue 20): the lease moved to the target before its load, so gc could
    remove the version still served during a slow load (its table-shard lookups then failed). Both are
    leased during the load (the target under ``HOLDER+loading``); after the swap only the new one."""
    from serving.follower import LeaseSettings

    store = FakeStore(latest=1)
    during = []

    def load(v, previous):
        during.append(dict(store.leases))
        return Model(v, previous and previous.version)

    f = VersionFollower(store, load, lease=LeaseSettings(holder="r", role="replica"), seed=0)
    assert f.poll() and store.leases == {"r": (1, "replica")}
    store._latest = 2
    assert f.poll() and f.version == 2
    assert during[-1] == {"r": (1, "replica"), "r+loading": (2, "replica")}
    assert store.leases == {"r": (2, "replica")}
