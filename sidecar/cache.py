"""Token -> prepared plugin chain, shared by every connection, with a sliding TTL."""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_EXPIRE_SECONDS = 3600
DEFAULT_MAX_ENTRIES = 16384
TTL_FACTOR = 1.2
_TOKEN_SPACE = 1 << 32


@dataclass(slots=True)
class Prepared:
    """What one PrepareConf produced: the chain to run, or why every call must fail closed."""

    key: str
    conf: list[tuple[str, str]]
    chain: list[tuple[Any, Any]] = field(default_factory=list)
    error: str | None = None
    expires: float = 0.0


class ConfCache:
    """Prepared configurations by token; a hit renews the entry for another TTL.

    Tokens are drawn at random from the 32-bit space (never 0), so tokens a previous runner
    process handed out almost surely miss here and APISIX re-prepares instead of running another
    route's plugins. The same key with the same configuration gets its live token back.
    At most `max_entries` live at once: beyond that the least recently used goes, and APISIX
    re-prepares it on its next use (CONF_TOKEN_NOT_FOUND), so memory stays bounded.
    """

    def __init__(
        self,
        ttl: float = DEFAULT_EXPIRE_SECONDS * TTL_FACTOR,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"cache TTL must be positive, got {ttl}")
        if max_entries < 1:
            raise ValueError(f"cache size must be at least 1, got {max_entries}")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._by_token: OrderedDict[int, Prepared] = OrderedDict()
        self._by_key: dict[str, int] = {}

    @classmethod
    def for_expire_time(cls, expire_seconds: float, **kwargs: Any) -> ConfCache:
        """A cache keeping entries 1.2 x APISIX_CONF_EXPIRE_TIME after their last use."""
        return cls(ttl=expire_seconds * TTL_FACTOR, **kwargs)

    def __len__(self) -> int:
        self._evict(self._clock())
        return len(self._by_token)

    def token_for(self, key: str, conf: list[tuple[str, str]]) -> int | None:
        """The live token already issued for this key and configuration, renewed; else None."""
        token = self._by_key.get(key) if key else None
        if token is None:
            return None
        prepared = self.get(token)
        if prepared is None or prepared.conf != conf:
            return None
        return token

    def put(self, prepared: Prepared) -> int:
        """Store a prepared configuration under a fresh token and return the token."""
        now = self._clock()
        self._evict(now)
        while len(self._by_token) >= self.max_entries:
            oldest, entry = next(iter(self._by_token.items()))
            self._drop(oldest, entry)
        token = self._new_token()
        prepared.expires = now + self.ttl
        self._by_token[token] = prepared
        if prepared.key:
            self._by_key[prepared.key] = token
        return token

    def get(self, token: int) -> Prepared | None:
        """The configuration behind a token, its lifetime renewed; None if unknown or expired."""
        now = self._clock()
        prepared = self._by_token.get(token)
        if prepared is None:
            return None
        if prepared.expires <= now:
            self._evict(now)
            self._drop(token, prepared)
            return None
        prepared.expires = now + self.ttl
        self._by_token.move_to_end(token)
        return prepared

    def _new_token(self) -> int:
        while True:
            token = self._rng.randrange(1, _TOKEN_SPACE)
            if token not in self._by_token:
                return token

    def _evict(self, now: float) -> None:
        """Drop expired entries; least recently used come first in the ordered table."""
        table = self._by_token
        while table:
            token, prepared = next(iter(table.items()))
            if prepared.expires > now:
                break
            self._drop(token, prepared)

    def _drop(self, token: int, prepared: Prepared) -> None:
        self._by_token.pop(token, None)
        if prepared.key and self._by_key.get(prepared.key) == token:
            del self._by_key[prepared.key]
