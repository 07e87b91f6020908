"""freshrec's parameter server: sharded FBGEMM embedding tables in Ray actors, push/pull client.

cfg = PSConfig(tables=(TableConfig("item", dim=16),), num_shards=2)
client = create_parameter_server(cfg)          # needs Ray
rows = client.wait(client.pull("item", np.array([42, 7, 42])))
"""

from paramserver.client import PSClient, create_parameter_server
from paramserver.config import PSConfig, TableConfig
from paramserver.errors import (
    BadPullError,
    BadPushError,
    CutError,
    PSError,
    RestoreError,
    ShardUnavailableError,
    UnknownTableError,
)
from paramserver.hashing import init_rows
from paramserver.shard import EmbeddingShard
from paramserver.sharding import shard_of

__all__ = [
    "BadPullError",
    "BadPushError",
    "CutError",
    "EmbeddingShard",
    "PSClient",
    "PSConfig",
    "PSError",
    "RestoreError",
    "ShardUnavailableError",
    "TableConfig",
    "UnknownTableError",
    "create_parameter_server",
    "init_rows",
    "shard_of",
]
