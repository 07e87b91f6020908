"""A servable model: one committed version, loaded from the version store, that scores and recommends.

Everything comes from the version itself (a version is self-contained): the feature spec's
YAML and the run config from the manifest's ``extra``, the dense parameters and feature
statistics from the ``trainer/core`` part, the embedding rows from the tables' parts merged
over the delta chain. Scoring runs the training core's own ``score`` over the frozen tables
(:class:`serving.tables.FrozenTables`), so a served score is the offline score::

    store ──► manifest.extra {spec_yaml, config}  ──► spec, ModelConfig, TrainConfig, PSConfig
          ──► part trainer/core                    ──► TrainerCore.import_state (params, stats)
          ──► part trainer/features (if any)       ──► TrainerCore.import_features (dynamic-feature state)
          ──► table parts (full + deltas)          ──► FrozenTables (ids, float32 rows)
    request ─► RequestFeatures.batch ─► core.score(batch) ─► probabilities

A model is immutable once built; following versions builds a new one (deltas applied to the
previous model's tables) and swaps it in (:mod:`serving.follower`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict

import numpy as np
import torch
import yaml

from paramserver.config import PSConfig
from serving.ann import AnnItemIndex
from serving.catalogue import ItemCatalogue
from serving.config import RetrievalOptions
from serving.errors import UnsupportedError
from serving.features import RequestFeatures, SpecRoles, _exact, parse_user_id
from serving.retrieval import ItemIndex
from serving.tables import FrozenTable, FrozenTables
from trainer import bundle
from trainer.backends import ps_config_for
from trainer.config import ModelConfig, Strategy, TrainConfig, model_config_of_version
from trainer.core import TrainerCore
from trainer.data.spec import spec_from_dict
from versions import VersionStore, table_parts

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """What ModelInfo tells about the served version."""

    version: int
    spec_name: str
    committed_at: float
    kind: str
    step: int
    data_files: tuple[str, ...]  # the files this version added (the manifest's own ledger entries)
    rows_trained: int
    model_digest: str
    metrics: dict
    loaded_at: float
    files_trained: int = 0  # every data file the model has consumed (the whole ledger's count)

    @classmethod
    def of(cls, m, spec_name: str) -> "VersionInfo":
        files, rows = bundle.ledger_totals(m)
        metrics = {
            k: float(v) for k, v in (m.extra or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        metrics.update(
            {
                k: float(v)
                for k, v in ((m.extra or {}).get("metrics") or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        return cls(
            m.version,
            spec_name,
            m.committed_at,
            m.kind,
            m.step,
            tuple(m.data_files),
            rows,
            m.model_digest,
            metrics,
            time.time(),
            files,
        )


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """The configuration part of a version: spec and configs (shared by versions of one run)."""

    spec: object
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    ps: PSConfig
    spec_yaml: str

    @classmethod
    def from_manifest(cls, m, previous: "ModelSetup | None" = None) -> "ModelSetup":
        """``previous``: the served version's setup; its parsed spec is reused when the spec's YAML text is the
        same (the YAML parse was most of a delta's load on the replica)."""
        text = bundle.spec_yaml(m)
        if text is None:
            raise UnsupportedError(
                f"version {m.version} carries no feature spec (manifest extra.spec_yaml): it was "
                "not written by freshrec's trainer and cannot be served"
            )
        if previous is not None and previous.spec_yaml == text:
            spec = previous.spec
        else:
            spec = spec_from_dict(yaml.safe_load(text), where=f"version {m.version} spec")
        cfg = bundle.run_config(m)
        model_cfg = model_config_of_version(cfg.get("model"))
        train = dict(cfg.get("train") or {})
        train_cfg = TrainConfig.from_dict(train).replace(strategy=Strategy.ONLINE)  # serving never trains
        ps = PSConfig.settings_from_dict(dict(cfg.get("ps") or {}))
        return cls(spec, model_cfg, train_cfg, ps, text)


def setup_with_spec(m, spec) -> ModelSetup:
    """The setup of a version whose feature spec the caller gives (a search ranker carries a SearchSpec,
    not a spec YAML): the run config still comes from the manifest."""
    model_cfg, train_cfg, ps = bundle.configs(m)
    return ModelSetup(spec, model_cfg, train_cfg.replace(strategy=Strategy.ONLINE), ps, repr(spec))


class ServableModel:
    """One version, ready to score (thread-safe: the core's forward runs under a lock).

    >>> m = load_model(VersionStore("runs/r1/versions"), 7)          # doctest: +SKIP
    >>> batch, defaulted = m.features.batch({"user_id": 1}, {"item_id": pa.array([42, 9])}, 2)  # doctest: +SKIP
    >>> m.score(batch)                                                 # doctest: +SKIP
    (array([0.031, 0.012], dtype=float32), 0)
    """

    def __init__(
        self,
        info: VersionInfo,
        setup: ModelSetup,
        core: TrainerCore,
        tables: FrozenTables,
        roles: SpecRoles,
        catalogue: ItemCatalogue | None,
        retrieval: "RetrievalOptions | None" = None,
        previous: "ServableModel | None" = None,
    ) -> None:
        self.info, self.setup, self.core, self.tables = info, setup, core, tables
        self.roles, self.catalogue = roles, catalogue
        self.spec = setup.spec
        self.features = RequestFeatures(setup.spec, roles, catalogue)
        self.retrieval = retrieval or RetrievalOptions()
        self.index = self._index(previous.index if previous is not None else None)
        self._lock = threading.Lock()
        self._user_ids: OrderedDict = OrderedDict()  # (kind, raw value) -> user id (user_id), bounded

    @property
    def version(self) -> int:
        return self.info.version

    def _index(self, previous=None) -> "ItemIndex | AnnItemIndex | None":
        item, user = self.roles.item_feature, self.roles.user_feature
        if item is None or user is None or self.tables[item].cfg.dim != self.tables[user].cfg.dim:
            return None
        t = self.tables[item]
        if not isinstance(t, FrozenTable):  # read through shards: no local rows to search
            log.warning(
                "the item table %r is served by read-only shards: Recommend has no retrieval index "
                "(keep the item table local: serve --remote-tables names the user-side tables)",
                item,
            )
            return None
        cats = None
        if self.catalogue is not None:
            cat_col = self.category_column
            if cat_col is not None:
                cats = self.catalogue.lookup(cat_col, t.ids)
        if len(t) > self.retrieval.ann_above:  # exact search would cost O(N d) per query
            if isinstance(previous, AnnItemIndex) and previous.options == self.retrieval.ann:
                return previous.updated(t.ids, t.rows, cats)
            return AnnItemIndex.build(t.ids, t.rows, cats, self.retrieval.ann)
        return ItemIndex(t.ids, t.rows, cats)

    @property
    def category_column(self) -> str | None:
        """The item-side column that a Recommend category filter compares (the first one after the item)."""
        rest = [c for c in self.roles.item_columns if c != self.roles.item_column]
        return rest[0] if rest else None

    def score(self, batch) -> tuple[np.ndarray, int]:
        """(probabilities float32 [n], ids without a row) for an EventBatch from ``self.features``.

        The core's forward runs under ``torch.inference_mode`` (no autograd bookkeeping, no version counters:
        less of torch's per-op overhead on 100-row batches; the same kernels, so the same bits,
        ``tests/unit/test_serve_cpu_paths.py``). A served model never trains, and each forward stages its own
        rows, so no inference tensor outlives the call where autograd could meet it."""
        with self._lock, torch.inference_mode():
            scores = self.core.score(batch)
            return scores, self.tables.unknown

    def user_id(self, value) -> int:
        """The user feature's id of a request's raw user value (Recommend's retrieval query): the user column
        parsed ALONE, as the one row it is, instead of a whole one-row batch (every column of the spec parsed
        and defaulted: most of Recommend's feature time); the same id, since parsing is row-wise and per
        column (``tests/unit/test_serve_perf.py`` compares the two). Kept in a bounded per-version cache (a
        pure function of the spec and the value). A value that does not parse raises InvalidRequestError
        with the message the whole batch gives."""
        key = (type(value).__name__, _exact(value))
        with self._lock:
            hit = self._user_ids.get(key)
            if hit is not None:
                self._user_ids.move_to_end(key)
                return hit
        uid = parse_user_id(self.features, value)
        with self._lock:
            self._user_ids[key] = uid
            while len(self._user_ids) > USER_ID_CACHE:
                self._user_ids.popitem(last=False)
        return uid

    def user_vector(self, user_id: int) -> np.ndarray:
        """The user's embedding row (the cold-start row for an unknown user): the retrieval query."""
        rows, _ = self.tables[self.roles.user_feature].lookup(np.array([user_id], np.int64))
        return rows[0]


USER_ID_CACHE = 1 << 16  # raw user values -> ids kept per served version


def ps_config_of(store: VersionStore, version: int):
    """The parameter-server configuration (tables, seed, admission) a version was trained with."""
    setup = ModelSetup.from_manifest(store.manifest(version))
    return ps_config_for(setup.spec, setup.train_cfg, setup.ps, model=setup.model_cfg)


def load_model(
    store: VersionStore,
    version: int,
    catalogue: ItemCatalogue | None = None,
    previous: ServableModel | None = None,
    user_feature: str | None = None,
    item_feature: str | None = None,
    remote=None,
    retrieval: RetrievalOptions | None = None,
    spec=None,
) -> ServableModel:
    """Build version ``version`` from the store, every part checksummed (CorruptVersionError otherwise).

    With ``previous`` (a model of an earlier version of the same chain) only the deltas after it
    are read and applied to its tables: O(rows changed + rows held) instead of the whole chain.
    ``spec``: the feature spec, when the version does not carry one as YAML (a search ranker).
    """
    chain = store.chain(version)
    m = chain[-1]
    if spec is None:  # the previous version's parsed spec when the text is the same (no YAML parse)
        setup = ModelSetup.from_manifest(m, previous.setup if previous is not None else None)
    else:
        setup = setup_with_spec(m, spec)
        if previous is not None and previous.setup.spec_yaml == setup.spec_yaml:
            setup = dataclasses.replace(setup, spec=previous.setup.spec)
    ps_cfg = ps_config_for(setup.spec, setup.train_cfg, setup.ps, model=setup.model_cfg)
    remote_names = set(remote.names) if remote is not None else set()
    arrays = _tables(store, chain, ps_cfg, previous, remote_names)
    opened = None
    if remote is not None:
        unknown = sorted(remote_names - {t.name for t in ps_cfg.tables})
        if unknown:
            raise UnsupportedError(
                f"remote tables {unknown} are not tables of version {version} ({[t.name for t in ps_cfg.tables]})"
            )
        before = None
        if previous is not None and all(
            n in previous.tables.tables and not isinstance(previous.tables[n], FrozenTable) for n in remote_names
        ):
            before = {n: previous.tables[n] for n in remote_names}
        opened = remote.open(ps_cfg, version, before)
    tables = FrozenTables.from_arrays(arrays, ps_cfg, opened)
    core = TrainerCore(setup.spec, setup.model_cfg, setup.train_cfg, tables)
    core_arrays, core_meta = _core_part(store, chain)
    core.import_state(core_arrays, core_meta)
    core.import_features(*bundle.read_features(store, chain))
    core.base_model.eval()
    roles = SpecRoles.of(setup.spec, user_feature, item_feature)
    return ServableModel(VersionInfo.of(m, setup.spec.name), setup, core, tables, roles, catalogue, retrieval, previous)


def _tables(
    store: VersionStore, chain, ps_cfg, previous: ServableModel | None, skip: set[str] = frozenset()
) -> dict[str, dict[str, np.ndarray]]:
    versions = [c.version for c in chain]
    same_tables = previous is not None and [t for t in previous.tables.cfg.tables] == list(ps_cfg.tables)
    if same_tables and previous.version in versions:
        todo = chain[versions.index(previous.version) + 1 :]
        out = {}
        for t in ps_cfg.tables:
            cur = previous.tables[t.name]
            if t.name in skip or not isinstance(cur, FrozenTable):
                continue
            table = {"ids": cur.ids, "rows": cur.rows.numpy()}
            for mf in todo:
                if any(p.meta.get("role") == "table" and p.meta.get("table") == t.name for p in mf.parts):
                    table = store.apply(table, mf.version, table_parts(t.name))
            out[t.name] = table
        return out
    out = {}
    for t in ps_cfg.tables:
        if t.name in skip:
            continue
        try:
            out[t.name] = store.materialize(chain[-1].version, table_parts(t.name), fields=("rows",))
        except KeyError:  # no row of this table yet: every id is cold
            log.info("version %d has no rows of table %s", chain[-1].version, t.name)
    return out


def _core_part(store: VersionStore, chain) -> tuple[dict, dict]:
    core = bundle.read_core(store, chain)
    if core is None:
        raise UnsupportedError(
            f"version {chain[-1].version} has no {bundle.CORE_PART} part (dense parameters and "
            "feature statistics): it was not written by freshrec's trainer"
        )
    return core
