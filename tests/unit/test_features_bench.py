"""Dynamic features in the quality replay and the CLI benches: both models of `bench quality` see the same
features, the progressive scores are those of the points, and `bench features` refuses a static spec."""

import json

import numpy as np

from cluster.cli import main
from tests.support.data import small_csv
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.quality import log_files, run_quality, with_features


def test_quality_replay_with_dynamic_features_scores_what_step_file_scores(tmp_path):
    spec = load_spec("taobao_dynamic")
    data = [small_csv(tmp_path / f"log{i}.csv", 1500, i) for i in range(3)]
    files, names = log_files(spec, data, n_files=5)
    ann = with_features(spec, files)
    assert ann[0].dense.shape[1] == len(spec.model_dense_names) and "user_items" in ann[3].sparse
    assert (ann[0].lengths["user_items"][:1] == 0).all()  # the very first event has no history
    r = run_quality("t", spec, files, names, ModelConfig(), TrainConfig(batch_size=128), points=[2, 4])
    by_file = r.incremental_auc_by_file
    assert [p.auc_incremental for p in r.points] == [by_file[2], by_file[4]]
    assert all(0.4 < p.auc_full_retrain <= 1 for p in r.points)


def test_bench_quality_and_features_cli_with_a_dynamic_spec(tmp_path, capsys):
    data = [small_csv(tmp_path / f"log{i}.csv", 1500, i) for i in range(3)]
    assert (
        main(
            [
                "bench",
                "quality",
                "--spec",
                "taobao_dynamic",
                "--data",
                *map(str, data),
                "--files",
                "4",
                "--warmup",
                "2",
                "--points",
                "1",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["spec"] == "taobao_userbehavior_dynamic" and out["feature_state"]["item_id"]["bytes_per_id"] == 80
    assert main(["bench", "features", "--spec", "taobao", "--input", str(data[0])]) == 2
    assert "declares no dynamic features" in capsys.readouterr().err
    assert main(["bench", "features", "--input", str(data[0]), "--rounds", "1", "--every", "5m", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 1500 and out["ratio_features_vs_reader"] > 0 and len(out["load_avg_1m"]) == 2
    assert np.isfinite(out["features_rows_per_s"])
