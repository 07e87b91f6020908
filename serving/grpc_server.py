"""A plain grpcio server hosting a :class:`ScoringService` (no Ray): the benchmark's baseline and a
Ray-free way to serve one process.

    server, port = start_grpc_server(ScoringService(cfg).start(), "127.0.0.1:0")
    ...
    server.stop(grace=1)
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc

from serving.errors import ServingError
from serving.service import ScoringService
from serving.wire import pb, pb_grpc

log = logging.getLogger(__name__)


def call(fn, request, context):
    """Run ``fn(request)``; a ServingError becomes its status with its message (the server goes on)."""
    try:
        return fn(request)
    except ServingError as exc:
        context.abort(getattr(grpc.StatusCode, exc.code), exc.message)


class ScorerServicer(pb_grpc.ScorerServicer):
    def __init__(self, service: ScoringService) -> None:
        self.service = service

    def Score(self, request, context):  # noqa: N802 (gRPC method names)
        return call(self.service.score, request, context)

    def Recommend(self, request, context):  # noqa: N802
        return call(self.service.recommend, request, context)

    def ModelInfo(self, request, context):  # noqa: N802
        return call(self.service.model_info, request, context)


def start_grpc_server(service: ScoringService, address: str = "127.0.0.1:0", threads: int = 4,
                      reflection: bool = True) -> tuple[grpc.Server, int]:
    """Start a grpcio server on ``address`` (port 0: a free one); returns (server, port)."""
    # the transport accepts up to 64 MiB so that the service's own size check answers INVALID_ARGUMENT
    # (with its limit in the message) instead of gRPC's bare RESOURCE_EXHAUSTED above 4 MiB
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_ScorerServicer_to_server(ScorerServicer(service), server)
    if reflection:
        from grpc_reflection.v1alpha import reflection as refl

        names = (pb.DESCRIPTOR.services_by_name["Scorer"].full_name, refl.SERVICE_NAME)
        refl.enable_server_reflection(names, server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port
