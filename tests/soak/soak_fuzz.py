"""The long fuzz run (`make soak`): 1e6 random and mutated frames into the real runner, with a
healthy connection checked throughout; the runner must answer them all, stay up, and not leak.

Sizes: SOAK_FUZZ_INPUTS (default 1e6), SOAK_WORKERS (default 2), SOAK_MAX_SECONDS (default 1800),
SOAK_SEED (default 1).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time

from tests._fuzz_inputs import corpus, rng_stream, send_and_judge, split_frames
from tests._runner_proc import Healthy, runners_fixture, wait_until  # noqa: F401

INPUTS = int(float(os.environ.get("SOAK_FUZZ_INPUTS", "1e6")))
WORKERS = int(os.environ.get("SOAK_WORKERS", "2"))
MAX_SECONDS = float(os.environ.get("SOAK_MAX_SECONDS", "1800"))
SEED = int(os.environ.get("SOAK_SEED", "1"))
BATCH = 20


def _fuzz(path: str, count: int, seed: int, deadline: float) -> int:
    """Send about `count` inputs in batches; every answer is judged. Returns frames sent."""
    rng = random.Random(seed)
    frames = corpus(max_size=1 << 21)
    sent = 0
    while sent < count and time.time() < deadline:
        stream = rng_stream(rng, frames, min(BATCH, count - sent))
        try:
            send_and_judge(path, stream)
        except AssertionError as exc:
            raise AssertionError(
                f"seed {seed}, input #{sent}: {exc}; stream {stream.hex()}"
            ) from None
        sent += len(split_frames(stream)[0]) + (1 if split_frames(stream)[1] else 0)
    return sent


def test_a_million_fuzzed_frames_are_all_answered_and_the_runner_stays_healthy(runners):
    runner = runners.start()
    fds, rss, greenlets = runner.fd_count(), runner.rss_kib(), runner.status()["greenlets"]
    healthy = Healthy(runner.path)
    healthy.check()
    started = time.monotonic()
    deadline = time.time() + MAX_SECONDS
    share = INPUTS // WORKERS
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        pending = pool.starmap_async(
            _fuzz, [(runner.path, share, SEED * 1000 + w, deadline) for w in range(WORKERS)])
        while not pending.ready():  # the healthy connection is served throughout
            healthy.check()
            assert runner.proc.poll() is None, runner.stderr()[-2000:]
            pending.wait(0.05)
        sent = sum(pending.get())
    healthy.check()
    healthy.close()
    wait_until(lambda: runner.fd_count() <= fds, 30, interval=0.2, what="connections closed")
    elapsed = time.monotonic() - started
    status = runner.status()
    # RSS grows with the tokens of the fuzzed PrepareConfs that happened to be valid: the cache
    # keeps them for 1.2 x APISIX_CONF_EXPIRE_TIME, by design.
    print(f"\nFIGURE soak fuzz: {sent} inputs in {elapsed:.0f}s, {healthy.calls} healthy calls, "
          f"RSS {rss} -> {runner.rss_kib()} KiB with {status['tokens']} tokens prepared, "
          f"fds {fds} -> {runner.fd_count()}, greenlets {greenlets} -> {status['greenlets']}")
    assert sent >= INPUTS - WORKERS, f"only {sent} inputs within {MAX_SECONDS}s"
    assert status["greenlets"] <= greenlets
    assert runner.proc.poll() is None
