"""An in-process parameter-server shard: a :class:`~paramserver.actor.ShardHost` on an asyncio loop in a
daemon thread of this process, behind the same ticket API as the Ray actors.

For a worker that shares its node with the shards and is their only user (one worker, a
benchmark): calls cost a thread hand-off instead of a Ray round trip (serialisation, the
object store, two process switches). The client's :func:`paramserver.actor.submit` and
:func:`~paramserver.actor.get` accept these handles as they accept actor handles. A client
holding them cannot be shipped to other processes (pickling says so).

    client = create_parameter_server(cfg, placement="in_process")   # no Ray needed
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from paramserver.config import PSConfig


class InProcessShard:
    """Shard ``index`` of ``cfg`` hosted on its own event-loop thread; ``call`` returns a concurrent Future."""

    def __init__(self, cfg: PSConfig, index: int) -> None:
        from paramserver.actor import ShardHost

        self.index = index
        self.host = ShardHost(cfg, index, set_threads=False)  # the caller's torch threads stay as they are
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"freshrec-ps-shard-{index}", daemon=True)
        self._thread.start()

    def call(self, method: str, *args) -> concurrent.futures.Future:
        if self._loop.is_closed() or not self._loop.is_running():
            future: concurrent.futures.Future = concurrent.futures.Future()
            from paramserver.errors import ShardUnavailableError

            future.set_exception(ShardUnavailableError(self.index, "the in-process shard was shut down"))
            return future
        return asyncio.run_coroutine_threadsafe(getattr(self.host, method)(*args), self._loop)

    def close(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __reduce__(self):
        raise TypeError(
            "an in-process parameter-server shard lives in this process and cannot be sent to another; "
            "use create_parameter_server(cfg) (Ray actors) for Ray Train workers"
        )


def create_in_process_shards(cfg: PSConfig) -> list[InProcessShard]:
    """``cfg.num_shards`` in-process shards (each raises its start-up error here, as the actors do)."""
    shards = [InProcessShard(cfg, i) for i in range(cfg.num_shards)]
    try:
        for s in shards:
            s.call("ready").result()
    except Exception:
        for s in shards:
            s.close()
        raise
    return shards


__all__ = ["InProcessShard", "create_in_process_shards"]
