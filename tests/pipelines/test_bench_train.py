"""pipelines.bench_train: one tiny run of every measurement, end to end in fresh processes."""

from __future__ import annotations

import json

import pytest

from pipelines import bench_train


def test_tiny_run_reports_every_row_and_the_end_to_end_ratio(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert bench_train.main(["--scale", "4", "--steps", "1", "--batch", "1", "--rounds", "1",
                             "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    steps = {(row["phase"], row["step"]) for row in r["rows"]}
    assert {("default", "reference"), ("default", "optimised"), ("tune_malloc", "reference"),
            ("tune_malloc", "optimised")} <= steps
    assert r["grad_rel_diff"] < 1e-4
    e = r["end_to_end"]
    assert e["rounds_steps"] == 1 and set(e["times"]) == {"reference", "optimised"}
    assert all(len(v["wall"]) == 1 and v["cpu"][0] > 0 for v in e["times"].values())
    assert e["speedup_cpu"] == (e["median_s"]["reference"]["cpu"]
                                / e["median_s"]["optimised"]["cpu"])
    assert "end to end, alternating fresh processes" in text


def test_a_failing_child_is_an_error(monkeypatch) -> None:
    monkeypatch.setattr(bench_train.sys, "executable", "false")
    with pytest.raises(RuntimeError, match="reference process failed"):
        bench_train._end_to_end(4, 1, 1, 1, 1)
