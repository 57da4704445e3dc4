"""`response-rewrite`: change the upstream response's status, headers and body (post-resp).

Configuration, every field optional::

    {"status": 201,
     "headers": {"X-Served-By": "apisix"},
     "filters": [{"regex": "(\\\\w+)@example\\\\.com", "scope": "global",
                  "replace": "$1 at example"}],
     "body": "replaces the whole body, after the filters"}

`replace` follows APISIX's own response-rewrite: `$0` is the whole match, `$1`..`$9` and `${n}`
are groups, `$$` is a literal `$`; anything else, a backslash included, is literal text. A
reference to a group the regex does not have is rejected when the route is prepared. `scope`
is `once` (the first match, the default) or `global` (every match). Upstream headers the
configuration does not name, Content-Type included, still reach the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sidecar import ConfError, Plugin, Response, register

RUNNER_HEADER = ("X-Resp-A6-Runner", "Python")
_GROUP = re.compile(r"\$(?:(\$)|(\d)|\{(\d+)\})")


@dataclass(frozen=True)
class Filter:
    """One regex substitution over the body."""

    pattern: re.Pattern[str]
    count: int
    parts: tuple[str | int, ...]

    def apply(self, text: str) -> str:
        return self.pattern.sub(self._expand, text, count=self.count)

    def _expand(self, match: re.Match[str]) -> str:
        return "".join(p if isinstance(p, str) else (match.group(p) or "") for p in self.parts)


@dataclass(frozen=True)
class RewriteConf:
    """A parsed, checked configuration."""

    status: int | None
    headers: tuple[tuple[str, str], ...]
    filters: tuple[Filter, ...]
    body: str | None


def parse_replace(template: str, groups: int, where: str) -> tuple[str | int, ...]:
    """Split a `replace` template into literal text and group numbers (APISIX's `$n` syntax)."""
    parts: list[str | int] = []
    pos = 0
    for match in _GROUP.finditer(template):
        parts.append(template[pos:match.start()])
        if match.group(1):
            parts.append("$")
        else:
            number = int(match.group(2) or match.group(3))
            if number > groups:
                raise ConfError(
                    f"{where}: refers to group {number} but the regex has {groups} group(s)"
                )
            parts.append(number)
        pos = match.end()
    parts.append(template[pos:])
    return tuple(p for p in parts if p != "")


def _expect(value: Any, kind: type, where: str, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfError(f"{where}: must be {what}, got {type(value).__name__}")
    return value


def _parse_filter(raw: Any, where: str) -> Filter:
    _expect(raw, dict, where, "an object")
    unknown = sorted(set(raw) - {"regex", "scope", "replace"})
    if unknown:
        raise ConfError(f"{where}: unknown field {unknown[0]!r}")
    if "regex" not in raw:
        raise ConfError(f"{where}.regex: missing field")
    regex = _expect(raw["regex"], str, f"{where}.regex", "a string")
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ConfError(f"{where}.regex: invalid regular expression: {exc}") from None
    scope = _expect(raw.get("scope", "once"), str, f"{where}.scope", "a string")
    if scope not in ("once", "global"):
        raise ConfError(f"{where}.scope: must be 'once' or 'global', got {scope!r}")
    replace = _expect(raw.get("replace", ""), str, f"{where}.replace", "a string")
    parts = parse_replace(replace, pattern.groups, f"{where}.replace")
    return Filter(pattern, 1 if scope == "once" else 0, parts)


def parse(raw: Any) -> RewriteConf:
    """Check a decoded configuration; errors name the field."""
    _expect(raw, dict, "configuration", "an object")
    unknown = sorted(set(raw) - {"status", "headers", "body", "filters"})
    if unknown:
        raise ConfError(f"configuration: unknown field {unknown[0]!r}")
    status = raw.get("status")
    if status is not None:
        _expect(status, int, "status", "an integer")
        if not 100 <= status <= 599:
            raise ConfError(f"status: must be within 100..599, got {status}")
    headers = _expect(raw.get("headers", {}), dict, "headers", "an object")
    for name, value in headers.items():
        if not name:
            raise ConfError("headers: a header name is empty")
        _expect(value, str, f"headers.{name}", "a string")
    filters = _expect(raw.get("filters", []), list, "filters", "an array")
    body = raw.get("body")
    if body is not None:
        _expect(body, str, "body", "a string")
    return RewriteConf(
        status=status,
        headers=tuple(headers.items()),
        filters=tuple(_parse_filter(f, f"filters[{i}]") for i, f in enumerate(filters)),
        body=body,
    )


@register
class ResponseRewrite(Plugin):
    """Rewrite the upstream response as configured; see the module docstring."""

    name = "response-rewrite"

    def parse_conf(self, raw: str) -> RewriteConf:
        return parse(super().parse_conf(raw))

    def response_filter(self, conf: RewriteConf, response: Response) -> None:
        if conf.status is not None:
            response.status = conf.status
        for name, value in conf.headers:
            response.headers.set(name, value)
        response.headers.set(*RUNNER_HEADER)
        if conf.filters:
            text = response.body().decode("utf-8", "surrogateescape")
            for f in conf.filters:
                text = f.apply(text)
            new = text.encode("utf-8", "surrogateescape")
            if new != response.body() and new:
                response.set_body(new)
        if conf.body:
            response.set_body(conf.body)
