"""Least exposure by default (issue 20, item 8): loopback unless told, and the transport refuses what the
service would refuse before parsing it."""

from __future__ import annotations

import grpc
import pytest

from cluster.cli import build_parser, main
from serving.app import GRPC_SIZE_ENV, proxy_env
from serving.config import Limits


@pytest.mark.parametrize("command", [["serve", "--store", "s"], ["search-serve", "--store", "s", "--catalogue", "p"]])
def test_serve_binds_loopback_unless_host_says_otherwise(command):
    from cluster.commands.serve import serve_config_from_args

    parser = build_parser()

    def host(argv):  # serve: the effective serve.host (flag > --set > YAML > ServeConfig's default)
        args = parser.parse_args(argv)
        return serve_config_from_args(args).serve.host if argv[0] == "serve" else args.host

    assert host(command) == "127.0.0.1"
    assert host([*command, "--host", "0.0.0.0"]) == "0.0.0.0"
    assert host([*command, "--host", "[::1]"]) == "::1"


def test_a_host_that_is_not_an_address_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--store", "s", "--host", "example.com"])
    assert exc.value.code == 2 and "expected an IP address" in capsys.readouterr().err


def test_the_proxy_limit_is_the_service_limit():
    assert proxy_env(Limits().max_request_bytes) == {GRPC_SIZE_ENV: str(1 << 20)}


def test_the_plain_grpc_host_refuses_an_oversized_message_before_parsing_and_reports_health(tmp_path):
    """The grpcio host: a message above the limit never reaches the servicer (RESOURCE_EXHAUSTED); health is
    NOT_SERVING while no version is loaded (an empty store), with the reason in ModelInfo."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from serving.config import ServeConfig
    from serving.grpc_server import start_grpc_server
    from serving.service import ScoringService
    from serving.wire import pb, pb_grpc

    limits = Limits(max_request_bytes=4096)
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"), limits=limits)).start()
    seen = []
    score = svc.score
    svc.score = lambda req: (seen.append(req), score(req))[1]
    server, port = start_grpc_server(svc, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = pb_grpc.ScorerStub(ch)
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "has not loaded a version yet" in exc.value.details()
            big = pb.ScoreRequest()
            big.candidate_columns["item_id"].ids.extend(range(10**6, 10**6 + 2000))  # > 4096 bytes
            assert big.ByteSize() > limits.max_request_bytes
            with pytest.raises(grpc.RpcError) as exc:
                stub.Score(big, timeout=10)
            assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and seen == []
    finally:
        server.stop(grace=None)
        svc.stop()


def test_the_k8s_serve_config_registers_the_same_health_servicer_as_the_app():
    from cluster.serve_config import HEALTH_SERVICER_FUNCTION as K8S
    from cluster.serve_config import serve_deploy_config
    from serving.app import HEALTH_SERVICER_FUNCTION as APP

    assert K8S == APP and APP in serve_deploy_config("/data/versions")["grpc_options"]["grpc_servicer_functions"]
