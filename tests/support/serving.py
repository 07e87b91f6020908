"""Serving test builders: a small trained version store and data rows as a ScoreRequest."""

from __future__ import annotations

from pathlib import Path

from bench.servedata import StoreTrainer, write_taobao_csv
from serving.wire import pb

COLUMNS = ("user_id", "item_id", "category_id", "ts")


def make_store(root: Path, files: int = 2, ps=None) -> tuple[StoreTrainer, list[Path]]:
    """A version store at ``root/versions`` with one version per 1,500-row data file (hourly, 30 new items each);
    ``ps``: the PS settings of the trainer (StoreTrainer's default when None)."""
    t = StoreTrainer(root / "versions", ps=ps)
    paths = []
    for i in range(files):
        paths.append(
            write_taobao_csv(root / "in" / f"part-{i}.csv", 1500, i, start_ts=1_511_658_000 + 3600 * i, new_items=30)
        )
        t.add_file(paths[-1])
    return t, paths


def make_service(root: Path, files: int = 2):
    """:func:`make_store` and a ScoringService (no Ray) serving its newest version with the data files as its
    item catalogue: (trainer, data file paths, service)."""
    from serving.config import ServeConfig
    from serving.service import ScoringService

    trainer, paths = make_store(root, files)
    svc = ScoringService(ServeConfig(store_url=str(root / "versions"), catalogue=(str(root / "in"),)))
    svc.follower.poll()
    return trainer, paths, svc


def row_request(batch) -> pb.ScoreRequest:
    """The rows of a data file as one ScoreRequest (row form: one message per candidate)."""
    req = pb.ScoreRequest()
    cols = {c: batch.table.column(c).cast("int64").to_numpy() for c in COLUMNS}
    for i in range(len(batch)):
        cand = req.candidates.add()
        for c in COLUMNS:
            cand.features[c].id = int(cols[c][i])
    return req
