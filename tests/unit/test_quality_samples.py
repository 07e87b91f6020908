"""The public CTR samples for `bench quality`: re-created from DeepCTR's files by bench/deepctr_samples.py
(Criteo converted to the Kaggle layout the built-in `criteo` spec reads), and skipped with a clear line
when absent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import deepctr_samples, quality
from cluster.cli import main
from trainer.data import Validator, load_spec, read_data_file

HEADER = "label," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))
ROWS = [  # DeepCTR's layout: floats for the counts, empty fields where missing (two rows as in the real file)
    "0,,3,260.0,,17668.0,,,33.0,,,,0.0,,05db9164,08d6d899,9143c832,f56b7dd5,25c83c98,7e0ccccf,df5c2d18,"
    "0b153874,a73ee510,8f48ce11,a7b606c4,ae1bb660,eae197fd,b28479f6,bfef54b3,bad5ee18,e5ba7672,87c6f83c,,,"
    "0429f84b,,3a171ecb,c0d61a5c,,",
    "1,,-1,19.0,35.0,30251.0,247.0,1.0,35.0,160.0,,1.0,,35.0,68fd1e64,04e09220,95e13fd4,a1e6a194,25c83c98,"
    "fe6b92e5,f819e175,062b5529,a73ee510,ab9456b4,6153cf57,8882c6cd,769a1844,b28479f6,69f825dd,23056e4f,"
    "d4bb7bd8,6fc84bfb,,,5155d8a3,,be7c41b4,ded4aac9,,",
]
AVAZU = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
    "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21\n"
    "1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,"
    "ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79\n"
)


def _src(tmp_path, rows=ROWS, header=HEADER):
    src = tmp_path / "examples"
    src.mkdir()
    (src / "criteo_sample.txt").write_text("\n".join([header, *rows]) + "\n")
    (src / "avazu_sample.txt").write_text(AVAZU)
    return src


def test_the_criteo_sample_becomes_the_kaggle_layout_the_builtin_spec_reads(tmp_path):
    out = tmp_path / "deepctr_samples"
    assert deepctr_samples.main(["--src", str(_src(tmp_path)), "--out", str(out)]) == 0
    lines = (out / "criteo_sample.tsv").read_text().splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == 40 for line in lines)
    assert lines[0].split("\t")[:6] == ["0", "", "3", "260", "", "17668"]  # 260.0 -> 260, missing stays empty
    batch = read_data_file(out / "criteo_sample.tsv", Validator(load_spec("criteo")))
    assert len(batch) == 2 and batch.label.tolist() == [0.0, 1.0]
    assert (out / "avazu_sample.txt").read_text() == AVAZU  # copied unchanged
    assert len(read_data_file(out / "avazu_sample.txt", Validator(load_spec("avazu")))) == 1
    source = (out / "SOURCE.md").read_text()
    assert "python -m bench.deepctr_samples" in source and "2 rows" in source and "sha256" in source


def test_a_wrong_deepctr_file_is_refused_clearly(tmp_path, capsys):
    bad = _src(tmp_path, rows=[ROWS[0].replace("260.0", "260.5")])
    assert deepctr_samples.main(["--src", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "column I3: '260.5' is not a whole number" in capsys.readouterr().err
    assert deepctr_samples.main(["--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "point --src at a DeepCTR checkout's examples/ folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not DeepCTR's"):
        deepctr_samples.criteo_to_kaggle(["a,b", "1,2"])


def test_bench_quality_skips_an_absent_sample_with_a_line_saying_how_to_make_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "absent" / "criteo_sample.tsv"
    monkeypatch.setitem(quality.PRESETS, "criteo", ("criteo", missing, "files"))
    assert main(["bench", "quality", "--dataset", "criteo", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["dataset"] == "criteo" and out["skipped"].startswith(f"skipped: {missing} not found")
    assert "python -m bench.deepctr_samples" in captured.err
    assert main(["bench", "quality", "--dataset", "all", "--data", str(missing)]) == 2
    assert "--dataset all replays the presets' shared logs" in capsys.readouterr().err


def test_seeds_report_the_spread_of_model_minus_lr(tmp_path, monkeypatch, capsys):
    seen = []

    def one(args):
        seen.append(args.seed)
        return {"auc_incremental": 0.6 + 0.01 * args.seed, "auc_lr": 0.6, "auc_full_retrain": 0.6, "auc_gap": 0.0}

    monkeypatch.setattr(quality, "_run_one", one)
    assert main(["bench", "quality", "--data", str(tmp_path), "--seed", "3", "--seeds", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert seen == [3, 4, 5] and out["seeds"]["seeds"] == [3, 4, 5]
    spread = out["seeds"]["auc_incremental_minus_lr"]
    assert np.isclose(spread["mean"], 0.04) and np.isclose(spread["min"], 0.03) and np.isclose(spread["max"], 0.05)


@pytest.mark.parametrize("dataset", ["avazu", "criteo"])
def test_on_a_public_sample_the_progressive_auc_is_at_least_the_ftrl_lrs(dataset, capsys):
    """Issue 24 on the samples with the defaults (seed 0; seeds 1-2 are in docs/benchmarks.md): the Avazu one
    was below the LR (0.4732 vs 0.5027) until the wide part's count anchor and intercept. Deterministic."""
    path = {"avazu": quality.AVAZU_SAMPLE, "criteo": quality.CRITEO_SAMPLE}[dataset]
    if not path.exists():
        pytest.skip(f"{path} not found: make it with python -m bench.deepctr_samples (docs/benchmarks.md)")
    cmd = ["bench", "quality", "--dataset", dataset, "--data", str(path), "--no-full-retrain", "--json"]
    assert main(cmd) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["points"] == 4 and out["auc_incremental"] >= out["auc_lr"], out
