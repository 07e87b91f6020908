"""The generated gRPC stubs of ``protos/freshrec/v1/search.proto`` (``make protos`` writes them)."""

from __future__ import annotations

SERVICE = "freshrec.v1.Search"
SERVICER_FUNCTION = "protos.freshrec.v1.search_pb2_grpc.add_SearchServicer_to_server"
APP_NAME = "freshrec-search"

try:
    from protos.freshrec.v1 import search_pb2 as pb
    from protos.freshrec.v1 import search_pb2_grpc as pb_grpc
except ImportError as exc:  # pragma: no cover - an install without generated stubs
    raise ImportError(
        "the gRPC stubs of protos/freshrec/v1/search.proto are not generated: run `make protos` "
        "(python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. "
        "protos/freshrec/v1/*.proto) in the repository"
    ) from exc

__all__ = ["APP_NAME", "SERVICE", "SERVICER_FUNCTION", "pb", "pb_grpc"]
