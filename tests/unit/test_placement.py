"""Where a run's shards live (``ps.placement``): auto puts them in the one worker's process unless the caller brings
or keeps a client; in_process is refused where no client could exist. (End to end: the one-worker ``freshrec stream``
of tests/integration/test_recovery_process.py, shards in the worker's process.)"""

from __future__ import annotations

import pytest

from paramserver.config import PSConfig
from trainer.run import describe_ps, resolve_placement


@pytest.mark.parametrize(
    ("placement", "workers", "has_client", "keep_ps", "want"),
    [
        ("auto", 1, False, False, "in_process"),
        ("auto", 2, False, False, "ray"),
        ("auto", 1, True, False, "ray"),
        ("auto", 1, False, True, "ray"),
        ("ray", 1, False, False, "ray"),
        ("in_process", 1, False, False, "in_process"),
    ],
)
def test_auto_is_in_process_for_one_worker_without_a_client(placement, workers, has_client, keep_ps, want):
    assert resolve_placement(placement, workers, has_client=has_client, keep_ps=keep_ps) == want


@pytest.mark.parametrize(("has_client", "keep_ps"), [(True, False), (False, True)])
def test_in_process_with_a_client_is_refused_with_what_to_do(has_client, keep_ps):
    with pytest.raises(ValueError, match="use placement ray"):
        resolve_placement("in_process", 1, has_client=has_client, keep_ps=keep_ps)


def test_the_run_says_where_its_shards_live():
    assert describe_ps(PSConfig(num_shards=2), 1) == "2 shard(s) in the worker's process (sync)"
    assert describe_ps(PSConfig(num_shards=2), 2) == "2 shard(s) as Ray actors (sync)"
