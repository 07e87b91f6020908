"""What a model version contains: the ONE writer and reader of a version's trainer parts and ``extra`` keys.

A committed version (:mod:`versions`) holds the parameter-server tables (written by the shards
themselves, ``role: table``) and this bundle::

    part  trainer/core       role dense    dense parameters, dense optimizer state, feature
                                           statistics (arrays); counters and optimizer groups (meta)
    part  trainer/features   no role       the dynamic-feature state (trainer.features), whole, when
                                           the spec declares ``dynamic:``
    part  data/ledger        keyed         the data ledger: one entry per data file (name, sha256,
                                           size, mtime, rows taken, complete, status); a delta holds
                                           only the entries that changed since its parent
    part  data/dedup         keyed         the dedup window: recent event ids with their event time
                                           and arrival order; a delta holds the ids added since its
                                           parent and, as ``deleted``, the ids the window forgot
    part  data/state         whole         watermark, row ordinal and the deferred late rows (in every
                                           version; small: the rows held back for the next data file)
    extra spec_yaml, spec_source, config    the feature spec's YAML and the run configuration
    manifest.ledger                          a reference: {"part": "data/ledger", "files", "rows",
                                             "entries": the entries recorded since the parent}

The ``data/*`` parts are bookkeeping of the data layer, not model content: ``data/ledger`` and
``data/dedup`` are keyed parts (merged over the chain by id, like tables, so a delta carries only
what changed and compaction keeps them); all three have ``role: pending``, which :meth:`versions.VersionStore.digest` leaves out of the
``model_digest`` (two runs that trained the same rows from copies of the same files, with
different modification times, are the same model).

Everything else (trainer, serving, search, ``freshrec evaluate``) goes through the functions
below; no other module spells a part name or one of these ``extra`` keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

CORE_PART = "trainer/core"
FEATURES_PART = "trainer/features"
LEDGER = "data/ledger"  # the keyed data parts, selected by meta (the name changes under compaction)
DEDUP = "data/dedup"
STATE = "data/state"
_DATA_PARTS = (LEDGER, DEDUP, STATE)
LEDGER_FORMAT = 4  # manifest.ledger: a reference to the data/ledger part (formats 1-3 carried the entries)

_SPEC_YAML, _SPEC_SOURCE, _CONFIG, _SEARCH_SPEC = "spec_yaml", "spec_source", "config", "search_spec"


# ---------------------------------------------------------------------------- extra
def version_extra(spec_source: str, run_config: dict | None = None) -> dict:
    """What every manifest carries so that a version is self-contained: the feature spec's YAML text
    (``spec_source`` is a spec file or a built-in name) and the run's configuration."""
    from pathlib import Path

    from trainer.data.spec import builtin_specs

    path = Path(spec_source)
    if not path.exists():
        path = builtin_specs()[str(spec_source)]
    return {
        _SPEC_SOURCE: str(spec_source),
        _SPEC_YAML: path.read_text(encoding="utf-8"),
        _CONFIG: dict(run_config or {}),
    }


def spec_yaml(manifest) -> str | None:
    """The feature spec's YAML text a version carries (None: not written by freshrec's trainer)."""
    return (manifest.extra or {}).get(_SPEC_YAML)


def spec_source(manifest) -> str | None:
    return (manifest.extra or {}).get(_SPEC_SOURCE)


def load_spec(manifest):
    """The :class:`trainer.data.FeatureSpec` of a version; ValueError when it carries none."""
    import yaml

    from trainer.data.spec import spec_from_dict

    text = spec_yaml(manifest)
    if text is None:
        raise ValueError(f"version {manifest.version} does not carry its feature spec (manifest extra.{_SPEC_YAML})")
    return spec_from_dict(yaml.safe_load(text), where=f"the spec of version {manifest.version}")


def run_config(manifest) -> dict:
    """The run configuration a version carries (``{"model": ..., "train": ..., "ps": ..., ...}``; {} if none)."""
    return dict((manifest.extra or {}).get(_CONFIG) or {})


def search_spec(manifest) -> dict | None:
    """The search spec of a search ranker's version (None: not a search ranker)."""
    return (manifest.extra or {}).get(_SEARCH_SPEC)


def configs(manifest):
    """(ModelConfig, TrainConfig, PSConfig) of a version (defaults where it says nothing)."""
    from paramserver.config import PSConfig
    from trainer.config import TrainConfig, model_config_of_version

    cfg = run_config(manifest)
    model_cfg = model_config_of_version(cfg.get("model"))  # a version from before model.wide: wide off
    train_cfg = TrainConfig.from_dict(dict(cfg["train"])) if cfg.get("train") else TrainConfig()
    ps = PSConfig.settings_from_dict(dict(cfg["ps"])) if cfg.get("ps") else PSConfig()
    return model_cfg, train_cfg, ps


# ---------------------------------------------------------------------------- writing
@dataclasses.dataclass(frozen=True)
class DataExport:
    """The data layer's state at a cut (:meth:`trainer.data.DataState.export`): keyed arrays per part
    (``ids`` + per-id arrays, ``deleted`` in a delta) and the ledger reference for the manifest."""

    ledger: dict[str, np.ndarray]
    dedup: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    summary: dict  # {"files": n, "rows": n, "entries": [entries changed since the parent]}


