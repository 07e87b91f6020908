"""The client/actor wire format round-trips and refuses malformed messages."""

import numpy as np
import pytest

from paramserver import BadPullError, BadPushError, UnknownTableError, wire

DIMS = {"a": 4, "b": 8}


def test_pull_and_push_messages_round_trip():
    req = {"a": (np.array([3, 9]), np.array([1, 2])), "b": (np.array([-1]), np.array([5]))}
    back = wire.unpack_ids(wire.pack_ids(req))
    assert {k: (v[0].tolist(), v[1].tolist()) for k, v in back.items()} == {"a": ([3, 9], [1, 2]), "b": ([-1], [5])}
    rows = {"a": np.arange(8, dtype=np.float32).reshape(2, 4), "b": np.ones((1, 8), np.float32)}
    flat = wire.pack_rows(("a", "b"), rows)
    got = wire.unpack_rows(("a", "b"), np.array([2, 1]), DIMS, flat)
    assert (got["a"] == rows["a"]).all() and (got["b"] == rows["b"]).all()
    push = {"b": (np.array([7]), np.full((1, 8), 2, np.float32)), "a": (np.array([1, 2]), rows["a"])}
    got = wire.unpack_grads(wire.pack_grads(push), DIMS)
    assert list(got) == ["b", "a"] and (got["a"][1] == rows["a"]).all() and got["b"][0].tolist() == [7]


def test_malformed_messages_are_refused():
    names, lengths, ids, grads = wire.pack_grads({"a": (np.array([1, 2]), np.ones((2, 4), np.float32))})
    with pytest.raises(BadPushError, match="expected 8"):
        wire.unpack_grads((names, lengths, ids, grads[:-1]), DIMS)
    with pytest.raises(BadPushError, match="float32"):
        wire.unpack_grads((names, lengths, ids, grads.astype(np.float64)), DIMS)
    with pytest.raises(UnknownTableError):
        wire.unpack_grads((("z",), lengths, ids, grads), DIMS)
    with pytest.raises(BadPullError, match="int64"):
        wire.unpack_ids((names, np.array([3]), ids, ids))
    with pytest.raises(BadPushError, match="twice"):
        wire.unpack_grads((("a", "a"), np.array([1, 1]), ids, grads), DIMS)
