"""`python -m src bench --quick`: a smoke test that the bench runs and writes its table (it
measures nothing here; the bench is not part of the suite's timing), and the demo row read from
a run's stage timings."""

from __future__ import annotations

import json

from src.cli import main as cli_main

KEYS = {"name", "ours", "reference", "unit", "ratio", "target"}


def test_quick_bench_writes_every_row(tmp_path, monkeypatch):
    monkeypatch.setenv("BONEAGE_WORKING", str(tmp_path / "working"))
    timings = tmp_path / "run_all_timings.json"
    timings.write_text(json.dumps({"started": "2026-12-05T07:00:00+00:00", "total_s": 720.0, "jobs": "2",
                                   "stages": [{"stage": "train", "seconds": 600.0}, {"stage": "stack", "seconds": 20.0}]}))
    out = tmp_path / "bench"
    assert cli_main(["bench", "--quick", "--out", str(out), "--demo-timings", str(timings)]) == 0
    record = json.loads((out / "bench.json").read_text())
    names = [row["name"] for row in record["rows"]]
    assert names == ["loader", "preprocess", "inference_tta", "train_step", "demo_end_to_end"]
    for row in record["rows"]:
        assert KEYS <= set(row) and row["ours"] > 0 and row["reference"] > 0, row
    demo = record["rows"][-1]
    assert demo["ours"] == 720.0 and demo["ratio"] == 1.25 and demo["met"] is True  # 900 s budget / 720 s
    assert demo["extra"]["stages"] == {"train": 600.0, "stack": 20.0}
    assert record["machine"]["cores"] >= 1 and "torch" in record["machine"]
    table = (out / "bench.md").read_text()
    assert "| loader |" in table and "| demo_end_to_end |" in table and "QUICK" in table


def test_bench_refuses_an_unknown_row(tmp_path, capsys):
    assert cli_main(["bench", "--rows", "loader,warp", "--out", str(tmp_path)]) != 0
    assert "warp" in capsys.readouterr().err
