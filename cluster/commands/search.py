"""``freshrec search-train`` (replay graded judgments into ranker versions), ``search-serve`` (the
freshrec.v1.Search Ray Serve application) and ``search`` (a client). See docs/search.md."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from cluster.commands.argtypes import port as _port
from cluster.commands.argtypes import positive_int as _positive
from cluster.commands.serve import _host
from cluster.errors import UserError

MAX_QUERY_CHARS = 512
MAX_K = 100


def _query(text: str) -> str:
    from search.tokenizer import Tokenizer

    if len(text) > MAX_QUERY_CHARS:
        raise argparse.ArgumentTypeError(f"a query is at most {MAX_QUERY_CHARS} characters, got {len(text)}")
    if not Tokenizer().tokens(text):
        raise argparse.ArgumentTypeError(f"the query {text!r} has no word tokens (letters or digits)")
    return text


def _k(text: str) -> int:
    v = _positive(text)
    if v > MAX_K:
        raise argparse.ArgumentTypeError(f"k is at most {MAX_K}, got {v}")
    return v


def _candidates(text: str) -> int:
    v = _positive(text)
    if v > 1000:
        raise argparse.ArgumentTypeError(f"num-candidates is at most 1000, got {v}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "search-train",
        help="replay graded search judgments into ranker versions (progressive NDCG@10)",
        description="Replay the judgments of a WANDS-layout directory in seeded batches of queries: "
        "each batch is ranked before the ranker trains on it (progressive NDCG@10), then "
        "trained on and cut as a model version in RUN_DIR/versions. Run again on the "
        "same RUN_DIR, it resumes from the newest version and trains only new queries.",
    )
    t.add_argument("--data", required=True, metavar="DIR", help="directory with eval40_{products,queries,labels}.tsv")
    t.add_argument("--run-dir", required=True, metavar="DIR", help="where versions/ and metrics.jsonl are written")
    t.add_argument("--batch-queries", type=_positive, default=4, help="queries per replayed batch (default 4)")
    t.add_argument("--epochs", type=_positive, default=None, help="passes over each batch (default: RankerConfig's)")
    t.add_argument("--seed", type=int, default=0, help="order of the replay and model init (default 0)")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.set_defaults(func=_train)

    s = sub.add_parser(
        "search-serve",
        help="serve freshrec.v1.Search over gRPC (Ray Serve), following new versions",
        description="Run the search application (Tantivy retrieval + the newest ranker version, "
        "gRPC reflection on) in the foreground; Ctrl-C or SIGTERM stops it.",
    )
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", metavar="DIR", help="a search-train run directory: the store at DIR/versions")
    where.add_argument("--store", metavar="URL", help="the version store")
    s.add_argument("--catalogue", required=True, metavar="FILE", help="the products TSV (re-indexed when it changes)")
    s.add_argument("--grpc-port", type=_port, default=9000, help="gRPC port of the Serve proxy (default 9000)")
    s.add_argument(
        "--host",
        default="127.0.0.1",
        type=_host,
        metavar="ADDR",
        help="the Serve proxy's HTTP bind address (default 127.0.0.1: this machine only; the k8s manifests "
        "pass 0.0.0.0). Ray 2.60's gRPC proxy binds every interface whatever this says: close the "
        "port with a firewall where the machine is reachable",
    )
    s.add_argument("--replicas", type=_positive, default=1, help="replicas (default 1)")
    s.add_argument("--pin-version", type=_positive, default=None, metavar="V", help="serve exactly version V")
    s.set_defaults(func=_serve)

    c = sub.add_parser("search", help="search products on a running search server (gRPC client)")
    c.add_argument(
        "--target", default="127.0.0.1:9000", metavar="HOST:PORT", help="the server (default 127.0.0.1:9000)"
    )
    c.add_argument("--query", type=_query, required=True, help="the query text")
    c.add_argument("--k", type=_k, default=10, help=f"how many products, 1..{MAX_K} (default 10)")
    c.add_argument("--user", type=int, default=None, help="the user id (accepted; not used by the current ranker)")
    c.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="CLASS",
        help="only products of this class (repeatable: any of them)",
    )
    c.add_argument(
        "--category",
        action="append",
        default=[],
        metavar="PATH",
        help="only products under this category path, e.g. 'Furniture / Bedroom Furniture' (repeatable)",
    )
    c.add_argument(
        "--num-candidates", type=_candidates, default=0, help="retrieved before ranking (default: the server's)"
    )
    c.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=_search)


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from search.data import SearchDataError, read_wands
    from search.ranker import RankerConfig, SearchCorpus
    from search.replay import replay

    run_dir = Path(args.run_dir)
    try:
        catalogue, judgments = read_wands(args.data)
    except SearchDataError as exc:
        raise UserError(str(exc)) from None
    cfg = RankerConfig()
    cfg = dataclasses.replace(
        cfg, epochs=args.epochs or cfg.epochs, train=dataclasses.replace(cfg.train, seed=args.seed)
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus = SearchCorpus(catalogue)

    def progress(rec: dict) -> None:
        if not args.json:
            print(
                f"{rec['file']}: {len(rec['queries'])} queries, NDCG@10 lexical {rec['ndcg10_lexical']:.4f} "
                f"progressive {rec['ndcg10_progressive']:.4f} -> version {rec['version']}",
                flush=True,
            )

    try:
        result = replay(
            corpus,
            judgments,
            cfg,
            str(run_dir / "versions"),
            args.batch_queries,
            args.seed,
            metrics_path=run_dir / "metrics.jsonl",
            on_batch=progress,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    elif not result.batches:
        print(f"nothing new: every query of {args.data} is already trained into {run_dir / 'versions'}")
    else:
        print(
            f"progressive NDCG@10 {summary['progressive_ndcg10']:.4f} (lexical {summary['lexical_ndcg10']:.4f}) "
            f"over {len({q for b in result.batches for q in b['queries']})} new queries; "
            f"versions {result.versions[0]}..{result.versions[-1]}"
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from cluster.config import RayConfig
    from cluster.ray_runtime import ensure_ray

    store = args.store or str(Path(args.run_dir) / "versions")
    if not Path(args.catalogue).is_file():
        raise UserError(f"--catalogue {args.catalogue}: no such file")
    if args.run_dir and not Path(args.run_dir).is_dir():
        raise UserError(f"--run-dir {args.run_dir} is not a directory")
    from search.app import start_search_serving, stop_search_serving
    from search.client import SearchClient
    from search.service import SearchServeConfig
    from serving.app import proxy_env, worker_env
    from serving.config import Limits

    cfg = SearchServeConfig(
        store_url=store, catalogue=str(Path(args.catalogue).resolve()), pin_version=args.pin_version
    )
    os.environ["PYTHONPATH"] = worker_env()["env_vars"]["PYTHONPATH"]
    os.environ.update(proxy_env(Limits().max_request_bytes))
    ensure_ray(RayConfig())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        port = start_search_serving(cfg, args.grpc_port, args.replicas, host=args.host)
        target = f"127.0.0.1:{port}"
        with SearchClient(target) as client:
            r = client.wait_ready(timeout_s=120.0)
        print(f"serving freshrec.v1.Search on {target} (version {r.model_version})", flush=True)
        stop.wait()
        print("stopping", file=sys.stderr)
        return 0
    finally:
        try:
            stop_search_serving()
        finally:
            import ray

            ray.shutdown()


def _search(args: argparse.Namespace) -> int:
    import grpc

    from search.client import SearchClient, format_response

    try:
        with SearchClient(args.target, args.timeout) as c:
            r = c.search(
                args.query,
                args.k,
                user=args.user,
                classes=args.classes,
                categories=args.category,
                num_candidates=args.num_candidates,
            )
    except grpc.RpcError as exc:
        raise UserError(f"{args.target}: {exc.code().name}: {exc.details()}") from None
    if args.json:
        print(
            json.dumps(
                {
                    "model_version": r.model_version,
                    "catalogue_digest": r.catalogue_digest,
                    "candidates": r.candidates,
                    "hits": [
                        {
                            "product_id": h.product_id,
                            "score": h.score,
                            "lexical_score": h.lexical_score,
                            "product_name": h.product_name,
                        }
                        for h in r.hits
                    ],
                }
            )
        )
    else:
        print(format_response(r))
    return 0
