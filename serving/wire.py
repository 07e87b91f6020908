"""The generated gRPC stubs of ``protos/freshrec/v1/scoring.proto`` (``make protos`` writes them)."""

from __future__ import annotations

SERVICE = "freshrec.v1.Scorer"
SERVICER_FUNCTION = "protos.freshrec.v1.scoring_pb2_grpc.add_ScorerServicer_to_server"

try:
    from protos.freshrec.v1 import scoring_pb2 as pb
    from protos.freshrec.v1 import scoring_pb2_grpc as pb_grpc
except ImportError as exc:  # pragma: no cover - an install without generated stubs
    raise ImportError(
        "the gRPC stubs of protos/freshrec/v1/scoring.proto are not generated: run `make protos` "
        "(python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. "
        "protos/freshrec/v1/*.proto) in the repository"
    ) from exc

__all__ = ["SERVICE", "SERVICER_FUNCTION", "pb", "pb_grpc"]
