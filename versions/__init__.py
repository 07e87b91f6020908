"""freshrec's version store: consistent model versions (full and delta) with checksums and a digest.

    store = VersionStore("runs/r1/versions")                 # or s3://bucket/prefix, memory://x
    w = store.begin("delta", parent=store.latest(), step=5400)
    parts = [w.write_part("dense", dense_arrays, {"role": "dense"}), *shard_parts]
    w.commit(parts, ledger=ledger.to_dict(), model_digest=digest)
    store.materialize(store.latest(), table_parts("user"))   # {"ids", "rows", "opt_state_0", ...}
    Publisher(store, PublishConfig(max_auc_drop=0.05))(13)   # the publish gate: PUBLISHED <- 13, or held back
    store.serving_state()["target"]                           # PINNED, else PUBLISHED, else LATEST
    store.renew_lease("replica-3@pod-a", 13, ttl_s=60)        # serving leases: gc keeps what is served

A leaf package: it imports only ``common`` (plus numpy and fsspec).
"""

from versions.digest import ModelDigest, model_digest
from versions.errors import (
    CorruptVersionError,
    NoSuchVersionError,
    StoreError,
    StoreUnavailableError,
    VersionError,
    VersionWriteError,
    WriterFencedError,
    is_transient,
)
from versions.leases import ServingLease
from versions.manifest import Manifest, PartInfo
from versions.policy import SnapshotConfig, SnapshotDecision, SnapshotPolicy
from versions.publish import PublishConfig, PublishDecision, Publisher, PublishGate, VersionMetrics
from versions.store import PartWriter, VersionStore, VersionWriter, table_parts, write_part

__all__ = [
    "CorruptVersionError",
    "Manifest",
    "ModelDigest",
    "NoSuchVersionError",
    "PartInfo",
    "PartWriter",
    "PublishConfig",
    "PublishDecision",
    "PublishGate",
    "Publisher",
    "ServingLease",
    "SnapshotConfig",
    "SnapshotDecision",
    "SnapshotPolicy",
    "StoreError",
    "StoreUnavailableError",
    "VersionError",
    "VersionMetrics",
    "VersionStore",
    "VersionWriteError",
    "VersionWriter",
    "WriterFencedError",
    "is_transient",
    "model_digest",
    "table_parts",
    "write_part",
]
