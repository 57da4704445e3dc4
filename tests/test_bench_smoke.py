"""The benchmark machinery works end to end with tiny counts (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import noise
from bench.run import main, pin_apart

FIELDS = {
    "scenario", "target", "conns", "calls", "ok", "bad", "errors", "lost", "first_error",
    "extra_info", "wall_s", "calls_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms",
    "cpu_s", "cpu_s_stat", "cpu_source", "cpu_us_per_call", "gen_cpu_us_per_call", "gen_busy",
    "peak_rss_kib", "rss_kib", "cpu_x_floor", "round",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    code = main(["--calls", "300", "--conns", "1,4", "--scenarios", "say,vars", "--rounds", "2",
                 "--noise", "0.2", "--json", str(out)])
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
        assert r["calls"] == 600 and r["ok"] == 600 and r["rounds"] == 2, r
        assert r["bad"] == r["errors"] == r["lost"] == 0 and r["first_error"] is None
    rounds = [(r["target"], r["scenario"], r["conns"], r["round"]) for r in data["rounds"]]
    assert rounds == [
        ("floor", "floor", 1, 0), ("floor", "floor", 1, 1),
        ("runner", "say", 1, 0), ("runner", "say", 1, 1),
        ("runner", "vars", 1, 0), ("runner", "vars", 1, 1),
        ("floor", "floor", 4, 0), ("floor", "floor", 4, 1),
        ("runner", "say", 4, 0), ("runner", "say", 4, 1),
        ("runner", "vars", 4, 0), ("runner", "vars", 4, 1),
    ]


def test_a_case_row_holds_the_medians_of_its_rounds(report):
    _, data = report
    for row in data["results"]:
        runs = [r for r in data["rounds"]
                if (r["target"], r["scenario"], r["conns"]) == (row["target"], row["scenario"],
                                                                row["conns"])]
        ratios = sorted(r["cpu_x_floor"] for r in runs)
        assert row["cpu_x_floor"] == round(sum(ratios) / 2, 4)  # the median of two
        assert row["peak_rss_kib"] == max(r["peak_rss_kib"] for r in runs)
        assert row["calls"] == sum(r["calls"] for r in runs)


def test_the_figures_are_all_there_and_sane(report):
    _, data = report
    for r in data["rounds"]:
        assert set(r) == FIELDS
    for r in data["results"]:
        assert set(r) == FIELDS | {"rounds"}
        assert r["calls_per_s"] > 0 and r["cpu_us_per_call"] > 0 and r["cpu_x_floor"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        assert r["peak_rss_kib"] >= r["rss_kib"] > 1000
    floors = [r for r in data["results"] if r["target"] == "floor"]
    assert all(r["cpu_x_floor"] == 1.0 for r in floors)
    vars_cases = [r for r in data["results"] if r["scenario"] == "vars"]
    assert all(r["extra_info"] == 3 * r["calls"] for r in vars_cases)
    assert data["meta"]["calls"] == 300 and data["meta"]["rounds"] == 2
    assert data["meta"]["pin"] is True


def test_the_run_records_the_machine_noise_it_ran_on(report):
    _, data = report
    measured = data["meta"]["noise"]
    assert measured["seconds"] == 0.2 and measured["cpus"] >= 1
    assert measured["stalls"] >= 0 and measured["stalled_ms"] >= measured["longest_ms"] >= 0
    assert noise.describe(measured).startswith("machine noise: with all")


def test_noise_counts_only_the_gaps_that_are_stalls():
    ticks = iter([0, 100, 1_000_200, 1_000_300, 4_000_300, 4_000_400, 10**9 + 1])
    assert noise.spin(1.0, clock=lambda: next(ticks)) == [1_000_100, 3_000_000, 10**9 - 4_000_399]


def test_noise_can_be_skipped(tmp_path):
    out = tmp_path / "latest.json"
    assert main(["--calls", "20", "--conns", "1", "--scenarios", "say", "--rounds", "1",
                 "--noise", "0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["meta"]["noise"] is None


def test_the_memory_mode_reports_growth(tmp_path):
    out = tmp_path / "memory.json"
    code = main(["--memory", "--memory-calls", "12000", "--memory-conns", "4", "--json", str(out)])
    mem = json.loads(out.read_text())["memory"]
    assert mem["calls"] == 12000 and mem["wrong"] == 0
    assert [s["calls"] for s in mem["samples"]][0] == 10000
    assert mem["rss_after_1e4_kib"] > 1000 and isinstance(mem["growth_pct"], float)
    assert code in (0, 1)  # growth over so few calls is noise; the mode itself must work


@pytest.fixture
def two_sleepers():
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(2)]
    yield [p.pid for p in procs]
    for p in procs:
        p.kill()
        p.wait()


def test_pinning_puts_the_target_on_one_cpu_and_the_generators_on_the_others(two_sleepers):
    target, generator = two_sleepers
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("pinning needs two CPUs; this machine lets the tests use one")
    assert pin_apart(target, [generator])
    assert os.sched_getaffinity(target) == {cpus[0]}
    assert os.sched_getaffinity(generator) == set(cpus[1:])


def test_pinning_is_left_out_on_one_cpu(two_sleepers):
    target, generator = two_sleepers
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mine)})
    try:
        assert not pin_apart(target, [generator])
    finally:
        os.sched_setaffinity(0, mine)
    assert os.sched_getaffinity(target) == mine
