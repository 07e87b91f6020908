"""The report of a training run: PNG plots and a markdown summary, from what the run left behind.

    summary = collect("runs/r1")                 # RUN_DIR/metrics.jsonl + the version store
    paths = write_report(summary, "runs/r1/report")
    # report.md, quality.png, throughput.png, freshness.png, versions.png (each only with data)

Inputs: ``metrics.jsonl`` (one record per data file: progressive AUC / log-loss scored before
training on it, examples/s, ``wall_time`` when the file was done, ``picked_up_at`` when it was
taken) and the version store (each manifest's commit time, window metrics and freshness, each
``GATE.json``: published or held back, and why; the PUBLISHED / PINNED pointers).

Every time axis is **wall-clock time** (UTC), not the data file's index. A plot whose series has
no point is not drawn; the summary says why instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path

from versions import VersionStore


@dataclasses.dataclass
class VersionRow:
    version: int
    kind: str
    committed_at: float
    decision: str | None  # "publish" | "hold" | None (never judged: written before the gate)
    code: str | None
    reason: str | None
    decided_at: float | None
    auc: float | None
    picked_up_at: float | None

    @property
    def to_commit_s(self) -> float | None:
        """Freshness at commit: from the newest data file being taken to the version being committed."""
        return self.committed_at - self.picked_up_at if self.picked_up_at is not None else None

    @property
    def to_publish_s(self) -> float | None:
        """Freshness at publication (published versions only)."""
        if self.picked_up_at is None or self.decision != "publish" or self.decided_at is None:
            return None
        return self.decided_at - self.picked_up_at


@dataclasses.dataclass
class RunSummary:
    run: str
    spec: str
    records: list[dict]
    versions: list[VersionRow]
    pointers: dict
    notes: list[str]

    def series(self, key: str, time_key: str = "wall_time") -> tuple[list[float], list[float]]:
        """(times, values) of the records that have both, finite."""
        xs, ys = [], []
        for r in self.records:
            t, v = r.get(time_key), r.get(key)
            if _finite(t) and _finite(v):
                xs.append(float(t))
                ys.append(float(v))
        return xs, ys


def collect(run_dir: str | Path, store_url: str | None = None, storage_options: dict | None = None) -> RunSummary:
    """Read a run directory (and its store: ``RUN_DIR/versions`` unless ``store_url``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory: pass the --run-dir of a freshrec train/stream run")
    notes = []
    metrics = run_dir / "metrics.jsonl"
    records = []
    if metrics.exists():
        for i, line in enumerate(metrics.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    notes.append(f"metrics.jsonl line {i} is not JSON (a record being written?): skipped")
    else:
        notes.append(f"{metrics} does not exist: no data file was trained in this run directory")
    store = VersionStore(store_url or str(run_dir / "versions"), storage_options)
    versions, pointers, spec = [], {}, None
    try:
        manifests = store.list()
        pointers = {k: v for k, v in store.serving_state().items() if k in ("latest", "published", "pinned")}
    except Exception as exc:
        manifests = []
        notes.append(f"the version store {store.url} could not be read ({type(exc).__name__}: {exc})")
    for m in manifests:
        gate = store.gate_decision(m.version) or {}
        metrics_extra = m.extra.get("metrics") or {}
        picked = (m.extra.get("freshness") or {}).get("newest_file_picked_up_at")
        versions.append(
            VersionRow(
                m.version,
                m.kind,
                m.committed_at,
                gate.get("decision"),
                gate.get("code"),
                gate.get("reason"),
                gate.get("decided_at"),
                _num(metrics_extra.get("progressive_auc")),
                _num(picked),
            )
        )
        spec = m.extra.get("spec_source") or (m.extra.get("config") or {}).get("spec") or spec
    if spec is None:
        cfg = run_dir / "config.yaml"
        spec = "unknown spec"
        if cfg.exists():
            import yaml

            spec = str((yaml.safe_load(cfg.read_text()) or {}).get("spec", spec))
    return RunSummary(run_dir.resolve().name, str(spec), records, versions, pointers, notes)


# ------------------------------------------------------------------ writing
def write_report(s: RunSummary, out_dir: str | Path, dpi: int = 90) -> list[Path]:
    """Write the PNGs that have data and ``report.md``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, missing = [], {}
    for name, draw in (
        ("quality", _quality),
        ("throughput", _throughput),
        ("freshness", _freshness),
        ("versions", _versions),
    ):
        why_not = draw(s, out / f"{name}.png", dpi)
        if why_not:
            missing[name] = why_not
            (out / f"{name}.png").unlink(missing_ok=True)  # no stale plot from an earlier report
        else:
            written.append(out / f"{name}.png")
    md = out / "report.md"
    md.write_text(_markdown(s, [p.name for p in written], missing))
    return [*written, md]


def _title(s: RunSummary, what: str) -> str:
    return f"{s.run} ({s.spec}): {what}"


def _dates(ts):
    return [datetime.datetime.fromtimestamp(t, datetime.UTC) for t in ts]


def _axes_time(ax):
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.set_xlabel("wall-clock time (UTC)")
    ax.grid(alpha=0.3)


def _save(fig, path: Path, dpi: int) -> None:
    import matplotlib.pyplot as plt

    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _quality(s: RunSummary, path: Path, dpi: int) -> str | None:
    import matplotlib.pyplot as plt

    t_auc, auc = s.series("auc")
    t_ll, ll = s.series("log_loss")
    if not auc and not ll:
        return _no_data(s, "progressive AUC / log-loss")
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    if auc:
        a1.plot(_dates(t_auc), auc, "o-", ms=3, label="progressive AUC of each data file (scored before training)")
    t_c, cum = s.series("cumulative_auc")
    if cum:
        a1.plot(_dates(t_c), cum, "-", color="tab:gray", label="cumulative AUC")
    pub = [v for v in s.versions if v.decision == "publish" and v.auc is not None]
    held = [v for v in s.versions if v.decision == "hold" and v.auc is not None]
    if pub:
        a1.plot(
            _dates([v.committed_at for v in pub]),
            [v.auc for v in pub],
            "^",
            color="tab:green",
            label="version published (its window's AUC)",
        )
    if held:
        a1.plot(
            _dates([v.committed_at for v in held]),
            [v.auc for v in held],
            "x",
            color="tab:red",
            ms=9,
            mew=2,
            label="version held back",
        )
    a1.set_ylabel("AUC")
    a1.legend(fontsize=8, loc="lower right")
    a1.grid(alpha=0.3)
    a1.set_title(_title(s, "progressive validation over wall-clock time"), fontsize=10)
    if ll:
        a2.plot(_dates(t_ll), ll, "o-", ms=3, color="tab:orange")
    a2.set_ylabel("log-loss (nats)")
    _axes_time(a2)
    _save(fig, path, dpi)
    return None


def _throughput(s: RunSummary, path: Path, dpi: int) -> str | None:
    import matplotlib.pyplot as plt

    t, eps = s.series("examples_per_s")
    if not eps:
        return _no_data(s, "throughput")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(_dates(t), eps, "o-", ms=3, color="tab:green")
    ax.set_ylabel("training examples / s")
    ax.set_title(_title(s, "training throughput per data file"), fontsize=10)
    _axes_time(ax)
    _save(fig, path, dpi)
    return None


def _freshness(s: RunSummary, path: Path, dpi: int) -> str | None:
    import matplotlib.pyplot as plt

    commit = [(v.committed_at, v.to_commit_s) for v in s.versions if v.to_commit_s is not None]
    publish = [(v.decided_at, v.to_publish_s) for v in s.versions if v.to_publish_s is not None]
    if not commit:
        return (
            "no version records when its newest data file was taken (manifest extra.freshness: written by "
            "freshrec train/stream since the publish gate)"
            if s.versions
            else "no committed version"
        )
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(_dates([c[0] for c in commit]), [c[1] for c in commit], "o-", ms=3, label="data file taken -> committed")
    if publish:
        ax.plot(
            _dates([p[0] for p in publish]),
            [p[1] for p in publish],
            "^",
            color="tab:green",
            label="data file taken -> published",
        )
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    ax.set_title(_title(s, "freshness of each version"), fontsize=10)
    _axes_time(ax)
    _save(fig, path, dpi)
    return None


def _versions(s: RunSummary, path: Path, dpi: int) -> str | None:
    import matplotlib.pyplot as plt

    if not s.versions:
        return "no committed version"
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for decision, style, color, label in (
        ("publish", "^", "tab:green", "published"),
        ("hold", "x", "tab:red", "held back"),
        (None, "o", "tab:gray", "not judged by the gate"),
    ):
        vs = [v for v in s.versions if v.decision == decision]
        if vs:
            ax.plot(
                _dates([v.committed_at for v in vs]),
                [v.version for v in vs],
                style,
                color=color,
                ms=7,
                label=f"{label} ({len(vs)})",
            )
    ax.set_ylabel("version")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(_title(s, "versions committed, published and held back"), fontsize=10)
    _axes_time(ax)
    _save(fig, path, dpi)
    return None


def _no_data(s: RunSummary, what: str) -> str:
    if not s.records:
        return "no data file was trained (metrics.jsonl holds no record)"
    return f"the {len(s.records)} record(s) of metrics.jsonl carry no {what} with a wall_time"


# ------------------------------------------------------------------ markdown
def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt(v, spec: str = ".4f") -> str:
    return format(v, spec) if _finite(v) else "-"


def _median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if _finite(x))
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _markdown(s: RunSummary, images: list[str], missing: dict[str, str]) -> str:
    r = s.records
    lines = [f"# Run report: {s.run} ({s.spec})", ""]
    if r:
        times = [x["wall_time"] for x in r if _finite(x.get("wall_time"))]
        examples = sum(int(x.get("examples", 0) or 0) for x in r)
        lines += [
            f"* data files trained: **{len(r)}** ({examples:,} examples validated), "
            f"{_iso(min(times)) if times else '-'} to {_iso(max(times)) if times else '-'}",
            f"* progressive AUC: last file {_fmt(r[-1].get('auc'))}, cumulative "
            f"{_fmt(r[-1].get('cumulative_auc'))}; log-loss last file {_fmt(r[-1].get('log_loss'))}",
            f"* throughput: median {_fmt(_median([x.get('examples_per_s') for x in r]), ',.0f')} examples/s",
        ]
    else:
        lines += ["* **no data**: no data file was trained in this run directory (metrics.jsonl holds no record)"]
    pub = [v for v in s.versions if v.decision == "publish"]
    held = [v for v in s.versions if v.decision == "hold"]
    unjudged = [v for v in s.versions if v.decision is None]
    if s.versions:
        p = s.pointers
        lines += [
            f"* versions: **{len(s.versions)}** committed, **{len(pub)}** published, **{len(held)}** held back"
            + (f", {len(unjudged)} not judged by the gate" if unjudged else ""),
            f"* serving pointers: LATEST {p.get('latest', '-')}, PUBLISHED {p.get('published') or '-'}, "
            f"PINNED {p.get('pinned') or '-'}",
        ]
        fc = _median([v.to_commit_s for v in s.versions])
        fp = _median([v.to_publish_s for v in s.versions])
        if fc is not None:
            lines += [
                f"* freshness (data file taken -> version): median {fc:.2f} s committed"
                + (f", {fp:.2f} s published" if fp is not None else "")
            ]
    else:
        lines += ["* versions: none committed (no version store, or an empty one)"]
    lines += [""]
    if held:
        lines += ["## Versions held back", "", "| version | committed | reason |", "| --- | --- | --- |"]
        lines += [f"| {v.version} | {_iso(v.committed_at)} | {v.code}: {v.reason} |" for v in held]
        lines += [""]
    if images:
        lines += ["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""]
    if missing:
        lines += ["## Not drawn", ""] + [f"* {name}: {why}" for name, why in missing.items()] + [""]
    if s.notes:
        lines += ["## Notes", ""] + [f"* {n}" for n in s.notes] + [""]
    return "\n".join(lines)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v) -> float | None:
    return float(v) if _finite(v) else None
