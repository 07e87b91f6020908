"""serving: Ray Serve replicas answering freshrec.v1.Scorer (Score, Recommend, ModelInfo) over gRPC
with one consistent model version per answer, following the version store (docs/serving.md).

    from serving import ServeConfig, ScoringClient
    # freshrec serve --run-dir runs/r1   (or serving.app.start_serving(ServeConfig(...)) on a running Ray)
    with ScoringClient("127.0.0.1:9000") as c:
        c.score(user=1, items=[2268318, 2333346]).scores

Modules, one role each: ``config`` (ServeConfig, Limits), ``model`` (a servable version),
``tables`` (frozen embedding tables, cold-start rows), ``features`` (request columns through the
training parser), ``catalogue`` (item-side columns), ``retrieval`` (inner-product top-n),
``follower`` (background loads, atomic swaps), ``service`` (messages in, messages out),
``app`` (the Ray Serve deployment: all of serving's Ray calls), ``grpc_server`` (a plain grpcio
host), ``client``. Importing ``serving`` imports neither Ray nor torch; nothing here imports
``ray.train`` (tested).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ServeConfig": "serving.config",
    "Limits": "serving.config",
    "ScoringService": "serving.service",
    "ScoringClient": "serving.client",
    "ServableModel": "serving.model",
    "load_model": "serving.model",
    "VersionFollower": "serving.follower",
    "InvalidRequestError": "serving.errors",
    "ServingError": "serving.errors",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (lazy exports, PEP 562)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
