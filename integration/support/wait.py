"""Poll a condition against a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """The condition did not hold before the deadline; the message says what was awaited."""


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.2,
    what: str = "condition",
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call `condition` until it returns a truthy value, and return that value.

    An exception of a type in `retry_on` counts as "not yet". When `timeout` seconds pass first,
    raise WaitTimeout naming `what`, the time waited, the number of attempts and the last
    value or exception seen.
    """
    start = time.monotonic()
    deadline = start + timeout
    attempts = 0
    last = "no attempt finished"
    while True:
        attempts += 1
        try:
            value = condition()
        except retry_on as exc:
            last = f"last error: {type(exc).__name__}: {exc}"
        else:
            if value:
                return value
            last = f"last result: {value!r}"
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(
                f"timed out after {now - start:.1f} s waiting for {what} "
                f"({attempts} attempts; {last})"
            )
        time.sleep(max(0.0, min(interval, deadline - now)))
