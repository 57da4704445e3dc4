"""How often the machine itself stops a busy process: the yardstick for the tail latencies.

One process per CPU, pinned to it, reads the clock in a tight loop; any gap of a millisecond or
more is time the CPU was taken away (kernel threads, the hypervisor). With every CPU busy, as
during a bench case, such a stall halts the target or the generator, and every call in flight
then waits for it: a stall longer than a case's p50 lands in its p99 whatever the server does.

    python -m bench.noise [seconds]
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable

STALL_NS = 1_000_000  # a gap this long is a stall, not the loop's own cost (about 0.1 us)
_CTX = multiprocessing.get_context("fork")


def spin(seconds: float, clock: Callable[[], int] = time.perf_counter_ns,
         threshold_ns: int = STALL_NS) -> list[int]:
    """Read `clock` without pause for `seconds`; the gaps of at least `threshold_ns`, in ns."""
    gaps = []
    prev = clock()
    end = prev + int(seconds * 1e9)
    while True:
        now = clock()
        if now - prev >= threshold_ns:
            gaps.append(now - prev)
        prev = now
        if now >= end:
            return gaps


def _probe(cpu: int, seconds: float, out) -> None:
    os.sched_setaffinity(0, {cpu})
    out.send(spin(seconds))
    out.close()


def measure(seconds: float = 2.0) -> dict:
    """Stalls seen with every CPU this process may use kept busy for `seconds`."""
    cpus = sorted(os.sched_getaffinity(0))
    probes = []
    for cpu in cpus:
        parent, child = _CTX.Pipe(duplex=False)
        proc = _CTX.Process(target=_probe, args=(cpu, seconds, child), daemon=True)
        proc.start()
        child.close()
        probes.append((proc, parent))
    gaps = []
    for proc, pipe in probes:
        gaps.extend(pipe.recv())
        proc.join()
    cpu_seconds = seconds * len(cpus)
    return {
        "seconds": seconds,
        "cpus": len(cpus),
        "stalls": len(gaps),
        "stalls_per_cpu_s": round(len(gaps) / cpu_seconds, 2),
        "stalled_ms": round(sum(gaps) / 1e6, 2),
        "longest_ms": round(max(gaps, default=0) / 1e6, 2),
    }


def describe(noise: dict) -> str:
    """One line for the bench output."""
    return (f"machine noise: with all {noise['cpus']} CPUs busy for {noise['seconds']} s, "
            f"{noise['stalls']} stalls of 1 ms or more "
            f"({noise['stalls_per_cpu_s']} per CPU-second, {noise['stalled_ms']} ms in all, "
            f"longest {noise['longest_ms']} ms); a stall longer than a case's p50 that lands in "
            "it moves its p99 whatever the target does")


if __name__ == "__main__":
    print(describe(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)))
