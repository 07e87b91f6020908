"""Typed, frozen configuration shared by the CLI and the packages.

Each package owns the config of its own part (``trainer.data.FeatureSpec``,
``paramserver.PSConfig``...); this module holds what belongs to the cluster itself
and the helpers every config uses: YAML loading with errors that say what to fix.
"""

from __future__ import annotations

import dataclasses
from common.config import ConfigError, check_keys, load_yaml_config  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """How freshrec reaches Ray.

    ``address=None`` starts an embedded local Ray (the default on one machine);
    ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster.
    """

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = None
    namespace: str = "freshrec"
    log_to_driver: bool = False  # worker logs in the driver's terminal (freshrec -v turns it on)

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"ray.num_cpus must be >= 1, got {self.num_cpus}")
        if self.address is not None and self.num_cpus is not None:
            raise ConfigError("ray.num_cpus applies only to an embedded Ray; drop it when --address is set")
