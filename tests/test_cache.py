"""The token cache: a sliding TTL (1.2 x APISIX_CONF_EXPIRE_TIME), key reuse, random tokens."""

import random

import pytest

from sidecar.cache import ConfCache, Prepared


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def prepared(key: str = "route#1#ext-plugin-pre-req#1", conf=(("say", "{}"),)) -> Prepared:
    return Prepared(key=key, conf=list(conf))


def test_ttl_is_one_point_two_times_the_expire_time():
    assert ConfCache.for_expire_time(3600).ttl == pytest.approx(4320)


def test_an_entry_lives_ttl_after_its_last_use_and_not_longer():
    clock = Clock()
    cache = ConfCache(ttl=100, clock=clock)
    token = cache.put(prepared())
    clock.now += 99
    assert cache.get(token) is not None
    clock.now += 99
    assert cache.get(token) is not None, "a hit renews the entry"
    clock.now += 100
    assert cache.get(token) is None
    assert len(cache) == 0


def test_expired_entries_are_evicted_without_being_asked_for():
    clock = Clock()
    cache = ConfCache(ttl=10, clock=clock)
    for i in range(50):
        cache.put(prepared(key=f"k{i}"))
    clock.now += 11
    keep = cache.put(prepared(key="fresh"))
    assert len(cache) == 1
    assert cache.get(keep).key == "fresh"


def test_same_key_and_conf_get_the_same_live_token():
    cache = ConfCache(ttl=10)
    token = cache.put(prepared())
    assert cache.token_for("route#1#ext-plugin-pre-req#1", [("say", "{}")]) == token
    assert cache.token_for("route#1#ext-plugin-pre-req#1", [("say", '{"body":"x"}')]) is None
    assert cache.token_for("route#2#ext-plugin-pre-req#1", [("say", "{}")]) is None


def test_an_expired_key_gets_no_token_back():
    clock = Clock()
    cache = ConfCache(ttl=10, clock=clock)
    cache.put(prepared())
    clock.now += 10
    assert cache.token_for("route#1#ext-plugin-pre-req#1", [("say", "{}")]) is None


def test_tokens_are_never_zero_and_never_repeat_while_alive():
    class Rigged(random.Random):
        def __init__(self):
            super().__init__(0)
            self.values = iter([7, 7, 7, 9])

        def randrange(self, start, stop):
            assert start == 1 and stop == 1 << 32
            return next(self.values)

    cache = ConfCache(ttl=10, rng=Rigged())
    assert cache.put(prepared(key="a")) == 7
    assert cache.put(prepared(key="b")) == 9


def test_two_caches_draw_unrelated_tokens():
    first = {ConfCache(ttl=10).put(prepared(key=str(i))) for i in range(20)}
    second = {ConfCache(ttl=10).put(prepared(key=str(i))) for i in range(20)}
    assert 0 not in first | second
    assert not first & second


def test_the_least_recently_used_entry_goes_when_the_cache_is_full():
    clock = Clock()
    cache = ConfCache(ttl=100, clock=clock, max_entries=3)
    a, b, c = (cache.put(prepared(key=k)) for k in "abc")
    assert cache.get(a) is not None
    d = cache.put(prepared(key="d"))
    assert cache.get(b) is None, "b was the least recently used"
    assert all(cache.get(t) is not None for t in (a, c, d))
    assert len(cache) == 3
    assert cache.token_for("b", [("say", "{}")]) is None
