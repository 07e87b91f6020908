"""Issue 22's replica-side changes keep every answer: Recommend's user id parsed from the user column alone (and
cached per version) is the one the whole one-row batch gave, the request spans see every stage, and requests
answered from several threads while the follower swaps versions each equal the answer of the version they name."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.config import ServeConfig
from serving.errors import InvalidRequestError
from serving.features import RequestFeatures, SpecRoles, parse_user_id
from serving.service import SENT_AT_KEY, RequestSpans, ScoringService, arrival_lag_s, thread_cpu
from serving.wire import pb
from tests.support.serving import make_store
from trainer.data import load_spec

SPEC = load_spec("taobao")
FEATURES = RequestFeatures(SPEC, SpecRoles.of(SPEC, None, None))


def _batch_user_id(features: RequestFeatures, value):
    """What Recommend did before: the user's id from a whole one-row batch (every column parsed/defaulted)."""
    batch, _ = features.batch({features.roles.user_column: value}, {}, 1)
    return int(batch.sparse[features.roles.user_feature][0])


def _outcome(fn, value):
    try:
        return ("id", fn(value))
    except InvalidRequestError as exc:
        return ("refused", str(exc))


VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 10**6),
    st.text(max_size=12),
    st.from_regex(r"\s?-?[0-9]{1,20}\s?", fullmatch=True),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=80, deadline=None)
@given(VALUES)
def test_the_user_column_parsed_alone_gives_the_one_row_batchs_id_or_its_refusal(value):
    assert _outcome(lambda v: parse_user_id(FEATURES, v), value) == _outcome(
        lambda v: _batch_user_id(FEATURES, v), value
    )


def test_request_spans_summarise_and_forget_on_reset():
    spans = RequestSpans(cap=3)
    for s in (0.001, 0.002, 0.003, 0.004):  # the fourth is over the cap: not kept
        spans.add("forward", s)
    spans.add("features", 0.0005)
    got = spans.summary(reset=True)
    assert got["forward"]["n"] == 3 and got["forward"]["mean_ms"] == pytest.approx(2.0)
    assert got["forward"]["total_s"] == pytest.approx(0.006) and got["features"]["n"] == 1
    assert spans.summary() == {}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("serveperf")
    make_store(root, files=2)  # versions 1 and 2 (a delta)
    return root


def _requests(svc: ScoringService) -> tuple[list, list]:
    m = svc.follower.model
    rng = np.random.default_rng(0)
    users = rng.choice(m.tables[m.roles.user_feature].ids, 6, replace=False).tolist() + [987654321]  # + a cold one
    items = m.index.ids
    scores, recs = [], []
    for u in users:
        r = pb.ScoreRequest()
        r.context["user_id"].id = int(u)
        r.context["ts"].id = 1_511_700_000
        r.candidate_columns["item_id"].ids.extend(rng.choice(items, 30, replace=False).tolist())
        scores.append(r)
        q = pb.RecommendRequest(k=5)
        q.context["user_id"].id = int(u)
        q.context["ts"].id = 1_511_700_000
        recs.append(q)
    return scores, recs


def test_recommend_with_the_user_id_parsed_alone_answers_as_before(store):
    svc = ScoringService(ServeConfig(store_url=str(store / "versions"), catalogue=(str(store / "in"),)))
    svc.follower.poll()
    _, recs = _requests(svc)
    new = [svc.recommend(q).SerializeToString() for q in recs]
    model = svc.follower.model
    model.user_id = lambda v: _batch_user_id(model.features, v)  # the old path, on the same model
    old = [svc.recommend(q).SerializeToString() for q in recs]
    assert new == old and all(pb.RecommendResponse.FromString(b).items for b in new)


def test_threads_answering_during_swaps_each_match_the_version_they_name(store):
    """Two threads score and recommend while the follower swaps 1 <-> 2 (pins): every answer is, byte for byte,
    the single-threaded answer of the version it names; the spans count every request once."""
    url = str(store / "versions")
    svc = ScoringService(ServeConfig(store_url=url, catalogue=(str(store / "in"),), request_spans=True))
    svc.follower.poll()
    scores, recs = _requests(svc)
    reference = {}
    for v in (1, 2):
        svc.reconfigure({"pin_version": v})
        svc.follower.poll()
        assert svc.follower.model.version == v
        reference[v] = (
            [svc.score(r).SerializeToString() for r in scores],
            [svc.recommend(q).SerializeToString() for q in recs],
        )
    svc.spans.summary(reset=True)
    stop = threading.Event()
    answers: list[tuple[str, int, bytes]] = []
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        i = offset
        try:
            while not stop.is_set() or i < offset + 20:
                j = i % len(scores)
                answers.append(("score", j, svc.score(scores[j]).SerializeToString()))
                answers.append(("recommend", j, svc.recommend(recs[j]).SerializeToString()))
                i += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for v in (1, 2, 1, 2):  # swaps under the two threads' requests
        svc.reconfigure({"pin_version": v})
        svc.follower.poll()
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    seen = set()
    for kind, j, raw in answers:
        msg = (pb.ScoreResponse if kind == "score" else pb.RecommendResponse).FromString(raw)
        seen.add(msg.model_version)
        assert raw == reference[msg.model_version][0 if kind == "score" else 1][j], (kind, j, msg.model_version)
    assert seen == {1, 2}
    spans = svc.spans.summary()
    assert spans["telemetry"]["n"] == len(answers)
    assert spans["retrieval"]["n"] == sum(k == "recommend" for k, _, _ in answers)
    for stage in ("validate", "convert", "features", "forward", "respond"):
        assert spans[stage]["n"] == len(answers), stage
    svc.stop()


class _Context:
    def __init__(self, metadata):
        self._md = metadata

    def invocation_metadata(self):
        return self._md


def test_arrival_lag_reads_the_clients_send_time_and_ignores_a_bad_one():
    assert arrival_lag_s(_Context([("application", "freshrec"), (SENT_AT_KEY, "1000")]), now_ns=3_000_001_000) == 3.0
    assert arrival_lag_s(_Context([(SENT_AT_KEY, "not a time")])) is None
    assert arrival_lag_s(_Context([])) is None
    cpu = thread_cpu()
    assert "MainThread" in cpu and all(v >= 0 for v in cpu.values())


def test_the_perf_options_are_checked_and_reach_the_replica_and_the_bench():
    import argparse

    from bench.serve import add_arguments, serve_config
    from common.config import ConfigError
    from serving.app import USER_CODE_THREAD_ENV, replica_actor_options

    for key in ("request_spans", "access_log", "user_code_thread"):
        with pytest.raises(ConfigError, match=f"serve.{key} must be true or false"):
            ServeConfig(**{key: "yes"})
    default = ServeConfig()
    assert not default.request_spans and not default.access_log and not default.user_code_thread
    on_loop = replica_actor_options(default)
    assert on_loop["runtime_env"] == {"env_vars": {USER_CODE_THREAD_ENV: "0"}} and on_loop["num_cpus"] == 0
    assert replica_actor_options(ServeConfig(user_code_thread=True)) == {"num_cpus": 0}
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = serve_config(parser.parse_args(["--replica-perf", "--access-log", "--user-code-thread"]), "s", "c")
    assert cfg.request_spans and cfg.access_log and cfg.user_code_thread
    plain = serve_config(parser.parse_args([]), "s", "c")
    assert not plain.request_spans and not plain.access_log and not plain.user_code_thread
