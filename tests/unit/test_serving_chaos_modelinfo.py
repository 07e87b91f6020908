"""ModelInfo says why a replica is not ready (issue 20): ``ModelInfoRequest.include_not_ready`` gets an OK
answer with ``ready = false`` and the reason, over a real grpcio server; without it the answer stays
UNAVAILABLE (older clients); a ready replica names why it serves its version and its last load failure.
Also: a table shard that died or failed to read its store answers UNAVAILABLE, not INTERNAL."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from serving.config import ServeConfig
from serving.errors import NotReadyError
from serving.grpc_server import start_grpc_server
from serving.service import ScoringService
from serving.shards import RemoteTable, ShardUnavailableError, shard_unavailable
from serving.wire import pb, pb_grpc
from tests.support.serving import make_store
from versions import VersionStore
from versions.errors import CorruptVersionError, StoreUnavailableError


def test_a_replica_that_serves_nothing_says_why_in_model_info_over_grpc(tmp_path):
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"))).start()
    server, port = start_grpc_server(svc, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.ScorerStub(ch)
            info = stub.ModelInfo(pb.ModelInfoRequest(include_not_ready=True), timeout=10)
            assert not info.ready and info.model_version == 0
            assert "has not loaded a version yet" in info.not_ready_reason
            assert "no committed version" in info.not_ready_reason  # the follower's own reason, not a generic one
            with pytest.raises(grpc.RpcError) as exc:  # the default stays UNAVAILABLE (older clients)
                stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None)
        svc.stop()


def test_a_ready_replica_says_which_pointer_it_follows_and_its_last_load_failure(tmp_path):
    make_store(tmp_path, files=2)
    store = VersionStore(str(tmp_path / "versions"))
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions")))
    svc.follower.poll()
    info = svc.model_info(pb.ModelInfoRequest(include_not_ready=True))
    assert (
        info.ready
        and info.model_version == 2
        and info.follows in ("latest", "published")
        and info.last_load_error == ""
    )
    store.pin(1)  # a rollback
    svc.follower.poll()
    info = svc.model_info()
    assert info.ready and info.model_version == 1 and info.follows == "pinned"
    store.pin(2)
    svc.follower._load = lambda v, prev: (_ for _ in ()).throw(StoreUnavailableError(store.url, "injected"))
    svc.follower.poll()  # the target (2, pinned) fails to load: version 1 still served, the failure said
    info = svc.model_info()
    assert info.model_version == 1 and info.follows == "pinned" and "injected" in info.last_load_error


def test_not_ready_without_include_not_ready_raises_unavailable(tmp_path):
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions")))
    with pytest.raises(NotReadyError):
        svc.model_info(pb.ModelInfoRequest())


class RayActorError(Exception):  # Ray's name (serving.shards matches Ray's errors by name)
    pass


class ActorDiedError(RayActorError):
    pass


@pytest.mark.parametrize(
    "exc, transient",
    [
        (ActorDiedError("the actor died"), True),
        (StoreUnavailableError("s3://b", "reset"), True),
        (ConnectionResetError("reset"), True),
        (CorruptVersionError(3, "part-0", "checksum"), False),
        (KeyError("user"), False),
        (TypeError("a bug"), False),
    ],
)
def test_a_shard_failure_is_unavailable_only_when_transient(exc, transient):
    from paramserver.config import TableConfig

    assert shard_unavailable(exc) is transient
    from serving.cache import HotRowCache

    def fetch(version, table, asked):
        raise exc

    table = RemoteTable(TableConfig(name="user", dim=4), 3, 2, fetch, HotRowCache(16, 4))
    with pytest.raises(ShardUnavailableError if transient else type(exc)) as got:
        table.lookup(np.array([1, 2, 3]))
    if transient:
        assert got.value.code == "UNAVAILABLE" and "retry" in got.value.message
