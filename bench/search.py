"""``freshrec bench search``: search quality (NDCG@10 on held-out queries, progressive NDCG@10) and
Search latency over gRPC.

* Quality, deterministic: 5 folds by query (no query both trained and tested); per fold a fresh ranker
  (the training core) is trained on the other folds' judgments and the held-out queries are ranked over
  the whole catalogue by the lexical baseline (Tantivy BM25 alone) and by lexical retrieval + the
  ranker; NDCG@10 with gains Exact 2 / Partial 1 / Irrelevant and unjudged 0.
* Progressive NDCG@10: the judgments replayed in seeded batches of queries, each batch ranked before
  the ranker trains on it, a model version committed after each batch (``search.replay``).
* Latency (preliminary on a shared machine; the load average is recorded): Search with k=10 at a fixed
  offered load (open loop, :mod:`bench.loadgen`) through Ray Serve's gRPC proxy, against the same
  service hosted by a plain grpcio server in another process (rounds alternating), and the bare
  in-process ``SearchService.search`` call (the floor).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import median_of

DESCRIPTION = "search NDCG@10 (held-out folds, lexical vs ranker), progressive NDCG@10, Search p50/p99 over gRPC"
REPO = Path(__file__).resolve().parents[1]
WANDS = REPO.parent / "shared" / "data" / "wands_eval40"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(WANDS), help="a WANDS-layout directory (default: the shared eval40)")
    parser.add_argument("--folds", type=int, default=5, help="folds by query (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="folds, replay order and model init (default 0)")
    parser.add_argument("--batch-queries", type=int, default=4, help="queries per replayed batch (default 4)")
    parser.add_argument("--qps", type=float, default=50.0, help="offered load, requests/s (default 50)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per load phase (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds grpcio <-> Ray Serve (default 2)")
    parser.add_argument("--k", type=int, default=10, help="k of each Search (default 10)")
    parser.add_argument("--skip", default="", help="comma list of phases to skip: folds,replay,latency,grpcio")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _grpcio_main(store: str, catalogue: str, port_file: str) -> None:
    """Entry of the baseline process: a plain grpcio server with the same SearchService."""
    import torch

    from search.grpc_server import start_search_grpc_server
    from search.service import SearchServeConfig, SearchService

    torch.set_num_threads(1)
    server, port = start_search_grpc_server(SearchService(SearchServeConfig(store, catalogue)).start(), "127.0.0.1:0")
    Path(port_file).write_text(str(port))
    server.wait_for_termination()


def _start_grpcio(store: str, catalogue: str, work: Path) -> tuple[subprocess.Popen, str]:
    port_file = work / "grpcio.port"
    code = f"import bench.search as b; b._grpcio_main({store!r}, {catalogue!r}, {str(port_file)!r})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the grpcio baseline server did not start")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text()}"


def _load(target: str, reqs, qps: float, seconds: float, app: bool) -> dict:
    from bench.loadgen import run_load
    from search.wire import APP_NAME, pb_grpc

    def call(stub, i, timeout, metadata):
        return stub.Search(reqs[i % len(reqs)], timeout=timeout, metadata=metadata)

    md = (("application", APP_NAME),) if app else ()
    return run_load(call, target, qps, seconds, metadata=md, stub=pb_grpc.SearchStub).summary()


def run(args: argparse.Namespace) -> dict:
    from common.errors import UserError
    from search.data import SearchDataError, read_wands
    from search.ranker import RankerConfig, SearchCorpus, cross_validate
    from search.replay import replay

    skip = {s for s in args.skip.split(",") if s}
    try:
        catalogue, judgments = read_wands(args.data)
    except SearchDataError as exc:
        raise UserError(f"{exc} (see ../shared/data/README.md: wands_eval40)") from None
    import torch

    torch.set_num_threads(1)
    cfg = RankerConfig()
    corpus = SearchCorpus(catalogue)
    result: dict = {
        "data": f"{args.data}: {len(catalogue)} products, {len(judgments.query_ids)} queries, "
        f"{len(judgments)} judged pairs",
        "ranker": {"sparse_features": list(corpus.spec.sparse_features), **cfg.run_config()},
        "loadavg_start": list(os.getloadavg()),
    }
    if "folds" not in skip:
        t0 = time.perf_counter()
        cv = cross_validate(corpus, judgments, cfg, folds=args.folds, seed=args.seed)
        result.update({k: v for k, v in cv.items() if k != "folds"})
        result["per_fold"] = cv["folds"]
        result["folds_seconds"] = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-search-"))
    store = str(work / "versions")
    try:
        if "replay" not in skip or "latency" not in skip:
            rep = replay(corpus, judgments, cfg, store, batch_queries=args.batch_queries, seed=args.seed)
            s = rep.summary()
            result["progressive"] = {k: v for k, v in s.items() if k not in ("batches",)}
            result["progressive"]["per_batch"] = [
                {k: b[k] for k in ("batch", "ndcg10_lexical", "ndcg10_progressive", "version")} for b in s["batches"]
            ]
            result["progressive_ndcg10"] = s["progressive_ndcg10"]
        if "latency" not in skip:
            result.update(_latency(args, store, str(Path(args.data) / "eval40_products.tsv"), judgments, work, skip))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["loadavg_end"] = list(os.getloadavg())
    return result


def _latency(args, store: str, catalogue: str, judgments, work: Path, skip: set) -> dict:
    import ray

    from cluster.config import RayConfig
    from cluster.ray_runtime import ensure_ray
    from search.app import start_search_serving, stop_search_serving
    from search.client import SearchClient
    from search.service import SearchServeConfig, SearchService
    from serving.app import worker_env

    texts = [judgments.queries[q] for q in judgments.query_ids.tolist()]
    reqs = [SearchClient.request(t, args.k) for t in texts]
    out: dict = {"offered_qps": args.qps, "k": args.k}
    # the floor: the bare in-process call (validation, retrieval, features, the core's forward)
    svc = SearchService(SearchServeConfig(store, catalogue)).start()
    for r in reqs:
        svc.search(r)
    lat = []
    for i in range(400):
        t = time.perf_counter()
        svc.search(reqs[i % len(reqs)])
        lat.append((time.perf_counter() - t) * 1e3)
    svc.stop()
    lat.sort()
    out["inprocess_p50_ms"], out["inprocess_p99_ms"] = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    os.environ["PYTHONPATH"] = worker_env()["env_vars"]["PYTHONPATH"]
    ensure_ray(RayConfig(num_cpus=2))
    grpcio_proc = None
    try:
        port = start_search_serving(SearchServeConfig(store, catalogue))
        target = f"127.0.0.1:{port}"
        SearchClient(target).wait_ready(120)
        if "grpcio" not in skip:
            grpcio_proc, grpcio_target = _start_grpcio(store, catalogue, work)
            SearchClient(grpcio_target, application="").wait_ready(120)
        serve_rounds, grpcio_rounds = [], []
        for _ in range(args.rounds):
            if grpcio_proc is not None:
                grpcio_rounds.append(_load(grpcio_target, reqs, args.qps, args.seconds, False))
            serve_rounds.append(_load(target, reqs, args.qps, args.seconds, True))
        out["search_serve"] = median_of(serve_rounds)
        out["p50_ms"], out["p99_ms"] = out["search_serve"]["p50_ms"], out["search_serve"]["p99_ms"]
        if grpcio_rounds:
            out["search_grpcio"] = median_of(grpcio_rounds)
            out["p99_serve_over_grpcio"] = out["p99_ms"] / out["search_grpcio"]["p99_ms"]
    finally:
        if grpcio_proc is not None:
            grpcio_proc.kill()
            grpcio_proc.wait()
        try:
            stop_search_serving()
        finally:
            ray.shutdown()
    return out
