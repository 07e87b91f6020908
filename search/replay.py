"""Incremental training on judgments as they arrive, with progressive NDCG@10 and model versions.

Judgments carry no time, so they arrive in seeded batches of queries (``query_batches``). Like the
recommendation stream, each batch is first SCORED by the current model (progressive validation:
NDCG@10 of the batch's queries, ranked from the lexical candidates, before the model has seen any
of their judgments), then TRAINED on, recorded in the core's data ledger as
``judgments-batch-NNNN``, and cut as a model version by :class:`trainer.versioning.VersionKeeper`
(the same two-phase commit, checksums, deltas and compaction as ``freshrec stream``)::

    result = replay(corpus, judgments, RankerConfig(), "runs/s1/versions", batch_queries=4, seed=0)
    result.batches[0]   # {"batch": 0, "queries": [...], "ndcg10_lexical": .., "ndcg10_progressive": .., "version": 1}

Every manifest carries ``extra.search_spec`` (the :class:`search.spec.SearchSpec`) and
``extra.config`` (model, train), so :func:`search.service.load_ranker` rebuilds the ranker from
the version alone. The catalogue is NOT part of a version: the server reads it from its own file. A second replay into
the same store resumes from its newest version and trains only queries it has not seen.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from search.data import Judgments
from search.metrics import query_batches
from search.ranker import RankerConfig, SearchCorpus, examples, mean, ndcg_of, new_trainer
from trainer.versioning import VersionKeeper
from versions import SnapshotConfig


@dataclasses.dataclass
class ReplayResult:
    batches: list[dict]
    versions: list[int]

    @property
    def progressive_ndcg10(self) -> float:
        """Mean over every replayed query of its NDCG@10 before the model trained on it."""
        return mean([v for b in self.batches for v in b["per_query_progressive"].values()])

    @property
    def lexical_ndcg10(self) -> float:
        return mean([v for b in self.batches for v in b["per_query_lexical"].values()])

    def summary(self) -> dict:
        first_half = self.batches[: len(self.batches) // 2]
        second_half = self.batches[len(self.batches) // 2 :]

        def m(bs, key):
            return mean([v for b in bs for v in b[key].values()])

        return {
            "progressive_ndcg10": self.progressive_ndcg10,
            "lexical_ndcg10": self.lexical_ndcg10,
            "progressive_ndcg10_first_half": m(first_half, "per_query_progressive"),
            "lexical_ndcg10_first_half": m(first_half, "per_query_lexical"),
            "progressive_ndcg10_second_half": m(second_half, "per_query_progressive"),
            "lexical_ndcg10_second_half": m(second_half, "per_query_lexical"),
            "batches": [{k: v for k, v in b.items() if not k.startswith("per_query")} for b in self.batches],
            "versions": self.versions,
        }


def replay(
    corpus: SearchCorpus,
    judgments: Judgments,
    cfg: RankerConfig,
    store_url: str | None,
    batch_queries: int = 4,
    seed: int = 0,
    metrics_path: str | Path | None = None,
    on_batch: Callable[[dict], None] | None = None,
    resume: bool = True,
    snapshots: SnapshotConfig | None = None,
    publisher: Callable[[int], object] | None = None,
) -> ReplayResult:
    """Replay ``judgments`` in seeded batches of ``batch_queries`` queries: score, train, cut a version
    (no versions when ``store_url`` is None). Appends one JSON line per batch to ``metrics_path``.

    With ``resume`` and a store that holds a search version, the ranker continues from the newest valid
    one (rows, dense state, ledger) and replays only the queries it has not trained on yet (each
    version's ``extra.trained_queries``): judgments that arrive later are trained incrementally.

    ``snapshots``: the version cadence and retention (default: a version per batch, a full one every 10th
    by compaction, keep 5). ``publisher``: replaces the publish gate (``publisher(version)`` after each commit,
    it moves PUBLISHED itself; ``bench serve-chaos`` holds back a seeded share of versions with it).
    """
    trainer = new_trainer(corpus.spec, cfg)
    keeper = None
    done: list[int] = []
    if store_url is not None:
        extra = {
            "search_spec": corpus.spec.to_dict(),
            "config": cfg.run_config(),
            "kind": "search",
            "catalogue_digest": corpus.catalogue.digest(),
            "trained_queries": done,
        }
        keeper = VersionKeeper(
            store_url,
            trainer.backend,
            trainer,
            snapshots or SnapshotConfig(every_data_file=True, full_every=10, keep=5),
            extra=extra,
        )
        if publisher is not None:
            keeper.publisher = publisher
        if resume and keeper.store.latest_valid() is not None:
            restored = keeper.store.manifest(keeper.store.latest_valid()).extra
            if restored.get("search_spec") != corpus.spec.to_dict():
                raise ValueError(
                    f"{store_url} holds a ranker of another search spec or not a search ranker: "
                    "use a new run directory (or resume=False to write a fresh ranker after it)"
                )
            if "trained_queries" not in restored:
                raise ValueError(
                    f"{store_url}: its newest version does not say which queries it was trained on: "
                    "use a new run directory"
                )
            keeper.restore()
            done.extend(int(q) for q in restored["trained_queries"])
    first = len(trainer.ledger.to_dict()["entries"])  # batch names continue after the restored ledger
    new_queries = np.setdiff1d(judgments.query_ids, np.asarray(done, np.int64))
    batches, versions = [], []
    for i, qids in enumerate(query_batches(new_queries, batch_queries, seed) if len(new_queries) else [], start=first):
        name = f"judgments-batch-{i:04d}"
        lex = ndcg_of(None, corpus, judgments, qids, 10, cfg.num_candidates)
        prog = ndcg_of(trainer, corpus, judgments, qids, 10, cfg.num_candidates)  # before training on them
        batch = examples(corpus, judgments, qids, cfg.num_candidates, cfg.train_on_judged_outside)
        info = trainer.train(batch, epochs=cfg.epochs, shuffle=True)
        trainer.ledger.record(name, len(batch), complete=True)
        done.extend(int(q) for q in qids)
        version = None
        if keeper is not None:
            keeper.after_file(force=True)
            keeper.wait()
            version = keeper.last_version
            versions.append(version)
        rec = {
            "batch": i,
            "file": name,
            "queries": [int(q) for q in qids],
            "examples": len(batch),
            "ndcg10_lexical": mean(lex),
            "ndcg10_progressive": mean(prog),
            "loss": info["loss"],
            "version": version,
            "per_query_lexical": lex,
            "per_query_progressive": prog,
        }
        batches.append(rec)
        if metrics_path is not None:
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({k: v for k, v in rec.items() if not k.startswith("per_query")}) + "\n")
        if on_batch is not None:
            on_batch(rec)
    if keeper is not None:
        keeper.finish()
    return ReplayResult(batches, versions)


def spread(values) -> dict:
    v = np.asarray(list(values), np.float64)
    return {"min": float(v.min()), "max": float(v.max()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
