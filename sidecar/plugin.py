"""The Plugin base class, configuration parsing, and the registry plugins are found in."""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from collections.abc import Iterable
from importlib import metadata
from typing import Any, ClassVar

from .http import Request, Response, StopResponse

ENTRY_POINT_GROUP = "apisix_sidecar.plugins"


class PluginError(Exception):
    """A plugin cannot be registered or loaded."""


class ConfError(ValueError):
    """A configuration its plugin rejects; the message names the offending field."""


class Plugin:
    """Base class of every plugin: override what you need, the defaults do nothing.

    `parse_conf` runs once per configuration when APISIX prepares a route; `request_filter` runs
    for ext-plugin-pre-req and ext-plugin-post-req, `response_filter` for ext-plugin-post-resp.
    Set `Conf` to a dataclass to get the configuration parsed and checked without writing
    `parse_conf`.
    """

    name: ClassVar[str] = ""
    Conf: ClassVar[type | None] = None

    def parse_conf(self, raw: str) -> Any:
        """Turn the JSON string from the route into what the filters get; raise to reject it."""
        try:
            value = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError as exc:
            raise ConfError(f"configuration is not valid JSON: {exc}") from None
        if self.Conf is not None:
            return from_json(self.Conf, {} if value is None else value)
        return value

    def request_filter(self, conf: Any, request: Request, response: StopResponse) -> None:
        """Inspect or change the request, or answer it through `response`."""

    def response_filter(self, conf: Any, response: Response) -> None:
        """Inspect or change the upstream response."""


def from_json(cls: type, value: Any, where: str = "") -> Any:
    """Build a dataclass from decoded JSON, checking field names and types.

    Errors name the field: missing field, wrong type, unknown field.
    """
    return _convert(cls, value, where or "configuration")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _json_kind(value: Any) -> str:
    return {
        dict: "an object", list: "an array", str: "a string", bool: "a boolean",
        int: "an integer", float: "a number", type(None): "null",
    }.get(type(value), type(value).__name__)


def _convert(tp: Any, value: Any, where: str) -> Any:
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(typing.get_args(tp), value, where)
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        allowed = ", ".join(repr(a) for a in typing.get_args(tp))
        raise ConfError(f"{where}: must be one of {allowed}, got {value!r}")
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        return _convert_sequence(tp, origin or tp, value, where)
    if origin is dict or tp is dict:
        return _convert_mapping(tp, value, where)
    if tp is type(None):
        if value is None:
            return None
        raise ConfError(f"{where}: must be null, got {_json_kind(value)}")
    return _convert_scalar(tp, value, where)


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfError(f"{where}: must be {_type_name(tp)}, got {_json_kind(value)}")
    return value


def _convert_union(options: tuple, value: Any, where: str) -> Any:
    if value is None and type(None) in options:
        return None
    real = [o for o in options if o is not type(None)]
    if len(real) == 1:
        return _convert(real[0], value, where)
    for option in real:
        try:
            return _convert(option, value, where)
        except ConfError:
            continue
    names = " or ".join(_type_name(o) for o in real)
    raise ConfError(f"{where}: must be {names}, got {_json_kind(value)}")


def _convert_sequence(tp: Any, container: type, value: Any, where: str) -> Any:
    if not isinstance(value, list):
        raise ConfError(f"{where}: must be an array, got {_json_kind(value)}")
    args = typing.get_args(tp)
    item_tp = args[0] if args else Any
    items = [_convert(item_tp, item, f"{where}[{i}]") for i, item in enumerate(value)]
    return items if container is list else container(items)


def _convert_mapping(tp: Any, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfError(f"{where}: must be an object, got {_json_kind(value)}")
    args = typing.get_args(tp)
    value_tp = args[1] if len(args) == 2 else Any
    return {k: _convert(value_tp, v, f"{where}.{k}") for k, v in value.items()}


def _convert_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfError(f"{where}: must be an object, got {_json_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfError(f"{where}: unknown field {unknown[0]!r}")
    kwargs = {}
    for name, f in fields.items():
        path = name if where == "configuration" else f"{where}.{name}"
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfError(f"{path}: missing field")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfError(f"{where}: {exc}") from None


class Registry:
    """Plugins by name. A name is taken once; registering the same plugin again is a no-op."""

    def __init__(self) -> None:
        self._plugins: dict[str, Plugin] = {}

    def register(self, plugin: type[Plugin] | Plugin) -> Any:
        """Register a Plugin subclass (instantiated with no arguments) or instance.

        Returns its argument, so it works as a class decorator.
        """
        instance = plugin() if isinstance(plugin, type) else plugin
        if not isinstance(instance, Plugin):
            raise PluginError(f"{plugin!r} is not a sidecar.Plugin")
        name = instance.name
        if not isinstance(name, str) or not name or len(name) > 128:
            raise PluginError(f"{type(instance).__qualname__} needs a name of 1 to 128 characters")
        existing = self._plugins.get(name)
        if existing is not None:
            if type(existing) is type(instance):
                return plugin
            raise PluginError(
                f"plugin name {name!r} is taken by {_origin(existing)}; "
                f"cannot register {_origin(instance)}"
            )
        self._plugins[name] = instance
        return plugin

    def get(self, name: str) -> Plugin | None:
        """The plugin registered under `name`, or None."""
        return self._plugins.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register every plugin installed under the entry-point group; return their names."""
        loaded = []
        for ep in metadata.entry_points(group=group):
            try:
                target = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}"
                ) from None
            loaded.extend(self._register_target(target, f"entry point {ep.value}"))
        return loaded

    def load_spec(self, spec: str) -> list[str]:
        """Load `module:attr` (a Plugin class or instance) or `module` (which registers itself)."""
        module_name, _, attr = spec.strip().partition(":")
        if not module_name:
            raise PluginError(f"plugin spec {spec!r} is not module:attr")
        before = set(self._plugins)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(f"cannot import plugin module {module_name!r}: {exc}") from None
        if not attr:
            return sorted(set(self._plugins) - before)
        try:
            target = getattr(module, attr)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from None
        return self._register_target(target, spec)

    def load_specs(self, specs: Iterable[str]) -> list[str]:
        """Load several specs; blank ones are ignored."""
        names = []
        for spec in specs:
            if spec.strip():
                names.extend(self.load_spec(spec))
        return names

    def _register_target(self, target: Any, origin: str) -> list[str]:
        if isinstance(target, type) and issubclass(target, Plugin) or isinstance(target, Plugin):
            self.register(target)
            return [target.name]
        raise PluginError(f"{origin} is not a sidecar.Plugin subclass or instance")


def _origin(plugin: Plugin) -> str:
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


registry = Registry()


def register(plugin: Any) -> Any:
    """Register a plugin in the default registry; usable as a class decorator."""
    return registry.register(plugin)
