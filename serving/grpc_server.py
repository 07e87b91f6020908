"""A plain grpcio server hosting a :class:`ScoringService` (no Ray): the benchmark's baseline and a
Ray-free way to serve one process.

    server, port = start_grpc_server(ScoringService(cfg).start(), "127.0.0.1:0")
    # grpc.health.v1.Health/Check: SERVING once a version is loaded, NOT_SERVING before
    ...
    server.stop(grace=1)
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.errors import ServingError
from serving.service import ScoringService
from serving.wire import pb, pb_grpc

log = logging.getLogger(__name__)
SCORER = pb.DESCRIPTOR.services_by_name["Scorer"].full_name


def call(fn, request, context):
    """Run ``fn(request)``; a ServingError becomes its status with its message (the server goes on)."""
    try:
        return fn(request)
    except ServingError as exc:
        context.abort(getattr(grpc.StatusCode, exc.code), exc.message)


class ScorerServicer(pb_grpc.ScorerServicer):
    def __init__(self, service: ScoringService) -> None:
        self.service = service

    def Score(self, request, context):
        return call(self.service.score, request, context)

    def Recommend(self, request, context):
        return call(self.service.recommend, request, context)

    def ModelInfo(self, request, context):
        return call(self.service.model_info, request, context)


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health/Check``: SERVING once the service has loaded a version, NOT_SERVING before
    (and when its follower thread died). The service names "" (the server) and ``freshrec.v1.Scorer``."""

    def __init__(self, service: ScoringService) -> None:
        self.service = service

    def Check(self, request, context):
        if request.service not in ("", SCORER):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r} (ask '' or {SCORER!r})")
        ok, why = self.service.health()
        if not ok:
            context.set_trailing_metadata((("freshrec-not-ready", why[:1000]),))
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


def start_grpc_server(
    service: ScoringService, address: str = "127.0.0.1:0", threads: int = 4, reflection: bool = True
) -> tuple[grpc.Server, int]:
    """Start a grpcio server on ``address`` (port 0: a free one); returns (server, port)."""
    # least exposure: the transport refuses a message above the service's limit before parsing it
    # (RESOURCE_EXHAUSTED); the service's own check stays for the Ray Serve path and in-process calls
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        options=[("grpc.max_receive_message_length", service.cfg.limits.max_request_bytes)],
    )
    pb_grpc.add_ScorerServicer_to_server(ScorerServicer(service), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(service), server)
    if reflection:
        from grpc_reflection.v1alpha import reflection as refl

        names = (SCORER, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, refl.SERVICE_NAME)
        refl.enable_server_reflection(names, server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port