def write_model(
    writer, core: tuple[dict, dict], features: tuple[dict, dict] | None = None, data: DataExport | None = None
) -> list:
    """Write the trainer's parts of version ``writer`` (a :class:`versions.VersionWriter`); returns their
    PartInfos (the shards write their own). ``core`` is (arrays, meta) of ``TrainerCore.export_state``."""
    arrays, meta = core
    parts = [writer.write_part(CORE_PART, _core_arrays(arrays, meta), {"role": "dense", "core": meta})]
    if features is not None:
        parts.append(writer.write_part(FEATURES_PART, features[0], {"role": "features", "features": features[1]}))
    if data is not None:
        for name, arrays_ in ((LEDGER, data.ledger), (DEDUP, data.dedup)):  # keyed: a delta holds the changes
            if writer.kind == "full" or len(arrays_["ids"]) or len(arrays_.get("deleted", ())):
                parts.append(
                    writer.write_part(
                        name,
                        arrays_,
                        {
                            "role": "pending",
                            "table": name,
                            "merge": "by_id",
                            "rows_after": 0,
                            "owner": "trainer.bundle",
                        },
                    )
                )
        parts.append(
            writer.write_part(
                STATE,
                data.state,
                {
                    "role": "pending",
                    "table": STATE,  # whole, small
                    "owner": "trainer.bundle",
                },
            )
        )
    return parts


def ledger_ref(summary: Mapping | None) -> dict:
    """What ``manifest.ledger`` holds: the totals and the entries changed by this version (bounded), not
    the whole ledger (which is the ``data/ledger`` part)."""
    summary = dict(summary or {})
    return {
        "version": LEDGER_FORMAT,
        "part": LEDGER,
        "files": int(summary.get("files", 0)),
        "rows": int(summary.get("rows", 0)),
        "entries": list(summary.get("entries", ())),
    }


def model_rows(parts: Sequence, kind: str) -> int:
    """Embedding rows the model holds after a version with ``parts`` (the data parts are not rows)."""
    from versions.manifest import rows_of

    return rows_of([p for p in parts if p.meta.get("table") not in _DATA_PARTS], kind)


def _core_arrays(arrays: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    """The core's arrays plus the feature statistics as arrays (so the digest covers them)."""
    stats = meta["stats"]
    return {
        **arrays,
        "stats/count": np.array([stats["count"]], np.int64),
        "stats/mean": np.asarray(stats["mean"], np.float64),
        "stats/m2": np.asarray(stats["m2"], np.float64),
    }


# ---------------------------------------------------------------------------- reading
def _chain(store, version_or_chain):
    return store.chain(version_or_chain) if isinstance(version_or_chain, int) else list(version_or_chain)


def read_core(store, version_or_chain) -> tuple[dict, dict] | None:
    """(arrays, meta) of the dense part of a version (the newest of its chain that has one), or None."""
    for m in reversed(_chain(store, version_or_chain)):
        for p in m.parts:
            if p.name == CORE_PART:
                return store.read_part(m.version, CORE_PART), p.meta["core"]
    return None


def read_features(store, version_or_chain) -> tuple[dict | None, dict | None]:
    """(arrays, meta) of the dynamic-feature part (the newest in the chain), or (None, None)."""
    for m in reversed(_chain(store, version_or_chain)):
        for p in m.parts:
            if p.name == FEATURES_PART:
                return store.read_part(m.version, FEATURES_PART), p.meta.get("features", {})
    return None, None


def has_data_state(store, version: int) -> bool:
    return any(
        p.meta.get("table") == LEDGER and p.meta.get("role") == "pending" for m in store.chain(version) for p in m.parts
    )


def read_data(store, version: int) -> dict[str, dict[str, np.ndarray]] | None:
    """The data layer's keyed arrays of ``version`` merged over its chain: {"ledger", "dedup", "state"}
    (None for a version written before the data layer's state was versioned)."""
    from versions import table_parts

    if not has_data_state(store, version):
        return None
    out = {}
    for key, name in (("ledger", LEDGER), ("dedup", DEDUP), ("state", STATE)):
        try:
            out[key] = store.materialize(version, table_parts(name, role="pending"))
        except KeyError:
            out[key] = None
    return out


def read_ledger(store, version: int):
    """The whole :class:`trainer.data.DataLedger` of ``version``: the ``data/ledger`` part, or (a version
    written before it) the ledger its manifest carried."""
    from trainer.data.ledger import DataLedger

    data = read_data(store, version)
    if data is not None and data["ledger"] is not None:
        return DataLedger.from_arrays(data["ledger"])
    core = read_core(store, version)
    if core is not None and "ledger" in core[1]:
        return DataLedger.from_dict(core[1]["ledger"])
    return DataLedger.from_dict(store.manifest(version).ledger or {"version": 3, "entries": []})


def ledger_totals(manifest) -> tuple[int, int]:
    """(data files, rows taken) a version has consumed, from its manifest alone."""
    ledger = manifest.ledger or {}
    if ledger.get("version") == LEDGER_FORMAT:
        return int(ledger.get("files", 0)), int(ledger.get("rows", 0))
    entries = [e for e in ledger.get("entries", ()) if isinstance(e, dict)]
    return len(entries), sum(int(e.get("rows", 0) or 0) for e in entries)
