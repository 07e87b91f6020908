"""The wire contract compiles with grpcio-tools and round-trips."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_protos_compile_and_roundtrip(tmp_path):
    protos = sorted(str(p.relative_to(REPO)) for p in (REPO / "protos").rglob("*.proto"))
    assert protos
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO),
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        check=True,
        cwd=REPO,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        from protos.freshrec.v1 import scoring_pb2, scoring_pb2_grpc

        req = scoring_pb2.ScoreRequest(pin_version=3)
        req.context["user_id"].id = 7
        req.candidates.add().features["item_id"].token = "sku-1"
        back = scoring_pb2.ScoreRequest.FromString(req.SerializeToString())
        assert back.context["user_id"].id == 7 and back.candidates[0].features["item_id"].token == "sku-1"
        assert hasattr(scoring_pb2_grpc, "ScorerStub")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("protos")]:
            del sys.modules[name]
