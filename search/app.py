"""The Ray Serve application of search: replicas of :class:`SearchService` behind Ray Serve's gRPC
ingress (reflection on), as its own Serve application ``freshrec-search`` beside the recommendation
application ``freshrec`` (the proxy picks one by the ``application`` metadata)::

    port = start_search_serving(SearchServeConfig(store_url="runs/s1/versions", catalogue="products.tsv"))
    # grpcurl -plaintext -H 'application: freshrec-search' -d '{"query": "king poster bed", "k": 5}' \\
    #     127.0.0.1:PORT freshrec.v1.Search/Search
"""

from __future__ import annotations

import logging
import time

import grpc
from ray import serve

from search.service import SearchServeConfig, SearchService
from search.wire import APP_NAME, pb
from serving.app import health_check, health_response
from serving.errors import ServingError


@serve.deployment(name="Search", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, health_check_period_s=2.0)
class SearchDeployment:
    """One replica: a SearchService (read-only, concurrent); its gRPC method computes without awaiting
    (1-3 ms of CPU). ``check_health`` fails when no ranker version has loaded within the grace period."""

    def __init__(self, cfg: SearchServeConfig) -> None:
        import torch

        logging.basicConfig(level=logging.INFO)
        self._started = time.monotonic()
        torch.set_num_threads(1)  # a request is ~200 rows: intra-op threads only contend (7x slower on 2 busy cores)
        self.service = SearchService(cfg).start()

    def reconfigure(self, user_config: dict) -> None:
        self.service.reconfigure(user_config)

    async def Search(self, request, grpc_context):
        try:
            return self.service.search(request)
        except ServingError as exc:  # INVALID_ARGUMENT & co: answered, the replica goes on
            grpc_context.set_code(getattr(grpc.StatusCode, exc.code))
            grpc_context.set_details(exc.message)
            return pb.SearchResponse()

    async def Check(self, request, grpc_context):
        return health_response(self.service.health)

    def check_health(self) -> None:
        if not self.service.alive:
            raise RuntimeError("the search follower threads are not running")
        health_check(self.service.health, self._started)


def build_search_app(cfg: SearchServeConfig, replicas: int = 1):
    return SearchDeployment.options(num_replicas=replicas, user_config={"pin_version": cfg.pin_version}).bind(cfg)


def start_search_serving(
    cfg: SearchServeConfig, grpc_port: int | None = None, replicas: int = 1, host: str = "127.0.0.1"
) -> int:
    """Deploy on the connected Ray (``ray.init`` first); returns the gRPC port. The proxy is started with
    the Scorer's and Search's servicers, so ``freshrec serve``'s application can share it."""
    from serving.app import free_port, start_proxy
    from serving.config import Limits

    grpc_port = grpc_port or free_port()
    start_proxy(grpc_port, Limits().max_request_bytes, host)  # the proxy is shared with the Scorer: its limit
    serve.run(build_search_app(cfg, replicas), name=APP_NAME, route_prefix="/search", blocking=False)
    return grpc_port


def stop_search_serving() -> None:
    serve.delete(APP_NAME)
    serve.shutdown()
