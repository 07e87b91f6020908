"""Client-side checks that need no actors: a bad call is refused before anything is sent."""

import pickle

import numpy as np
import pytest

from paramserver import BadPullError, BadPushError, PSClient, PSConfig, TableConfig, UnknownTableError


class _NoActor:
    def __getattr__(self, name):
        raise AssertionError("a refused call must not reach a shard")


@pytest.fixture
def client():
    cfg = PSConfig(tables=(TableConfig("a", 4),), num_shards=2, num_workers=2, mode="sync")
    return PSClient(cfg, [_NoActor(), _NoActor()])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda c: c.push_many({"a": (np.array([1]), np.ones((1, 4), np.float32))}), BadPushError, "step"),
        (lambda c: c.push("a", np.array([1]), np.ones((1, 4), np.float32), step=-1), BadPushError, "step"),
        (lambda c: c.push("a", np.array([1]), np.ones((1, 4), np.float64), step=0), BadPushError, "float32"),
        (lambda c: c.push("a", np.array([1, 2]), np.ones((1, 4), np.float32), step=0), BadPushError, "shape"),
        (lambda c: c.push("a", np.array([1]), np.full((1, 4), np.nan, np.float32), step=0), BadPushError, "NaN"),
        (lambda c: c.push("b", np.array([1]), np.ones((1, 4), np.float32), step=0), UnknownTableError, "'b'"),
        (lambda c: c.pull("a", np.array([1.5])), BadPullError, "integer"),
        (lambda c: c.pull("a", [1, 2]), BadPullError, "numpy"),
    ],
)
def test_bad_calls_are_refused_before_sending(client, call, error, match):
    with pytest.raises(error, match=match):
        call(client)


def test_client_pickles_without_its_in_flight_state(client):
    client._read_versions[3] = {0: 1}
    back = pickle.loads(pickle.dumps(client.for_rank(1)))
    assert back.rank == 1 and back.cfg == client.cfg and back._read_versions == {}
    with pytest.raises(ValueError, match="rank 2"):
        client.for_rank(2)
