"""The Ray Serve config of freshrec's serving application: what a KubeRay RayService embeds
(``serveConfigV2``) and what ``serve deploy`` takes, generated in one place and checked against
Ray Serve's own schema (``ray.serve.schema.ServeDeploySchema``).

The application builder is ``serving.app:app_from_args``, called by Ray Serve with ``args``
``{"store": URL, "grpc_port": PORT, "replicas": N}`` (any other key of the run config's ``serve:``
section, :class:`serving.config.ServeConfig`, may be added; a unit test builds the application from
the generated args), and the gRPC
servicers are ``protos.freshrec.v1.scoring_pb2_grpc.add_ScorerServicer_to_server`` (service
``freshrec.v1.Scorer``) and ``grpc.health.v1.Health`` (answered by a replica: NOT_SERVING until it
loaded a version); the proxy listens for gRPC on ``grpc_options.port``.

    >>> cfg = serve_deploy_config("/data/versions")
    >>> cfg["applications"][0]["import_path"], cfg["grpc_options"]["port"]
    ('serving.app:app_from_args', 9000)
"""

from __future__ import annotations

from typing import Any

from common.config import ConfigError
from serving.config import ServeConfig

APP_NAME = "freshrec"
IMPORT_PATH = "serving.app:app_from_args"
SERVICER_FUNCTION = "protos.freshrec.v1.scoring_pb2_grpc.add_ScorerServicer_to_server"
# grpc.health.v1.Health/Check (with the ``application`` metadata): SERVING once the replica loaded a version
HEALTH_SERVICER_FUNCTION = "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"
DEPLOYMENT = "Scorer"
GRPC_PORT = ServeConfig.grpc_port  # defined once, in serving/config.py
K8S_REPLICAS = 2  # the RayService's scorer replicas (two: a rolling restart keeps one serving); local serve: 1
HTTP_PORT = 8000  # Serve's HTTP proxy: health checks only (/-/healthz); not exposed outside the cluster


def serve_deploy_config(
    store: str,
    *,
    grpc_port: int = GRPC_PORT,
    replicas: int = K8S_REPLICAS,
    replica_cpus: float = 1.0,
    max_ongoing_requests: int = 64,
) -> dict[str, Any]:
    """The multi-application Serve config (``ServeDeploySchema``) that serves the versions in ``store``."""
    if not store:
        raise ConfigError("serve config: a version store (a path or s3://... URL) is required")
    if not 0 < grpc_port < 65536:
        raise ConfigError(f"serve config: grpc_port must be a TCP port, got {grpc_port}")
    if replicas < 1:
        raise ConfigError(f"serve config: replicas must be >= 1, got {replicas}")
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": HTTP_PORT},
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION, HEALTH_SERVICER_FUNCTION]},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": {"store": store, "grpc_port": grpc_port, "replicas": replicas},
                "deployments": [
                    {
                        "name": DEPLOYMENT,
                        "num_replicas": replicas,
                        "max_ongoing_requests": max_ongoing_requests,
                        "health_check_period_s": 2.0,
                        "ray_actor_options": {"num_cpus": replica_cpus},
                    }
                ],
            }
        ],
    }


def validate_serve_config(config: dict[str, Any]):
    """Ray Serve's own validation (``ServeDeploySchema``); ConfigError with pydantic's message.

    Ray's schema ignores unknown keys (forward compatibility); they are refused here too, since
    a misspelled key would silently fall back to a default.
    """
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    unknown = unknown_keys(ServeDeploySchema, config)
    if unknown:
        raise ConfigError(f"serve config: unknown key(s) {unknown} (not in ray.serve.schema.ServeDeploySchema)")
    try:
        return ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(f"serve config is not a valid Ray Serve config: {exc}") from None


def unknown_keys(model: type, data: Any, path: str = "") -> list[str]:
    """Keys of ``data`` that the pydantic ``model`` (and its nested models) does not define."""
    import typing

    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    out = []
    fields = model.model_fields
    aliases = {f.alias: name for name, f in fields.items() if f.alias}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in fields:
            out.append(f"{path}{key}")
            continue
        ann = fields[name].annotation
        if ann is dict or typing.get_origin(ann) is dict:  # free-form (args, user_config, runtime_env)
            continue
        candidates = [ann, *typing.get_args(ann)]
        for arg in list(candidates):
            candidates += list(typing.get_args(arg))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{path}{key}[{i}]." if isinstance(value, list) else f"{path}{key}."
            out += unknown_keys(nested[0], item, where)
    return out
