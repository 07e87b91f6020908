"""Serving without Ray: a version scores exactly as training would (no skew), requests are validated,
the follower swaps atomically and keeps the last good version, and request messages are fuzzed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.servedata import write_taobao_csv
from paramserver.config import PSConfig
from serving.config import ServeConfig
from serving.errors import InvalidRequestError, NotReadyError, VersionMismatchError
from serving.follower import VersionFollower
from serving.model import load_model
from serving.service import ScoringService
from serving.wire import pb
from tests.support.serving import make_service, make_store, row_request
from trainer.config import ModelConfig, TrainConfig
from trainer.local import LocalTrainer
from trainer.versioning import VersionKeeper
from versions import VersionStore

REPO = Path(__file__).resolve().parents[2]


def offline_scores(store_url: str, version: int, spec, batch, ps: PSConfig) -> np.ndarray:
    """A fresh trainer restored from the version (what training would score with it)."""
    t = LocalTrainer(spec, ModelConfig(), TrainConfig(), ps)
    keeper = VersionKeeper(store_url, t.backend, t)
    assert keeper.restore() == version
    return t.score(batch)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    trainer, paths, svc = make_service(root)
    return root, trainer, paths, svc


def test_importing_serving_does_not_import_ray_train():
    code = (
        "import sys, serving, serving.model, serving.service, serving.app, serving.client, serving.grpc_server;"
        "bad = sorted(m for m in sys.modules if m == 'ray.train' or m.startswith('ray.train.'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "ps",
    [
        PSConfig(num_shards=1),
        PSConfig(num_shards=1, weights_dtype="fp16"),
        PSConfig(num_shards=1, admission_threshold=2),
    ],
    ids=["fp32", "fp16", "admit2"],
)
def test_served_scores_equal_offline_scores_including_cold_ids(tmp_path, ps):
    trainer, paths = make_store(tmp_path, files=2, ps=ps)
    store = VersionStore(str(tmp_path / "versions"))
    v = store.latest()
    # a later file: new users and new items the version has never seen (cold-start rows)
    later = write_taobao_csv(tmp_path / "later.csv", 800, 7, start_ts=1_511_700_000, users=600, new_items=40)
    batch = trainer.read(later)
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"))).start()
    try:
        served = svc.score(row_request(batch))
    finally:
        svc.stop()
    offline = offline_scores(str(tmp_path / "versions"), v, trainer.spec, batch, ps)
    assert served.model_version == v
    assert served.unknown_ids > 0
    served = np.asarray(served.scores, np.float32)
    if ps.admission_threshold > 1:  # training's scoring pull may admit ids of the batch; serving never does
        model = load_model(store, v)
        known = np.ones(len(batch), bool)
        for f in trainer.spec.sparse:
            known &= model.tables[f.name].positions(batch.sparse[f.name])[1]
        assert 0 < known.sum() < len(batch)
        served, offline = served[known], offline[known]
    np.testing.assert_array_equal(served, offline)


def test_deltas_applied_to_the_previous_model_equal_a_full_load(served):
    root, trainer, paths, svc = served
    store = VersionStore(str(root / "versions"))
    first, last = store.versions()[0], store.latest()
    assert store.manifest(last).kind == "delta"
    full = load_model(store, last)
    followed = load_model(store, last, previous=load_model(store, first))
    for name in full.tables.tables:
        np.testing.assert_array_equal(full.tables[name].ids, followed.tables[name].ids)
        np.testing.assert_array_equal(full.tables[name].rows.numpy(), followed.tables[name].rows.numpy())


def test_follower_refuses_a_corrupt_version_and_survives_a_missing_store(tmp_path):
    trainer, paths = make_store(tmp_path, files=1)
    store = VersionStore(str(tmp_path / "versions"))
    f = VersionFollower(store, lambda v, prev: load_model(store, v, previous=prev))
    assert f.poll() and f.model.version == 1
    v2 = trainer.add_file(write_taobao_csv(tmp_path / "in" / "part-1.csv", 500, 1))
    part = next((tmp_path / "versions").glob(f"v{v2:08d}/ps/**/*.part"))
    raw = bytearray(part.read_bytes())
    raw[-1] ^= 0xFF
    part.write_bytes(bytes(raw))
    assert not f.poll() and f.model.version == 1 and v2 in f.refused
    assert "checksum" in f.refused[v2] or "Corrupt" in f.refused[v2]
    shutil.move(str(tmp_path / "versions"), str(tmp_path / "gone"))
    assert not f.poll() and f.model.version == 1
    shutil.move(str(tmp_path / "gone"), str(tmp_path / "versions"))
    assert "unavailable" in f.last_error or "no committed version" in f.last_error
    shutil.rmtree(tmp_path / "versions" / f"v{v2:08d}")  # an operator removes the bad version
    f.configure(pin_version=None)
    assert f.model.version == 1 and f.last_error is None


def test_pinning_serves_an_older_version_and_requests_can_insist_on_one(served):
    root, trainer, paths, svc = served
    latest = svc.follower.model.version
    svc.reconfigure({"pin_version": 1})
    assert svc.model_info().model_version == 1 and svc.model_info().pinned
    with pytest.raises(VersionMismatchError, match="pin_version 2 is not served"):
        svc.score(_score_request(pin=2))
    svc.reconfigure({"pin_version": None})
    assert svc.model_info().model_version == latest and not svc.model_info().pinned


def test_not_ready_without_a_version(tmp_path):
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "empty")))
    svc.follower.poll()
    with pytest.raises(NotReadyError, match="no model version is served yet"):
        svc.score(_score_request())


def _score_request(items=(1, 2, 3), pin=0, **context) -> pb.ScoreRequest:
    req = pb.ScoreRequest(pin_version=pin)
    req.context["user_id"].id = 5
    for k, v in context.items():
        req.context[k].CopyFrom(v)
    req.candidate_columns["item_id"].ids.extend(items)
    return req


def test_model_info_carries_the_versions_validation_metrics(served):
    import dataclasses as dc
    import json as _json

    root, trainer, paths, svc = served
    path = root / "metrics.jsonl"
    path.write_text(
        "\n".join(
            _json.dumps({"file": f"part-{i}.csv", "auc": 0.6 + i / 100, "log_loss": 0.3, "cumulative_auc": 0.62})
            for i in range(2)
        )
        + '\n{"file": "par'
    )
    other = ScoringService(dc.replace(svc.cfg, metrics_path=str(path), catalogue=()))
    other.follower.poll()
    m = other.model_info().metrics
    assert m["progressive_auc"] == pytest.approx(0.61) and m["cumulative_auc"] == pytest.approx(0.62)
    assert m["files_validated"] == 2 and "examples_trained" in m


def test_model_info_and_recommend(served):
    root, trainer, paths, svc = served
    info = svc.model_info()
    assert info.model_version == 2 and info.spec_name == "taobao_userbehavior" and info.data_files == 2
    assert info.rows_trained == 3000 and info.last_data_file == "part-1.csv" and info.catalogue_items > 400
    req = pb.RecommendRequest(k=5, exclude_item_ids=[2, 4])
    req.context["user_id"].id = 5
    r = svc.recommend(req)
    ids = [i.item_id for i in r.items]
    assert len(ids) == 5 and not {2, 4} & set(ids)
    assert [i.score for i in r.items] == sorted((i.score for i in r.items), reverse=True)
    # Recommend's score of an item is the score Score gives it (same version, same features)
    req.context["ts"].id = 1_511_660_000
    r = svc.recommend(req)
    s = svc.score(_score_request(items=[i.item_id for i in r.items], ts=pb.Feature(id=1_511_660_000)))
    np.testing.assert_array_equal(np.float32(s.scores), np.float32([i.score for i in r.items]))
    req.category.id = 5
    r = svc.recommend(req)
    assert r.items and all(i.item_id % 20 + 1 == 5 for i in r.items)


BAD = [
    ("no candidates", lambda r: r.candidate_columns["item_id"].ids.__delitem__(slice(None)), "no candidates"),
    ("too many", lambda r: r.candidate_columns["item_id"].ids.extend(range(2000)), "over the limit of 1000"),
    ("malformed id", lambda r: r.context["user_id"].CopyFrom(pb.Feature(token="a\x01b")), "control characters"),
    ("non-finite", lambda r: r.context["ts"].CopyFrom(pb.Feature(number=float("inf"))), "non-finite"),
    ("unknown column", lambda r: r.context["colour"].CopyFrom(pb.Feature(id=1)), "unknown column(s) ['colour']"),
    ("empty feature", lambda r: r.context["ts"].CopyFrom(pb.Feature()), "the Feature is empty"),
    ("ragged columns", lambda r: r.candidate_columns["category_id"].ids.extend([1]), "give one per candidate"),
    ("both forms", lambda r: r.candidates.add().features["item_id"].CopyFrom(pb.Feature(id=1)), "not both"),
    ("bad time", lambda r: r.context["ts"].CopyFrom(pb.Feature(token="yesterday")), "unparsable time"),
    ("oversized", lambda r: r.context["user_id"].CopyFrom(pb.Feature(token="x" * (2 << 20))), "bytes, over the limit"),
]


@pytest.mark.parametrize("name,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_bad_score_requests_say_what_is_wrong(served, name, mutate, message):
    svc = served[3]
    req = _score_request()
    mutate(req)
    with pytest.raises(InvalidRequestError) as err:
        svc.score(req)
    assert message in err.value.message
    assert len(svc.score(_score_request()).scores) == 3  # and it goes on serving


@pytest.mark.parametrize(
    "k,num,message",
    [(0, 0, "k must be in [1, 1000]"), (1001, 0, "k must be in"), (5, 10**6, "num_candidates must be in")],
)
def test_bad_recommend_requests(served, k, num, message):
    req = pb.RecommendRequest(k=k, num_candidates=num)
    req.context["user_id"].id = 5
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        served[3].recommend(req)


def test_unknown_ids_get_the_cold_start_row_not_an_error(served):
    r = served[3].score(_score_request(items=(10**15, 10**15 + 1)))
    assert r.unknown_ids >= 2 and all(0 < s < 1 for s in r.scores)


# ------------------------------------------------------------------------------ fuzzing
values = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.Feature(id=v)),
    st.text(max_size=30).map(lambda v: pb.Feature(token=v)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: pb.Feature(number=v)),
    st.just(pb.Feature()),
)
names = st.sampled_from(["user_id", "item_id", "category_id", "ts", "behavior", "colour", ""])


@st.composite
def score_requests(draw):
    req = pb.ScoreRequest(pin_version=draw(st.sampled_from([0, 0, 0, 1, -3])))
    for k, v in draw(st.dictionaries(names, values, max_size=4)).items():
        req.context[k].CopyFrom(v)
    if draw(st.booleans()):
        n = draw(st.integers(0, 20))
        for k in draw(st.lists(names, max_size=3, unique=True)):
            kind = draw(st.sampled_from(["ids", "tokens", "numbers"]))
            elems = {"ids": st.integers(-(2**63), 2**63 - 1), "tokens": st.text(max_size=10), "numbers": st.floats()}[
                kind
            ]
            getattr(req.candidate_columns[k], kind).extend(draw(st.lists(elems, min_size=n, max_size=n + 1)))
    else:
        for _ in range(draw(st.integers(0, 5))):
            c = req.candidates.add()
            for k, v in draw(st.dictionaries(names, values, max_size=3)).items():
                c.features[k].CopyFrom(v)
    return req


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=score_requests())
def test_fuzzed_score_requests_are_answered_or_refused_clearly(served, req):
    svc = served[3]
    try:
        r = svc.score(req)
    except (InvalidRequestError, VersionMismatchError) as exc:
        assert exc.message
        return
    n = (
        len(req.candidates)
        or len(next(iter(req.candidate_columns.values())).ids)
        or max(len(c.tokens) + len(c.numbers) for c in req.candidate_columns.values())
    )
    assert len(r.scores) == n and all(0 <= s <= 1 for s in r.scores) and r.model_version == svc.follower.model.version


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    k=st.integers(-5, 1100),
    num=st.integers(-5, 6000),
    user=values,
    exclude=st.lists(st.integers(-5, 500)),
    category=st.one_of(st.none(), values),
)
def test_fuzzed_recommend_requests(served, k, num, user, exclude, category):
    req = pb.RecommendRequest(k=k, num_candidates=num, exclude_item_ids=exclude)
    req.context["user_id"].CopyFrom(user)
    if category is not None:
        req.category.CopyFrom(category)
    try:
        r = served[3].recommend(req)
    except InvalidRequestError as exc:
        assert exc.message
        return
    assert len(r.items) <= k and not set(exclude) & {i.item_id for i in r.items}


# ------------------------------------------------------------------------------ CLI clients
def test_score_and_recommend_commands_against_a_grpcio_server(served, capsys):
    import json as _json

    from cluster.cli import main
    from serving.grpc_server import start_grpc_server

    server, port = start_grpc_server(served[3])
    try:
        target = f"127.0.0.1:{port}"
        assert (
            main(
                [
                    "score",
                    "--target",
                    target,
                    "--user",
                    "5",
                    "--items",
                    "2,4,7",
                    "--context",
                    "ts=1511658000",
                    "--application",
                    "",
                    "--json",
                ]
            )
            == 0
        )
        out = _json.loads(capsys.readouterr().out)
        assert out["model_version"] == 2 and len(out["scores"]) == 3 and out["items"] == [2, 4, 7]
        assert (
            main(["recommend", "--target", target, "--user", "5", "--k", "3", "--exclude", "2,4", "--application", ""])
            == 0
        )
        assert capsys.readouterr().out.startswith("version 2")
        assert (
            main(
                ["score", "--target", target, "--user", "5", "--items", "1", "--context", "ts=nan", "--application", ""]
            )
            == 2
        )
        assert "INVALID_ARGUMENT: context.ts: non-finite number" in capsys.readouterr().err
    finally:
        server.stop(0)


def test_serve_refuses_a_missing_run_dir(tmp_path, capsys):
    from cluster.cli import main

    assert main(["serve", "--run-dir", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
