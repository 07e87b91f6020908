"""A Python client of freshrec's serving API (the CLI's ``score`` / ``recommend`` use it).

    with ScoringClient("127.0.0.1:9000") as c:
        c.model_info().model_version                      # 12
        r = c.score(user=7, items=[42, 9], context={"ts": 1511658000})
        r.scores, r.model_version                         # [0.031, 0.012], 12
        [i.item_id for i in c.recommend(user=7, k=5).items]

``score`` sends the candidates in the column form (one repeated field per column). Ray Serve's
gRPC proxy routes by the ``application`` metadata when it hosts several applications; the
client sends the one it was given (``freshrec`` by default).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import grpc

from serving.wire import pb, pb_grpc

DEFAULT_APP = "freshrec"


def feature(value) -> "pb.Feature":
    """A Feature from a Python value: int -> id, str -> token, float -> number."""
    if isinstance(value, bool):
        raise TypeError("a feature is an int id, a str token or a float number, not a bool")
    if isinstance(value, int):
        return pb.Feature(id=value)
    if isinstance(value, str):
        return pb.Feature(token=value)
    if isinstance(value, float):
        return pb.Feature(number=value)
    raise TypeError(f"a feature is an int id, a str token or a float number, got {type(value).__name__}")


def column(values: Sequence) -> "pb.FeatureColumn":
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pb.FeatureColumn(ids=list(values))
    if all(isinstance(v, str) for v in values):
        return pb.FeatureColumn(tokens=list(values))
    return pb.FeatureColumn(numbers=[float(v) for v in values])


class ScoringClient:
    """Calls Score, Recommend and ModelInfo on ``target`` (HOST:PORT), answering with the messages."""

    def __init__(
        self,
        target: str,
        application: str | None = DEFAULT_APP,
        timeout_s: float = 10.0,
        user_column: str = "user_id",
        item_column: str = "item_id",
    ) -> None:
        self.target, self.timeout_s = target, timeout_s
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.ScorerStub(self.channel)
        self.metadata = (("application", application),) if application else ()
        self.user_column, self.item_column = user_column, item_column

    def __enter__(self) -> "ScoringClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def score_request(
        self,
        user,
        items: Sequence,
        context: Mapping | None = None,
        item_columns: Mapping[str, Sequence] | None = None,
        pin_version: int = 0,
    ) -> "pb.ScoreRequest":
        req = pb.ScoreRequest(pin_version=pin_version)
        if user is not None:
            req.context[self.user_column].CopyFrom(feature(user))
        for k, v in (context or {}).items():
            req.context[k].CopyFrom(feature(v))
        req.candidate_columns[self.item_column].CopyFrom(column(list(items)))
        for k, v in (item_columns or {}).items():
            req.candidate_columns[k].CopyFrom(column(list(v)))
        return req

    def score(
        self,
        user,
        items: Sequence,
        context: Mapping | None = None,
        item_columns: Mapping[str, Sequence] | None = None,
        pin_version: int = 0,
    ) -> "pb.ScoreResponse":
        return self.stub.Score(
            self.score_request(user, items, context, item_columns, pin_version),
            timeout=self.timeout_s,
            metadata=self.metadata,
        )

    def recommend(
        self,
        user,
        k: int,
        context: Mapping | None = None,
        exclude: Sequence[int] = (),
        category=None,
        num_candidates: int = 0,
        pin_version: int = 0,
    ) -> "pb.RecommendResponse":
        req = pb.RecommendRequest(
            k=k, exclude_item_ids=list(exclude), num_candidates=num_candidates, pin_version=pin_version
        )
        req.context[self.user_column].CopyFrom(feature(user))
        for key, v in (context or {}).items():
            req.context[key].CopyFrom(feature(v))
        if category is not None:
            req.category.CopyFrom(feature(category))
        return self.stub.Recommend(req, timeout=self.timeout_s, metadata=self.metadata)

    def model_info(self) -> "pb.ModelInfoResponse":
        return self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=self.timeout_s, metadata=self.metadata)

    def wait_ready(self, timeout_s: float = 60.0, min_version: int = 0) -> "pb.ModelInfoResponse":
        """Poll ModelInfo until the server answers with a version >= ``min_version``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            try:
                info = self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=2.0, metadata=self.metadata)
                if info.model_version >= min_version:
                    return info
                last = f"serving version {info.model_version}"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.target} did not serve a version >= {min_version} within {timeout_s:g} s (last: {last})"
                )
            time.sleep(0.1)


def score_and_show(
    target: str, user, items: Sequence, context: Mapping | None = None, application: str | None = DEFAULT_APP
) -> str:
    """One line per item, for the demo: 'version 7: item 42 0.0312, item 9 0.0121'."""
    with ScoringClient(target, application) as c:
        r = c.score(user, items, context)
    pairs = ", ".join(f"item {i} {s:.4f}" for i, s in zip(items, r.scores) if not math.isnan(s))
    return f"version {r.model_version}: {pairs}"
