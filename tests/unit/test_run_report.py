"""``freshrec report`` (trainer.runreport): plots over wall-clock time and a markdown summary, from a
synthetic run directory with a real version store, an empty run, and a store written by the gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.servedata import StoreTrainer, write_taobao_csv
from cluster.cli import main
from trainer.runreport import collect, write_report
from versions import PublishConfig, Publisher, VersionMetrics, VersionStore, model_digest

PNG = b"\x89PNG\r\n\x1a\n"
T0 = 1_795_000_000.0


def _records(n: int, t0: float = T0) -> list[dict]:
    return [
        {
            "file": f"part-{i}.parquet",
            "examples": 1000,
            "positives": 100,
            "auc": 0.6 + i / 100,
            "log_loss": 0.4 - i / 100,
            "train_seconds": 0.5,
            "examples_per_s": 2000.0 + 10 * i,
            "cumulative_auc": 0.6 + i / 200,
            "picked_up_at": t0 + 10 * i,
            "wall_time": t0 + 10 * i + 1,
        }
        for i in range(n)
    ]


def _run_dir(tmp_path, n=4, aucs=(0.70, 0.71, 0.40, 0.72)):
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(n)))
    store = VersionStore(run / "versions")
    pub = Publisher(store, PublishConfig(max_auc_drop=0.05, min_examples=0))
    for i, auc in enumerate(aucs):
        tables = {"user": {"ids": np.arange(3, dtype=np.int64), "rows": np.full((3, 2), i, np.float32)}}
        w = store.begin("full", step=i, meta={"spec_source": "taobao"})
        part = w.write_part("ps/shard-0/user", tables["user"], {"merge": "by_id", "role": "table", "table": "user"})
        w.commit(
            [part],
            model_digest=model_digest(tables),
            extra={
                "metrics": VersionMetrics(auc, 0.4, 1000, 1).to_dict(),
                "freshness": {"newest_file_picked_up_at": T0 + 10 * i},
            },
        )
        pub(w.version)
    return run


def test_a_run_gives_four_plots_over_wall_clock_time_and_a_summary(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["report", "--run-dir", str(run), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["freshness.png", "quality.png", "throughput.png", "versions.png"]
    assert all((out / p).read_bytes()[:8] == PNG and (out / p).stat().st_size > 5000 for p in pngs)
    md = (out / "report.md").read_text()
    assert md.startswith("# Run report: myrun (taobao)")
    assert "**4** committed, **3** published, **1** held back" in md
    assert "| 3 |" in md and "auc_drop" in md and "PUBLISHED 4" in md
    assert "data files trained: **4** (4,000 examples validated)" in md
    assert "![quality](quality.png)" in md and "Not drawn" not in md
    s = collect(run)
    # x axes are wall-clock times of the records, not file indices
    assert s.series("auc")[0] == [T0 + 10 * i + 1 for i in range(4)]
    assert [v.decision for v in s.versions] == ["publish", "publish", "hold", "publish"]
    assert all(v.to_commit_s is not None and v.to_commit_s > 0 for v in s.versions)


def test_titles_name_the_run_and_the_spec(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = []
    real = plt.Figure.savefig

    def spy(fig, *a, **k):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_title())
        return real(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    write_report(collect(_run_dir(tmp_path)), tmp_path / "out")
    assert len(titles) == 4 and all(t.startswith("myrun (taobao): ") for t in titles)
    assert any("wall-clock" in t for t in titles)


def test_a_run_without_data_says_so_instead_of_drawing_empty_axes(tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "quality.png").write_bytes(PNG)  # a stale plot of an earlier report goes
    assert main(["report", "--run-dir", str(run), "--out", str(tmp_path / "out")]) == 0
    assert not list((tmp_path / "out").glob("*.png"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**no data**" in md and "versions: none committed" in md
    assert "quality: no data file was trained" in md
    assert "no trained data file" in capsys.readouterr().out


def test_records_without_wall_time_are_not_plotted_and_the_report_says_why(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    recs = [{k: v for k, v in r.items() if k not in ("wall_time", "picked_up_at")} for r in _records(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "{half a line")
    paths = write_report(collect(run), tmp_path / "out")
    assert [p.name for p in paths] == ["report.md"]
    md = paths[0].read_text()
    assert "carry no progressive AUC / log-loss with a wall_time" in md and "line 4 is not JSON" in md


def test_a_missing_run_dir_is_a_user_error(tmp_path, capsys):
    assert main(["report", "--run-dir", str(tmp_path / "nope")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_a_real_store_written_by_the_training_loop(tmp_path):
    """Versions from the real VersionKeeper + gate (a flipped-label file held back): the report reads them."""
    from tests.support.data import flipped

    run = tmp_path / "real"
    t = StoreTrainer(run / "versions")
    for i in range(2):
        t.add_file(write_taobao_csv(run / "in" / f"part-{i}.csv", 1500, i, start_ts=1_511_658_000 + 3600 * i))
    t.add_file(
        flipped(write_taobao_csv(tmp_path / "x.csv", 1500, 2, start_ts=1_511_665_200), run / "in" / "part-2.csv")
    )
    s = collect(run)
    assert [v.decision for v in s.versions] == ["publish", "publish", "hold"] and s.spec == "taobao"
    paths = write_report(s, run / "report")
    names = [p.name for p in paths]
    assert names == ["versions.png", "report.md"]  # StoreTrainer writes no metrics.jsonl and no pick-up times
    md = paths[-1].read_text()
    assert "**3** committed, **2** published, **1** held back" in md and "**no data**" in md


@pytest.mark.parametrize("argv, message", [(["report", "--out"], "expected one argument")])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
