"""A plain grpcio server hosting a :class:`ScoringService` (no Ray): the benchmark's baseline and a
Ray-free way to serve one process.

    server, port = start_grpc_server(ScoringService(cfg).start(), "127.0.0.1:0")
    # grpc.health.v1.Health/Check: SERVING once a version is loaded, NOT_SERVING before
    ...
    server.stop(grace=1)

Run as its own process (what ``freshrec bench serve`` starts as its grpcio baseline)::

    proc, target = spawn_grpc_server(store_url, catalogue=(csv,), work=tmpdir)   # "127.0.0.1:PORT"
    # or: python -m serving.grpc_server --store URL --catalogue CSV --port-file P
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

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


# ----------------------------------------------------------------------------------- a process of its own
def write_port_file(path: str | Path, port: int) -> None:
    """Write ``port`` to ``path`` atomically (a temporary name, then a rename): a reader never sees the file
    empty or half written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(str(int(port)))
    os.replace(tmp, path)


def read_port_file(path: str | Path) -> int | None:
    """The port in ``path``, or None while it is absent (or, written by another writer, not yet a number)."""
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def wait_port_file(path: str | Path, proc: subprocess.Popen, timeout_s: float = 120.0) -> int:
    """Wait for the port a started server writes to ``path``; a clear error if the process ended first or
    the time ran out (the process is then killed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        port = read_port_file(path)
        if port is not None:
            return port
        if proc.poll() is not None:
            raise RuntimeError(
                f"the grpcio server process ended (exit {proc.returncode}) before it wrote its port to {path}"
            )
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    raise RuntimeError(f"the grpcio server process wrote no port to {path} within {timeout_s:.0f} s (killed)")


def spawn_grpc_server(
    store_url: str,
    catalogue: tuple[str, ...] = (),
    work: str | Path = ".",
    threads: int = 4,
    poll_interval_s: float = 0.1,
    env: dict | None = None,
    timeout_s: float = 120.0,
    stdout=subprocess.DEVNULL,
) -> tuple[subprocess.Popen, str]:
    """Start ``python -m serving.grpc_server`` as a child process and wait for its port: (process, target).
    The caller stops it (``proc.kill()``)."""
    port_file = Path(work) / f"grpcio-{time.monotonic_ns()}.port"
    cmd = [sys.executable, "-m", "serving.grpc_server", "--store", store_url, "--port-file", str(port_file)]
    cmd += ["--threads", str(threads), "--poll-interval", str(poll_interval_s)]
    for c in catalogue:
        cmd += ["--catalogue", str(c)]
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.STDOUT)
    port = wait_port_file(port_file, proc, timeout_s)
    return proc, f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> None:
    from serving.config import ServeConfig

    p = argparse.ArgumentParser(prog="python -m serving.grpc_server", description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="the version store URL")
    p.add_argument("--catalogue", action="append", default=[], help="a catalogue data file (repeatable)")
    p.add_argument("--address", default="127.0.0.1:0", help="bind address (default 127.0.0.1:0: a free port)")
    p.add_argument("--port-file", default=None, help="write the bound port here (atomically) once serving")
    p.add_argument("--threads", type=int, default=4, help="server threads (default 4)")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=ServeConfig.poll_interval_s,
        help=f"store poll interval, seconds (default {ServeConfig.poll_interval_s}: ServeConfig's)",
    )
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a first version (default 60)")
    a = p.parse_args(argv)
    cfg = ServeConfig(store_url=a.store, catalogue=tuple(a.catalogue), poll_interval_s=a.poll_interval)
    svc = ScoringService(cfg).start(wait_s=a.wait)
    server, port = start_grpc_server(svc, a.address, threads=a.threads)
    if a.port_file:
        write_port_file(a.port_file, port)
    print(f"serving freshrec.v1.Scorer on port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
