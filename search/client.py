"""A client of freshrec.v1.Search.

with SearchClient("127.0.0.1:9000") as c:
    c.wait_ready(60)
    r = c.search("king poster bed", k=5)
    [(h.product_id, h.score, h.product_name) for h in r.hits], r.model_version
"""

from __future__ import annotations

import time

import grpc

from search.wire import APP_NAME, pb, pb_grpc


class SearchClient:
    def __init__(self, target: str, timeout_s: float = 10.0, application: str = APP_NAME) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.SearchStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = (("application", application),) if application else ()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def request(
        query: str,
        k: int = 10,
        user: int | None = None,
        classes=(),
        categories=(),
        num_candidates: int = 0,
        pin_version: int = 0,
    ) -> "pb.SearchRequest":
        req = pb.SearchRequest(query=query, k=k, num_candidates=num_candidates, pin_version=pin_version)
        if user is not None:
            req.user_id = int(user)
        req.filters.product_class.extend(classes)
        req.filters.category.extend(categories)
        return req

    def search(self, query: str, k: int = 10, **kw) -> "pb.SearchResponse":
        return self.stub.Search(self.request(query, k, **kw), timeout=self.timeout_s, metadata=self.metadata)

    def wait_ready(self, timeout_s: float = 60.0, probe: str = "bed") -> "pb.SearchResponse":
        """Search ``probe`` until a ranker version answers (UNAVAILABLE and an unready proxy are retried)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.search(probe, k=1)
            except grpc.RpcError as exc:
                if (
                    exc.code()
                    not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED)
                    or time.monotonic() > deadline
                ):
                    raise
            time.sleep(0.25)


def format_response(resp) -> str:
    lines = [f"version {resp.model_version} ({resp.candidates} candidates of {resp.catalogue_products} products)"]
    for h in resp.hits:
        lines.append(f"  {h.product_id:>8}  {h.score:.6f}  bm25 {h.lexical_score:7.3f}  {h.product_name}")
    return "\n".join(lines)
