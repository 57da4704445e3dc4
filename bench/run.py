"""`make bench`: the floor and every scenario at every concurrency, a table and a JSON file.

    python -m bench [--calls N] [--conns 1,16,256] [--scenarios say,rewrite,...] [--rounds 3]
                    [--json PATH]
    python -m bench --memory [--memory-calls 1000000]     # RSS after 1e6 calls vs after 1e4

Each case starts a fresh target process (the runner, or bench/floor.py), starts the generator
processes, lets every connection make a few warm-up calls, then measures a fixed number of calls:
calls/s and latency percentiles from the generator, CPU time (user + system) and peak RSS
(VmHWM) of the target from /proc. The floor runs at each concurrency in the same run, and each
scenario's CPU per call is a ratio to the floor's at the same concurrency. Every case runs in
several rounds that alternate with the floor; the table shows medians over the rounds, the JSON
file has every round too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

from . import noise
from .loadgen import worker_main
from .scenarios import FLOOR, SCENARIOS, Scenario

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
DEFAULT_CALLS = 20000
DEFAULT_CONNS = (1, 16, 256)
DEFAULT_ROUNDS = 3
WARMUP_PER_CONN = 3
_TICK = os.sysconf("SC_CLK_TCK")
_CTX = multiprocessing.get_context("fork")


# ---------------------------------------------------------------------------------- /proc reads

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds_precise(pid: int) -> float | None:
    """Time on CPU of every thread (user + system), from schedstat: nanoseconds, not ticks."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def _cpu(pid: int) -> tuple[float, float | None]:
    return cpu_seconds(pid), cpu_seconds_precise(pid)


# ------------------------------------------------------------------------------------- targets

