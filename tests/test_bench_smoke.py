"""The benchmark machinery works end to end with tiny counts (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from bench.run import main

FIELDS = {
    "scenario", "target", "conns", "calls", "ok", "bad", "errors", "lost", "first_error",
    "extra_info", "wall_s", "calls_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms",
    "cpu_s", "cpu_s_stat", "cpu_source", "cpu_us_per_call", "gen_cpu_us_per_call", "gen_busy",
    "peak_rss_kib", "rss_kib", "cpu_x_floor",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    code = main(["--calls", "300", "--conns", "1,4", "--scenarios", "say,vars", "--json", str(out)])
    return code, json.loads(out.read_text())


def test_every_case_ran_and_every_call_was_answered_correctly(report):
    code, data = report
    assert code == 0
    cases = [(r["target"], r["scenario"], r["conns"]) for r in data["results"]]
    assert cases == [
        ("floor", "floor", 1), ("runner", "say", 1), ("runner", "vars", 1),
        ("floor", "floor", 4), ("runner", "say", 4), ("runner", "vars", 4),
    ]
    for r in data["results"]:
        assert r["calls"] == 300 and r["ok"] == 300, r
        assert r["bad"] == r["errors"] == r["lost"] == 0 and r["first_error"] is None


def test_the_figures_are_all_there_and_sane(report):
    _, data = report
    for r in data["results"]:
        assert set(r) == FIELDS
        assert r["calls_per_s"] > 0 and r["cpu_us_per_call"] > 0 and r["cpu_x_floor"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        assert r["peak_rss_kib"] >= r["rss_kib"] > 1000
    floors = [r for r in data["results"] if r["target"] == "floor"]
    assert all(r["cpu_x_floor"] == 1.0 for r in floors)
    vars_cases = [r for r in data["results"] if r["scenario"] == "vars"]
    assert all(r["extra_info"] == 3 * r["calls"] for r in vars_cases)
    assert data["meta"]["calls"] == 300


def test_the_memory_mode_reports_growth(tmp_path):
    out = tmp_path / "memory.json"
    code = main(["--memory", "--memory-calls", "12000", "--memory-conns", "4", "--json", str(out)])
    mem = json.loads(out.read_text())["memory"]
    assert mem["calls"] == 12000 and mem["wrong"] == 0
    assert [s["calls"] for s in mem["samples"]][0] == 10000
    assert mem["rss_after_1e4_kib"] > 1000 and isinstance(mem["growth_pct"], float)
    assert code in (0, 1)  # growth over so few calls is noise; the mode itself must work
