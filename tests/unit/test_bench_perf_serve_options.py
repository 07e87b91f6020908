"""Issue 22, replica concurrency: the ``serve.max_ongoing_requests`` / ``serve.score_batch_size`` options and
the batched Score path (``ScoringService.score_many``, what ``@serve.batch`` calls): each request of a batch
answered as if scored alone (same version, scores equal up to float rounding, its own refusals, its own
unknown ids), a refused request never failing the others. In process, no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import ConfigError
from serving.config import ServeConfig
from serving.errors import InvalidRequestError, VersionMismatchError
from serving.wire import pb
from tests.support.serving import make_service


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    _, _, s = make_service(tmp_path_factory.mktemp("batched"), files=1)
    yield s
    s.stop()


def _req(user, items, **kw) -> pb.ScoreRequest:
    r = pb.ScoreRequest(**kw)
    r.context["user_id"].id = user
    r.context["ts"].id = 1_511_700_000
    r.candidate_columns["item_id"].ids.extend(items)
    return r


def test_a_batch_answers_each_request_as_if_alone_and_refuses_only_the_bad_ones(svc):
    rng = np.random.default_rng(0)
    good = [_req(int(rng.integers(1, 300)), rng.integers(1, 500, int(rng.integers(1, 40))).tolist()) for _ in range(5)]
    good.append(_req(7, [10**15, 10**15 + 1, 3]))  # unknown items: counted per request
    bad = _req(7, [1, 2])
    bad.context["ts"].token = "yesterday"
    pinned_elsewhere = _req(7, [1], pin_version=99)
    batch = [good[0], bad, *good[1:3], pinned_elsewhere, *good[3:]]
    out = svc.score_many(batch)
    assert len(out) == len(batch)
    assert isinstance(out[1], InvalidRequestError) and "unparsable time" in out[1].message
    assert isinstance(out[4], VersionMismatchError)
    answered = [o for i, o in enumerate(out) if i not in (1, 4)]
    for req, got in zip(good, answered, strict=True):
        alone = svc.score(req)
        assert got.model_version == alone.model_version == svc.follower.version
        assert list(got.defaulted_columns) == list(alone.defaulted_columns)
        assert got.unknown_ids == alone.unknown_ids
        np.testing.assert_allclose(np.float32(got.scores), np.float32(alone.scores), rtol=0, atol=1e-6)
    assert answered[-1].unknown_ids >= 2
    assert svc.score_many([bad])[0].code == "INVALID_ARGUMENT" and svc.score_many([]) == []


def test_the_options_are_checked_with_what_to_do():
    cfg = ServeConfig(max_ongoing_requests=16, score_batch_size=8, score_batch_wait_s=0.005)
    assert (cfg.max_ongoing_requests, cfg.score_batch_size, cfg.score_batch_wait_s) == (16, 8, 0.005)
    d = ServeConfig()
    assert (d.max_ongoing_requests, d.score_batch_size) == (64, 1)  # defaults unchanged: one request per forward
    for bad, match in (
        ({"max_ongoing_requests": 0}, "max_ongoing_requests must be an integer >= 1"),
        ({"score_batch_size": 0}, "score_batch_size must be an integer >= 1"),
        ({"score_batch_wait_s": -1}, r"score_batch_wait_s must be in \[0, 1\]"),
        ({"score_batch_size": 65}, "must be <= serve.max_ongoing_requests"),
        ({"score_batch_size": 4, "remote_tables": ("user",)}, "needs every table in the replica"),
    ):
        with pytest.raises(ConfigError, match=match):
            ServeConfig(**bad)
    assert ServeConfig.from_dict({"score_batch_size": 4}).score_batch_size == 4


def test_bench_serve_passes_the_options_to_the_replica():
    from bench.serve import serve_config
    from cluster.cli import build_parser

    p = build_parser()
    a = p.parse_args(["bench", "serve", "--max-ongoing", "8", "--score-batch", "4", "--score-batch-wait", "0.001"])
    cfg = serve_config(a, "/tmp/x", "cat.csv")
    assert (cfg.max_ongoing_requests, cfg.score_batch_size, cfg.score_batch_wait_s) == (8, 4, 0.001)
    assert cfg.poll_interval_s == 0.1 and cfg.catalogue == ("cat.csv",)
    plain = serve_config(p.parse_args(["bench", "serve"]), "/tmp/x", "cat.csv")
    assert (plain.max_ongoing_requests, plain.score_batch_size) == (64, 1)


def test_the_deployment_takes_the_options():
    """The Scorer deployment's max_ongoing_requests and the batch handler's sizes come from the ServeConfig."""
    from serving.app import ScorerDeployment, build_app

    app = build_app(ServeConfig(store_url="/tmp/x", max_ongoing_requests=12, score_batch_size=3))
    assert app._bound_deployment.max_ongoing_requests == 12
    handler = ScorerDeployment.func_or_class._score_together
    assert hasattr(handler, "set_max_batch_size") and hasattr(handler, "set_batch_wait_timeout_s")