class Target:
    """The process under test: the runner (`python -m sidecar run`) or the floor."""

    def __init__(self, kind: str, workdir: str, root: Path = ROOT) -> None:
        self.kind = kind
        self.path = os.path.join(workdir, f"{kind}.sock")
        # `root` holds the `sidecar` package to run (a baseline copy for A/B runs); bench comes
        # from this tree either way.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(root), str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        if kind == "runner":
            argv = [sys.executable, "-m", "sidecar", "run", "--listen", f"unix:{self.path}",
                    "--plugin", "bench.plugins:Rewrite", "--plugin", "bench.plugins:ReadVars"]
        else:
            argv = [sys.executable, "-m", "bench.floor", self.path]
        self.log = open(os.path.join(workdir, f"{kind}.log"), "w+b")
        self.proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.kind} exited with {code}:\n{self.output()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(self.path)
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on {self.path} within {timeout}s")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------ the cases

class Generators:
    """The generator processes of one case, with the connections split between them."""

    def __init__(self, path: str, scenarios: list[Scenario], conns: int, workers: int,
                 spin: bool = False) -> None:
        workers = max(1, min(workers, conns))
        self.shares = [conns // workers + (1 if i < conns % workers else 0) for i in range(workers)]
        self.pipes = []
        self.procs = []
        for share in self.shares:
            parent, child = _CTX.Pipe()
            proc = _CTX.Process(target=worker_main, args=(child, path, scenarios, share, spin),
                                daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            msg = self._recv(pipe, 60)
            if "setup_error" in msg:
                self.close()
                raise RuntimeError(f"generator setup failed: {msg['setup_error']}")

    @staticmethod
    def _recv(pipe, timeout: float) -> dict:
        if not pipe.poll(timeout):
            raise TimeoutError("a generator process did not answer")
        return pipe.recv()

    def run(self, calls: int) -> dict:
        """`calls` calls over every connection; merged figures."""
        total = sum(self.shares)
        split = [calls * s // total for s in self.shares]
        split[0] += calls - sum(split)
        for pipe, n in zip(self.pipes, split, strict=True):
            pipe.send(("run", n))
        parts = [self._recv(pipe, 300) for pipe in self.pipes]
        for part in parts:
            if "run_error" in part:
                raise RuntimeError(f"generator failed: {part['run_error']}")
        merged = {k: sum(p[k] for p in parts)
                  for k in ("calls", "ok", "bad", "errors", "lost", "extra_info", "bytes_in",
                            "gen_cpu_s")}
        merged["wall_s"] = max(p["wall_s"] for p in parts)
        merged["first_error"] = next((p["first_error"] for p in parts if p["first_error"]), None)
        lat = array("q")
        for p in parts:
            lat.frombytes(p["latencies_ns"])
        merged["latencies"] = sorted(lat)
        return merged

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def _pct(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def pin_apart(target_pid: int, generator_pids: list[int]) -> bool:
    """Give the target the first CPU and the generators the others; False with one CPU.

    Left to itself the scheduler now and then runs both sides of the socket on one CPU for a
    tenth of a second, which halves the throughput and doubles the latency of whatever case it
    lands in: noise in the tail that neither the runner nor the floor causes.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return False
    os.sched_setaffinity(target_pid, cpus[:1])
    for pid in generator_pids:
        os.sched_setaffinity(pid, cpus[1:])
    return True


def run_case(kind: str, scenario: Scenario, conns: int, calls: int, workers: int,
             workdir: str, root: Path = ROOT, spin: bool = False, pin: bool = False) -> dict:
    """One scenario at one concurrency against a fresh target process."""
    target = Target(kind, workdir, root)
    gens = None
    try:
        gens = Generators(target.path, [scenario], conns, workers, spin)
        if pin:
            pin_apart(target.pid, [proc.pid for proc in gens.procs])
        gens.run(conns * WARMUP_PER_CONN)
        cpu0 = _cpu(target.pid)
        stats = gens.run(calls)
        cpu1 = _cpu(target.pid)
        mem = memory_kib(target.pid)
        if target.proc.poll() is not None:
            raise RuntimeError(f"{kind} died:\n{target.output()}")
    except BaseException:
        if gens:
            gens.close()
        out = target.output()
        target.stop()
        if kind == "runner":
            sys.stderr.write(out)
        raise
    gens.close()
    target.stop()
    lat = stats.pop("latencies")
    n = stats["calls"] or 1
    precise = cpu1[1] - cpu0[1] if cpu0[1] is not None and cpu1[1] is not None else None
    cpu = precise if precise is not None else cpu1[0] - cpu0[0]
    return {
        "scenario": scenario.name,
        "target": kind,
        "conns": conns,
        "calls": stats["calls"],
        "ok": stats["ok"],
        "bad": stats["bad"],
        "errors": stats["errors"],
        "lost": stats["lost"],
        "first_error": stats["first_error"],
        "extra_info": stats["extra_info"],
        "wall_s": round(stats["wall_s"], 4),
        "calls_per_s": round(stats["calls"] / stats["wall_s"], 1) if stats["wall_s"] else 0.0,
        "p50_ms": round(_pct(lat, 0.50), 4),
        "p90_ms": round(_pct(lat, 0.90), 4),
        "p99_ms": round(_pct(lat, 0.99), 4),
        "p999_ms": round(_pct(lat, 0.999), 4),
        "max_ms": round(lat[-1] / 1e6, 4) if lat else None,
        "cpu_s": round(cpu, 6),
        "cpu_s_stat": round(cpu1[0] - cpu0[0], 3),
        "cpu_source": "schedstat" if precise is not None else "stat",
        "cpu_us_per_call": round(cpu / n * 1e6, 2),
        "gen_cpu_us_per_call": round(stats["gen_cpu_s"] / n * 1e6, 2),
        "gen_busy": round(stats["gen_cpu_s"] / stats["wall_s"] / len(gens.shares), 3)
        if stats["wall_s"] else None,
        "peak_rss_kib": mem.get("VmHWM"),
        "rss_kib": mem.get("VmRSS"),
    }


# ---------------------------------------------------------------------------------------- output

COLUMNS = [
    ("scenario", "{:<8}"), ("conns", "{:>5}"), ("calls", "{:>6}"), ("ok", "{:>6}"),
    ("calls/s", "{:>8.0f}"), ("p50 ms", "{:>7.3f}"), ("p99 ms", "{:>8.3f}"),
    ("p99/p50", "{:>7.2f}"), ("cpu us", "{:>7.1f}"), ("x floor", "{:>7.2f}"),
    ("peak MiB", "{:>8.1f}"), ("gen busy", "{:>8.2f}"),
]


def _row(r: dict) -> list:
    name = r["scenario"] + (f" [{r['target'][7:]}]" if r["target"].startswith("runner@") else "")
    return [name, r["conns"], r["calls"], r["ok"], r["calls_per_s"], r["p50_ms"],
            r["p99_ms"], r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else 0.0,
            r["cpu_us_per_call"], r.get("cpu_x_floor") or 0.0,
            (r["peak_rss_kib"] or 0) / 1024, r["gen_busy"] or 0.0]


def format_table(results: list[dict]) -> str:
    rows = [[fmt.format(v) for (_, fmt), v in zip(COLUMNS, _row(r), strict=True)] for r in results]
    widths = [max([len(name)] + [len(row[i]) for row in rows])
              for i, (name, _) in enumerate(COLUMNS)]
    lines = []
    for cells in [[name for name, _ in COLUMNS], *rows]:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
    return "\n".join(lines)


def _meta(args: argparse.Namespace) -> dict:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "calls": args.calls,
        "rounds": args.rounds,
        "baselines": [str(b) for b in args.baseline],
        "workers": args.workers,
        "spin": args.spin,
        "pin": args.pin,
        "warmup_per_conn": WARMUP_PER_CONN,
        "cpu_source": "utime+stime of all threads (schedstat ns when available, else /proc stat)",
    }


_SUMMED = ("calls", "ok", "bad", "errors", "lost", "extra_info", "cpu_s", "cpu_s_stat")
_PEAKS = ("peak_rss_kib", "rss_kib", "max_ms")
_MEDIANS = ("wall_s", "calls_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
            "cpu_us_per_call", "gen_cpu_us_per_call", "gen_busy", "cpu_x_floor")


def merge_rounds(runs: list[dict]) -> dict:
    """One row for a case run in several rounds: counts summed, peaks the highest, and every
    rate, latency and ratio the median over the rounds (each ratio is taken within its round)."""
    row = dict(runs[0])
    for key in _SUMMED:
        row[key] = round(sum(r[key] for r in runs), 6)
    for key in _PEAKS:
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = max(values) if values else None
    for key in _MEDIANS:
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = round(statistics.median(values), 4) if values else None
    row["first_error"] = next((r["first_error"] for r in runs if r["first_error"]), None)
    row["rounds"] = len(runs)
    return row


def run_all(args: argparse.Namespace) -> dict:
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    conns_list = [int(c) for c in args.conns.split(",") if c.strip()]
    roots = [(f"runner@{b.resolve().name}", b.resolve()) for b in args.baseline]
    roots.append(("runner", args.runner_root.resolve()))
    results, raw = [], []
    machine = noise.measure(args.noise) if args.noise > 0 else None
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as workdir:
        for conns in conns_list:
            # Rounds alternate the floor and every case, so that a noisy spell of the machine
            # lands on both sides of a ratio; each ratio is taken within its own round.
            cases: dict[tuple[str, str], list[dict]] = {}
            for number in range(args.rounds):
                floor = run_case("floor", FLOOR, conns, args.calls, args.workers, workdir,
                                 spin=args.spin, pin=args.pin)
                floor["cpu_x_floor"] = 1.0
                floor["round"] = number
                cases.setdefault(("floor", FLOOR.name), []).append(floor)
                _progress(floor)
                for name in names:
                    sc = SCENARIOS[name]
                    calls = max(conns * 2, int(args.calls * sc.calls_scale))
                    for label, root in roots:
                        r = run_case("runner", sc, conns, calls, args.workers, workdir, root,
                                     args.spin, args.pin)
                        r["target"] = label
                        r["cpu_x_floor"] = round(
                            r["cpu_us_per_call"] / floor["cpu_us_per_call"], 3)
                        r["round"] = number
                        cases.setdefault((label, name), []).append(r)
                        _progress(r)
            for runs in cases.values():
                results.append(merge_rounds(runs))
                raw.extend(runs)
    return {"meta": dict(_meta(args), noise=machine), "results": results, "rounds": raw}


def _progress(r: dict) -> None:
    name = f"{r['scenario']}@{r['conns']}" + (
        f" [{r['target'][7:]}]" if r["target"].startswith("runner@") else "")
    if r["ok"] != r["calls"] or r["lost"]:
        print(f"# {name}: {r['calls'] - r['ok']} wrong, {r['lost']} lost: "
              f"{r['first_error']}", file=sys.stderr)
    print(f"# {name}: {r['calls_per_s']:.0f} calls/s, "
          f"{r['cpu_us_per_call']} us CPU/call", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- memory check

MEMORY_MIX = ("say", "rewrite", "vars", "resp-1k")


def run_memory(args: argparse.Namespace) -> dict:
    """RSS of one runner after 1e4 calls and then every tenth of `memory_calls`."""
    scenarios = [SCENARIOS[n] for n in MEMORY_MIX]
    total, first = args.memory_calls, 10_000
    samples = []
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as workdir:
        target = Target("runner", workdir, args.runner_root.resolve())
        gens = Generators(target.path, scenarios, args.memory_conns, args.workers)
        try:
            done, wrong = 0, 0
            step = max(first, (total - first) // 10)
            while done < total:
                n = first if done == 0 else min(step, total - done)
                stats = gens.run(n)
                done += stats["calls"]
                wrong += stats["calls"] - stats["ok"]
                mem = memory_kib(target.pid)
                samples.append({"calls": done, "rss_kib": mem["VmRSS"], "hwm_kib": mem["VmHWM"]})
                print(f"# {done} calls: RSS {mem['VmRSS']} KiB", file=sys.stderr, flush=True)
        finally:
            gens.close()
            target.stop()
    base, last = samples[0]["rss_kib"], samples[-1]["rss_kib"]
    growth = (last - base) / base * 100
    return {"meta": _meta(args), "memory": {
        "mix": list(MEMORY_MIX), "conns": args.memory_conns, "calls": done, "wrong": wrong,
        "rss_after_1e4_kib": base, "rss_at_end_kib": last, "growth_pct": round(growth, 2),
        "within_5pct": abs(growth) <= 5.0, "samples": samples}}


# ------------------------------------------------------------------------------------------ main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=int(os.environ.get("BENCH_CALLS", DEFAULT_CALLS)),
                   help="measured calls per case (resp-1m runs 1/40 of it); env BENCH_CALLS")
    p.add_argument("--conns", default=os.environ.get(
        "BENCH_CONNS", ",".join(map(str, DEFAULT_CONNS))), help="concurrent connections")
    p.add_argument("--scenarios", default=os.environ.get("BENCH_SCENARIOS", ",".join(SCENARIOS)))
    p.add_argument("--rounds", type=int,
                   default=int(os.environ.get("BENCH_ROUNDS", DEFAULT_ROUNDS)),
                   help="run every case this many times, alternating with the floor, and report "
                        "medians (the machine is noisy); env BENCH_ROUNDS")
    p.add_argument("--workers", type=int, default=int(os.environ.get("BENCH_WORKERS", "1")),
                   help="generator processes (default 1: this is a 2-core machine)")
    p.add_argument("--json", type=Path, default=None,
                   help=f"where to write the figures (default {DEFAULT_JSON.relative_to(ROOT)}, "
                        "memory mode: bench/results/memory.json)")
    p.add_argument("--baseline", type=Path, action="append",
                   default=[Path(p) for p in os.environ.get("BENCH_BASELINE", "").split(",") if p],
                   help="also run every scenario with the `sidecar` package found in this "
                        "directory (a copy from before a change), labelled runner@<dir name>: "
                        "A/B in the same run; repeatable (env BENCH_BASELINE, comma-separated)")
    p.add_argument("--runner-root", type=Path, default=ROOT,
                   help="run the `sidecar` package found in this directory (default: this tree)")
    p.add_argument("--spin", action="store_true", default=os.environ.get("BENCH_SPIN") == "1",
                   help="generators poll without sleeping, so a target never pays for waking "
                        "them (their CPU then reads ~1.0 busy); env BENCH_SPIN=1")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction,
                   default=os.environ.get("BENCH_PIN", "1") == "1",
                   help="run each target on the first CPU and its generators on the others "
                        "(default; --no-pin or BENCH_PIN=0 leaves placement to the scheduler)")
    p.add_argument("--noise", type=float, default=float(os.environ.get("BENCH_NOISE", "2")),
                   help="seconds to measure, before the cases, how often the machine stalls a "
                        "busy CPU (bench/noise.py), shown under the table; 0 skips it; env "
                        "BENCH_NOISE")
    p.add_argument("--memory", action="store_true", help="the memory check instead of the table")
    p.add_argument("--memory-calls", type=int,
                   default=int(os.environ.get("BENCH_MEMORY_CALLS", 1_000_000)))
    p.add_argument("--memory-conns", type=int, default=16)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory:
        report = run_memory(args)
        mem = report["memory"]
        print(f"RSS after 1e4 calls: {mem['rss_after_1e4_kib']} KiB; after {mem['calls']}: "
              f"{mem['rss_at_end_kib']} KiB; growth {mem['growth_pct']} % "
              f"({'within' if mem['within_5pct'] else 'OVER'} 5 %); wrong replies: {mem['wrong']}")
        out = args.json or DEFAULT_JSON.with_name("memory.json")
        ok = mem["within_5pct"] and not mem["wrong"]
    else:
        report = run_all(args)
        print(format_table(report["results"]))
        if report["meta"]["noise"]:
            print(noise.describe(report["meta"]["noise"]))
        out = args.json or DEFAULT_JSON
        ok = all(r["ok"] == r["calls"] and not r["lost"] for r in report["results"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0 if ok else 1
