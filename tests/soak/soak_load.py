"""The long load run (`make soak`): 1e6 calls of every kind through the real runner; memory, file
descriptors and greenlets must not grow between the 1e4th and the last call.

Sizes: SOAK_CALLS (default 1e6), SOAK_WORKERS (client processes, default 3), SOAK_MAX_SECONDS
(default 1800: the run fails rather than go on longer).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections import Counter

from sidecar.protocol import messages as m
from sidecar.protocol.frame import RPC_ERROR, RPC_HTTP_REQ_CALL
from sidecar.testing import Client, RunnerError
from tests._runner_proc import FAULTY, req_call_payload, runners_fixture, wait_until  # noqa: F401

CALLS = int(float(os.environ.get("SOAK_CALLS", "1e6")))
WORKERS = int(os.environ.get("SOAK_WORKERS", "3"))
MAX_SECONDS = float(os.environ.get("SOAK_MAX_SECONDS", "1800"))
WARMUP = 10_000
CHECKPOINTS = 10
ROUTES = 20
REWRITE = json.dumps({"headers": {"X-Soak": "1"},
                      "filters": [{"regex": "up(\\w+)", "replace": "down$1", "scope": "global"}]})


def _calls(path: str, count: int, seed: int) -> dict[str, int]:
    """`count` calls of a realistic mix, each answer checked; returns counts by kind."""
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    with Client(path, timeout=30) as client:
        for i in range(count):
            k = rng.randrange(ROUTES)
            r = rng.random()
            if r < 0.45:
                reply = client.request([("say", f'{{"body":"route-{k}"}}')], id=i,
                                       headers=[("host", "soak"), ("x-i", str(i))])
                assert reply.id == i and reply.action.body == f"route-{k}".encode()
                done["stop"] += 1
            elif r < 0.75:
                reply = client.response([("response-rewrite", REWRITE)], id=i, body=b"upstream",
                                        headers=[("Content-Type", "text/plain")])
                assert reply.body == b"downstream"
                done["response"] += 1
            elif r < 0.85:
                assert client.request([("say", "{}")], id=i, path=f"/p/{k}").action is None
                done["pass"] += 1
            elif r < 0.90:
                try:
                    client.request([("fault-raise", "{}")], id=i)
                except RunnerError as exc:
                    assert exc.code == m.ERR_SERVICE_UNAVAILABLE
                done["plugin-fault"] += 1
            elif r < 0.95:
                payload = req_call_payload(0xDEAD0000 + k, i)
                rtype, reply = client.exchange(RPC_HTTP_REQ_CALL, payload)
                assert rtype == RPC_ERROR and m.decode_err(reply) == m.ERR_CONF_TOKEN_NOT_FOUND
                done["unknown-token"] += 1
            else:
                rtype, reply = client.exchange(RPC_HTTP_REQ_CALL, rng.randbytes(rng.randrange(64)))
                assert rtype == RPC_ERROR and m.decode_err(reply) == m.ERR_BAD_REQUEST
                done["garbage"] += 1
    return dict(done)


def _run(pool, path: str, total: int, seed: int) -> Counter:
    share = [total // WORKERS + (1 if w < total % WORKERS else 0) for w in range(WORKERS)]
    results = pool.starmap(_calls, [(path, n, seed * 100 + w) for w, n in enumerate(share)])
    return sum((Counter(r) for r in results), Counter())


def _idle_snapshot(runner) -> dict:
    """RSS, fds and greenlets once every client connection is gone."""
    wait_until(lambda: runner.status()["connections"] == 0, 30, interval=0.2,
               what="all connections closed")
    status = runner.status()
    return {"rss_kib": runner.rss_kib(), "fds": runner.fd_count(),
            "greenlets": status["greenlets"], "tokens": status["tokens"]}


def test_a_million_calls_leave_memory_fds_and_greenlets_flat(runners):
    runner = runners.start("--plugin", f"{FAULTY}:Raise")
    started = time.monotonic()
    done: Counter = Counter()
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        done += _run(pool, runner.path, WARMUP, 0)
        before = _idle_snapshot(runner)
        print(f"\nafter {sum(done.values())} calls: {before}", flush=True)
        step = (CALLS - WARMUP) // CHECKPOINTS
        for n in range(CHECKPOINTS):
            assert time.monotonic() - started < MAX_SECONDS, f"over {MAX_SECONDS}s at {done}"
            done += _run(pool, runner.path, step if n < CHECKPOINTS - 1 else
                         CALLS - WARMUP - step * (CHECKPOINTS - 1), n + 1)
            snap = _idle_snapshot(runner)
            print(f"after {sum(done.values())} calls ({time.monotonic() - started:.0f}s): {snap}",
                  flush=True)
    after = snap
    total = sum(done.values())
    print(f"FIGURE soak load: {total} calls {dict(done)} in {time.monotonic() - started:.0f}s; "
          f"RSS {before['rss_kib']} -> {after['rss_kib']} KiB "
          f"({(after['rss_kib'] / before['rss_kib'] - 1) * 100:+.2f}%), "
          f"fds {before['fds']} -> {after['fds']}, "
          f"greenlets {before['greenlets']} -> {after['greenlets']}")
    assert total == CALLS
    assert after["rss_kib"] < before["rss_kib"] * 1.05
    assert after["fds"] <= before["fds"]
    assert after["greenlets"] <= before["greenlets"]
    assert after["tokens"] == before["tokens"]
    assert runner.proc.poll() is None
