"""``freshrec k8s serve-config``: the Ray Serve config of the serving app (what k8s/base/rayservice.yaml embeds)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "k8s",
        help="generate what the Kubernetes manifests embed (the Serve config)",
        description="Helpers for k8s/ (KubeRay). See docs/operations.md.",
    )
    ksub = p.add_subparsers(dest="k8s_command", metavar="ACTION", required=True)
    s = ksub.add_parser(
        "serve-config",
        help="print the Ray Serve config (serveConfigV2 of the RayService) as YAML",
        description="The multi-application Serve config of freshrec's gRPC serving app, validated "
        "against ray.serve.schema.ServeDeploySchema. Paste it into a RayService's "
        "serveConfigV2 or give it to `serve deploy`.",
    )
    s.add_argument("--store", required=True, help="the version store the replicas follow (path or s3://... URL)")
    from cluster.serve_config import GRPC_PORT, K8S_REPLICAS

    s.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    s.add_argument("--replicas", type=int, default=K8S_REPLICAS)
    s.add_argument("--replica-cpus", type=float, default=1.0)
    s.set_defaults(func=_serve_config)


def _serve_config(args: argparse.Namespace) -> int:
    import yaml

    from cluster.errors import UserError
    from cluster.serve_config import serve_deploy_config, validate_serve_config
    from common.config import ConfigError

    try:
        cfg = serve_deploy_config(
            args.store, grpc_port=args.grpc_port, replicas=args.replicas, replica_cpus=args.replica_cpus
        )
        validate_serve_config(cfg)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    print(yaml.safe_dump(cfg, sort_keys=False), end="")
    return 0
