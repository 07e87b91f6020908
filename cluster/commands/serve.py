"""``freshrec serve`` (a Ray Serve gRPC application that follows the version store), ``score`` and
``recommend`` (clients of it). See docs/serving.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path

from cluster.commands.argtypes import port as _port
from cluster.commands.argtypes import positive_int as _positive
from cluster.commands.argtypes import seconds as _seconds
from cluster.commands.options import add_config_options, config_from_args
from cluster.errors import UserError

# flag dest -> key in the config tree (cluster/config.py RunConfig; serve.* defined in serving/config.py)
SERVE_FLAG_KEYS = {
    "grpc_port": "serve.grpc_port",
    "host": "serve.host",
    "replicas": "serve.replicas",
    "pin_version": "serve.pin_version",
    "poll_interval": "serve.poll_interval_s",
    "catalogue": "serve.catalogue",
    "remote_tables": "serve.remote_tables",
    "table_shards": "serve.table_shards",
    "cache_rows": "serve.cache_rows",
    "address": "ray.address",
}


def _id(text: str) -> int | str:
    """A numeric id stays an int; anything else is a text id (hashed by the server like in training)."""
    try:
        return int(text)
    except ValueError:
        return text


def _ids(text: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of ids, e.g. 42,57,90")
    return [_id(t) for t in items]


def _context(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE, got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        try:
            return key, float(value)
        except ValueError:
            return key, value


def _names(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of table names, e.g. user")
    return names


def _host(text: str) -> str:
    """An IP address to bind (IPv4 or IPv6), e.g. 127.0.0.1 or 0.0.0.0."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IP address to bind (127.0.0.1, 0.0.0.0, ::1), got {text!r}"
        ) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the newest model version over gRPC (Ray Serve), following new versions",
        description="Run freshrec's Ray Serve application (freshrec.v1.Scorer: Score, Recommend, "
        "ModelInfo; gRPC server reflection on) in the foreground. Each replica loads the "
        "newest committed version, follows the store and swaps atomically. Ctrl-C or "
        "SIGTERM stops it.",
    )
    from serving.config import ServeConfig  # every default below is ServeConfig's (defined once, there)

    d = ServeConfig()
    where = p.add_mutually_exclusive_group()
    where.add_argument("--run-dir", metavar="DIR", help="a training run directory: the store at DIR/versions")
    where.add_argument(
        "--store", metavar="URL", help="the version store: a path, file://, s3://bucket/prefix (or serve.store_url)"
    )
    p.add_argument(
        "--grpc-port", type=_port, default=None, help=f"gRPC port of the Serve proxy (default {d.grpc_port})"
    )
    p.add_argument(
        "--host",
        default=None,
        type=_host,
        metavar="ADDR",
        help=f"the Serve proxy's HTTP bind address (default {d.host}: this machine only; the k8s manifests "
        "pass 0.0.0.0). Ray 2.60's gRPC proxy binds every interface whatever this says: close the "
        "port with a firewall where the machine is reachable",
    )
    p.add_argument("--replicas", type=_positive, default=None, help=f"replicas of the scorer (default {d.replicas})")
    p.add_argument(
        "--pin-version",
        type=_positive,
        default=None,
        metavar="V",
        help="serve exactly version V (rollback) instead of following the newest",
    )
    p.add_argument(
        "--poll-interval",
        type=_seconds,
        default=None,
        metavar="S",
        help=f"seconds between looks for a newer version (default {d.poll_interval_s})",
    )
    p.add_argument(
        "--catalogue",
        nargs="+",
        default=None,
        metavar="FILE",
        help="data files (the spec's format) giving each item's item-side columns (e.g. category_id) "
        "for Recommend and category filters",
    )
    p.add_argument(
        "--remote-tables",
        type=_names,
        default=None,
        metavar="T1,T2",
        help="tables too large for one replica (e.g. user): read through read-only shards restored "
        "from the version, with a hot-row cache in each replica (keep the item table local)",
    )
    p.add_argument(
        "--table-shards",
        type=_positive,
        default=None,
        metavar="N",
        help=f"read-only shards of the --remote-tables (default {d.table_shards})",
    )
    p.add_argument(
        "--cache-rows",
        type=_positive,
        default=None,
        metavar="R",
        help=f"hot-row cache per remote table in each replica, a power of two (default {d.cache_rows})",
    )
    p.add_argument("--address", default=None, help="join an existing Ray cluster (default: start a local Ray)")
    p.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="a local Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress; lower latency, "
        "see docs/benchmarks.md#serving)",
    )
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option of the store (repeatable)",
    )
    g = p.add_argument_group(
        "run configuration (defaults < --config < --set < the flags above; see `freshrec config show`)"
    )
    add_config_options(g, "--set serve.limits.max_k=100 --set serve.retrieve=500")
    p.set_defaults(func=_serve)

    s = sub.add_parser("score", help="score items for a user on a running server (gRPC client)")
    _client_args(s)
    s.add_argument("--items", type=_ids, required=True, metavar="I1,I2,...", help="candidate item ids")
    s.set_defaults(func=_score)

    r = sub.add_parser("recommend", help="top-k items for a user from a running server (gRPC client)")
    _client_args(r)
    r.add_argument("--k", type=_positive, default=10, help="how many items (default 10)")
    r.add_argument("--exclude", type=_ids, default=[], metavar="I1,I2,...", help="items never to return")
    r.add_argument("--category", type=_id, default=None, help="only items of this category")
    r.set_defaults(func=_recommend)


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", default="127.0.0.1:9000", metavar="HOST:PORT", help="the server (default 127.0.0.1:9000)"
    )
    p.add_argument("--user", type=_id, required=True, help="the user id")
    p.add_argument(
        "--context",
        type=_context,
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="another context column, e.g. ts=1511658000 (repeatable)",
    )
    p.add_argument("--application", default="freshrec", help="the Ray Serve application name (default freshrec)")
    p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds per call (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")


def serve_config_from_args(args: argparse.Namespace):
    """The effective run config of ``freshrec serve`` (defaults < --config < --set < flags): UserError on any bad
    value, naming the key. ``--run-dir DIR`` sets ``serve.store_url`` (DIR/versions) and ``serve.metrics_path``."""
    from cluster.commands.snapshots import _option

    flags = {key: getattr(args, dest, None) for dest, key in SERVE_FLAG_KEYS.items()}
    if flags["serve.catalogue"] is not None:
        flags["serve.catalogue"] = list(flags["serve.catalogue"])
    if flags["serve.remote_tables"] is not None:
        flags["serve.remote_tables"] = list(flags["serve.remote_tables"])
    if args.run_dir:
        flags["serve.store_url"] = str(Path(args.run_dir) / "versions")
        flags["serve.metrics_path"] = str(Path(args.run_dir) / "metrics.jsonl")
    elif args.store:
        flags["serve.store_url"] = args.store
    cfg = config_from_args(args, flags)
    if args.storage_option:  # merged over serve.storage_options (a key may hold dots: not a tree path)
        options = {**(cfg.serve.storage_options or {}), **dict(_option(o) for o in args.storage_option)}
        cfg = dataclasses.replace(cfg, serve=cfg.serve.replace(storage_options=options))
    if cfg.serve.store_url is None:
        raise UserError("serve: no version store: pass --store URL or --run-dir DIR (or set serve.store_url)")
    return cfg


def _serve(args: argparse.Namespace) -> int:
    from cluster.ray_runtime import ensure_ray

    run = serve_config_from_args(args)
    cfg = run.serve
    store = cfg.store_url
    if args.run_dir and not Path(args.run_dir).is_dir():
        raise UserError(f"--run-dir {args.run_dir} is not a directory")
    missing = [c for c in cfg.catalogue if not Path(c).exists() and "://" not in c]
    if missing:
        raise UserError(f"catalogue file(s) not found (--catalogue / serve.catalogue): {missing}")
    from serving.app import proxy_env, start_serving, stop_serving, worker_env
    from serving.client import ScoringClient

    if run.ray.address is None:  # the replicas and the proxy import this checkout's serving code and stubs
        os.environ["PYTHONPATH"] = worker_env()["env_vars"]["PYTHONPATH"]
        os.environ.update(proxy_env(cfg.limits.max_request_bytes))  # the proxy refuses larger messages unparsed
        if args.throughput_optimized:
            os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    elif args.throughput_optimized:
        raise UserError(
            "--throughput-optimized sets up a local Ray; on a cluster set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 "
            "in its environment instead"
        )
    ensure_ray(run.ray)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        port = start_serving(cfg, cfg.grpc_port, cfg.replicas, host=cfg.host)
        target = f"127.0.0.1:{port}"
        with ScoringClient(target) as client:
            waited = False
            while not stop.is_set():
                try:
                    info = client.wait_ready(timeout_s=5.0)
                    break
                except TimeoutError as exc:
                    if not waited:
                        print(f"waiting for a first committed version in {store} ({exc})", file=sys.stderr)
                        waited = True
            else:
                return 130
        print(f"serving freshrec.v1 on {target} (version {info.model_version})", flush=True)
        stop.wait()
        print("stopping", file=sys.stderr)
        return 0
    finally:
        try:
            stop_serving()
        finally:
            import ray

            ray.shutdown()


def _call(args: argparse.Namespace, fn):
    import grpc

    from serving.client import ScoringClient

    try:
        with ScoringClient(args.target, args.application or None, args.timeout) as c:
            return fn(c)
    except grpc.RpcError as exc:
        raise UserError(f"{args.target}: {exc.code().name}: {exc.details()}") from None


def _score(args: argparse.Namespace) -> int:
    r = _call(args, lambda c: c.score(args.user, args.items, dict(args.context)))
    if args.json:
        print(
            json.dumps(
                {
                    "model_version": r.model_version,
                    "items": args.items,
                    "scores": list(r.scores),
                    "defaulted_columns": list(r.defaulted_columns),
                    "unknown_ids": r.unknown_ids,
                }
            )
        )
        return 0
    print(f"version {r.model_version}")
    for item, s in zip(args.items, r.scores):
        print(f"  {item}  {s:.6f}")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    r = _call(args, lambda c: c.recommend(args.user, args.k, dict(args.context), args.exclude, args.category))
    items = [{"item_id": i.item_id, "score": i.score, "retrieval_score": i.retrieval_score} for i in r.items]
    if args.json:
        print(json.dumps({"model_version": r.model_version, "items": items, "catalogue_items": r.catalogue_items}))
        return 0
    print(f"version {r.model_version} ({r.catalogue_items} items in the index)")
    for i in items:
        print(f"  {i['item_id']}  {i['score']:.6f}")
    return 0
