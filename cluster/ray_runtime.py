"""Start an embedded local Ray, or connect to an existing cluster: the one place that calls ray.init.

* no address: always a NEW embedded Ray (``ray.init(address="local")``), even when a
  ``ray start`` cluster runs on this machine or ``RAY_ADDRESS`` is set;
* ``--address HOST:PORT`` (the GCS port of ``ray start --head``, 6379 by default), ``auto``
  (the cluster ``ray start`` registered on this machine, or ``RAY_ADDRESS``) or
  ``ray://HOST:10001`` (Ray Client) joins that cluster. The address is checked first with a
  short TCP connect, so a cluster that is gone is an error in seconds, not a hang of minutes;
* ``FRESHREC_RAY_ADDRESS`` stands in for ``--address`` (``freshrec submit`` sets it to
  ``auto`` so that a submitted command joins the cluster it runs on).

Clusters with Ray's token authentication (a ``ray start --head`` with ``RAY_AUTH_MODE=token``, or
on a machine where ``~/.ray/auth_token`` exists): with ``RAY_AUTH_MODE=token`` the token is read
from ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``; a
missing or wrong one is reported as such.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket

from cluster.config import RayConfig
from cluster.errors import UserError

log = logging.getLogger(__name__)

ADDRESS_ENV = "FRESHREC_RAY_ADDRESS"
CONNECT_TIMEOUT_S = 3.0

_VERBOSE = False

AUTH_HELP = (
    "the cluster uses Ray's token authentication: give this process the cluster's token as "
    "RAY_AUTH_TOKEN=<token>, or RAY_AUTH_TOKEN_PATH=<file>, or in ~/.ray/auth_token (on the head node "
    "`ray get-auth-token` prints it), with RAY_AUTH_MODE=token; see docs/operations.md"
)


def set_verbose(on: bool) -> None:
    """Show Ray worker logs in this terminal (``freshrec -v``)."""
    global _VERBOSE
    _VERBOSE = on


def effective_address(cfg: RayConfig) -> str | None:
    """``cfg.address``, else ``$FRESHREC_RAY_ADDRESS``, else None (embedded)."""
    return cfg.address or os.environ.get(ADDRESS_ENV) or None


def host_port(address: str, default_port: int = 6379) -> tuple[str, int]:
    """``"ray://h:10001"`` -> ("h", 10001); ``"h"`` -> ("h", 6379); UserError for a malformed address.

    >>> host_port("10.0.0.5:6380")
    ('10.0.0.5', 6380)
    """
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, auto, ray://10.0.0.5:10001)")
    return host, int(port)


def resolve_address(address: str) -> str:
    """``auto`` -> the HOST:PORT of the cluster registered on this machine (or ``RAY_ADDRESS``); others unchanged."""
    if address != "auto":
        return address
    from ray._private import services

    try:
        found = services.canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise UserError(
            "--address auto: no Ray cluster is registered on this machine (start one with "
            "`ray start --head`, pass its HOST:PORT, or drop --address for an embedded Ray)"
        )
    return found


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connect to the address, so that a cluster that is gone fails at once with a clear message."""
    host, port = host_port(address, 10001 if address.startswith("ray://") else 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        what = (
            "a Ray Client server (ray://, port 10001 by default)"
            if address.startswith("ray://")
            else "the GCS of a Ray head (`ray start --head` prints it; port 6379 by default)"
        )
        raise UserError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}): --address must name "
            f"{what}; is the cluster running? Drop --address for an embedded local Ray"
        ) from None


def is_auth_error(exc: BaseException) -> bool:
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # pragma: no cover (older Ray)
        AuthenticationError = ()
    text = str(exc).lower()
    return isinstance(exc, AuthenticationError) or "unauthenticated" in text or "authentication" in text


ARENA_ENV, ARENA_DEFAULT = "MALLOC_ARENA_MAX", "2"


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Initialise Ray once per process according to ``cfg`` (no-op when already initialised).

    Raises UserError (printed by the CLI without a traceback) when the cluster cannot be
    reached or refuses this process's credentials.
    """
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    if _VERBOSE and not cfg.log_to_driver:
        cfg = dataclasses.replace(cfg, log_to_driver=True)
    kwargs: dict = {"namespace": cfg.namespace, "include_dashboard": False, "log_to_driver": cfg.log_to_driver}
    address = effective_address(cfg)
    if address is None:
        kwargs["address"] = "local"  # always a new embedded Ray: never join a `ray start` cluster by accident
        kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory:
            kwargs["object_store_memory"] = cfg.object_store_memory
        if os.environ.get("RAY_ADDRESS"):
            log.info(
                "RAY_ADDRESS is set, but without --address freshrec starts its own Ray (pass --address auto "
                "to join that cluster)"
            )
        log.info("starting an embedded local Ray (num_cpus=%s)", cfg.num_cpus)
        # every process of the embedded Ray inherits this (glibc reads it at start): at most 2 malloc arenas.
        # With glibc's default (8 per core) the Ray Train worker's and the shard actors' resident pages
        # crept up by 7-19 MiB per 1,000 versions while their live bytes stayed flat; with 2, 0.1-0.8
        # (docs/benchmarks.md, "Soak: the Ray Train worker's growth"). A value the user set is kept.
        os.environ.setdefault(ARENA_ENV, ARENA_DEFAULT)
        ray.init(**kwargs)
        return
    if cfg.num_cpus is not None or cfg.object_store_memory:
        raise UserError(
            "ray.num_cpus and ray.object_store_memory apply only to an embedded Ray: the cluster at "
            f"{address} has its own; drop them"
        )
    target = resolve_address(address)
    check_reachable(target)
    del kwargs["include_dashboard"]  # an option of a new cluster only
    kwargs["address"] = target
    log.info("connecting to Ray at %s", target)
    try:
        ray.init(**kwargs)
    except Exception as exc:
        if is_auth_error(exc):
            raise UserError(
                f"the Ray cluster at {target} refused this process: {AUTH_HELP} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
            ) from None
        if isinstance(exc, (ConnectionError, TimeoutError)):  # the port answered (checked above): its GCS refused
            token = token_source()
            if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                why = (
                    "without an authentication token (RAY_AUTH_MODE is not 'token', so none was sent: joining an "
                    "explicit --address never turns it on by itself)"
                )
            elif token:
                why = f"with the token from {token} (is it this cluster's token?)"
            else:
                why = "without an authentication token (none in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)"
            raise UserError(
                f"the Ray cluster at {target} answers but refused this process {why}: most likely {AUTH_HELP}. ({exc})"
            ) from None
        raise


def token_source() -> str | None:
    """Where this process would take a Ray authentication token from (None: nowhere)."""
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).is_file():
        return path
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None
