"""APISIX supervises the runner it started through ext-plugin.cmd: a killed runner comes back."""

from __future__ import annotations

import time

from integration.support import configs

RECOVERY_LIMIT = 10.0  # seconds; APISIX itself waits 3 s before it respawns the runner


def test_a_killed_runner_is_respawned_and_requests_succeed_again_within_10_s(fresh_standalone):
    gateway = fresh_standalone
    before = gateway.runner_pids()
    assert len(before) == 1, f"expected one runner process, found {before}"

    assert gateway.kill_runner() == before
    killed_at = time.monotonic()
    gateway.wait_until_answers(configs.SAY_PRE, 200, configs.SAY_BODY, timeout=RECOVERY_LIMIT,
                               what="requests to succeed again after the runner was killed")
    recovered_after = time.monotonic() - killed_at

    after = gateway.runner_pids()
    assert len(after) == 1 and after != before, f"runner before {before}, after {after}"
    assert recovered_after <= RECOVERY_LIMIT
