"""Start an embedded local Ray, or connect to an existing cluster: the one place that calls ray.init."""

from __future__ import annotations

import dataclasses
import logging

from cluster.config import RayConfig

log = logging.getLogger(__name__)


_VERBOSE = False


def set_verbose(on: bool) -> None:
    """Show Ray worker logs in this terminal (``freshrec -v``)."""
    global _VERBOSE
    _VERBOSE = on


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Initialise Ray once per process according to ``cfg`` (no-op when already initialised)."""
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    if _VERBOSE and not cfg.log_to_driver:
        cfg = dataclasses.replace(cfg, log_to_driver=True)
    kwargs: dict = {"namespace": cfg.namespace, "include_dashboard": False, "log_to_driver": cfg.log_to_driver}
    if cfg.address is None:
        kwargs["address"] = "local"  # always a new embedded Ray: never join a `ray start` cluster by accident
        kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory:
            kwargs["object_store_memory"] = cfg.object_store_memory
        log.info("starting an embedded local Ray (num_cpus=%s)", cfg.num_cpus)
    else:
        kwargs["address"] = cfg.address
        log.info("connecting to Ray at %s", cfg.address)
    ray.init(**kwargs)
