"""cluster: configuration, Ray start-or-connect, the coordinator, the ``freshrec`` CLI."""

from cluster.config import RayConfig, load_yaml_config

__all__ = ["RayConfig", "load_yaml_config"]
