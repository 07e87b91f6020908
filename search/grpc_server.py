"""A plain grpcio server hosting a :class:`SearchService` (no Ray): the benchmark's baseline.

server, port = start_search_grpc_server(SearchService(cfg).start(), "127.0.0.1:0")
"""

from __future__ import annotations

from concurrent import futures

import grpc

from search.service import SearchService
from search.wire import pb, pb_grpc
from serving.errors import ServingError


class SearchServicer(pb_grpc.SearchServicer):
    def __init__(self, service: SearchService) -> None:
        self.service = service

    def Search(self, request, context):
        try:
            return self.service.search(request)
        except ServingError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.message)


def start_search_grpc_server(
    service: SearchService, address: str = "127.0.0.1:0", threads: int = 4, reflection: bool = True
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    pb_grpc.add_SearchServicer_to_server(SearchServicer(service), server)
    if reflection:
        from grpc_reflection.v1alpha import reflection as refl

        refl.enable_server_reflection((pb.DESCRIPTOR.services_by_name["Search"].full_name, refl.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port
