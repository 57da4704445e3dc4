"""Plugin base class, dataclass configurations, registration and discovery."""

import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Literal

import pytest

from sidecar import ConfError, Plugin, PluginError, from_json
from sidecar.plugin import Registry


@dataclass
class Inner:
    name: str
    weight: float = 1.0


@dataclass
class Conf:
    host: str
    port: int = 80
    tags: list[str] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"
    limits: dict[str, int] = field(default_factory=dict)
    inner: Inner | None = None
    enabled: bool = True


def test_a_dataclass_conf_is_parsed_with_defaults():
    conf = from_json(Conf, {"host": "h", "tags": ["x"], "inner": {"name": "n", "weight": 2},
                            "limits": {"a": 1}})
    assert conf == Conf(host="h", tags=["x"], limits={"a": 1}, inner=Inner("n", 2.0))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "host: missing field"),
        ({"host": 1}, "host: must be str, got an integer"),
        ({"host": "h", "port": "80"}, "port: must be int, got a string"),
        ({"host": "h", "port": True}, "port: must be int, got a boolean"),
        ({"host": "h", "extra": 1}, "unknown field 'extra'"),
        ({"host": "h", "tags": ["a", 2]}, "tags[1]: must be str"),
        ({"host": "h", "mode": "c"}, "mode: must be one of 'a', 'b'"),
        ({"host": "h", "limits": {"a": "x"}}, "limits.a: must be int"),
        ({"host": "h", "inner": {"weight": 1}}, "inner.name: missing field"),
        ([], "configuration: must be an object, got an array"),
    ],
)
def test_bad_configurations_are_rejected_naming_the_field(raw, message):
    with pytest.raises(ConfError) as exc:
        from_json(Conf, raw)
    assert message in str(exc.value)


def test_default_parse_conf_reads_json_and_rejects_garbage():
    plugin = Plugin()
    assert plugin.parse_conf('{"a": [1]}') == {"a": [1]}
    assert plugin.parse_conf("") is None
    with pytest.raises(ConfError, match="not valid JSON"):
        plugin.parse_conf("{nope")


def test_parse_conf_uses_the_declared_dataclass():
    class P(Plugin):
        name = "p"
        Conf = Conf

    assert P().parse_conf('{"host": "x"}') == Conf(host="x")
    with pytest.raises(ConfError, match="host: missing field"):
        P().parse_conf("")


def test_register_works_as_decorator_and_rejects_a_duplicate_name():
    reg = Registry()

    @reg.register
    class A(Plugin):
        name = "dup"

    class B(Plugin):
        name = "dup"

    assert reg.names() == ["dup"] and isinstance(reg.get("dup"), A)
    reg.register(A)
    with pytest.raises(PluginError, match="'dup' is taken"):
        reg.register(B)


def test_register_refuses_nameless_and_foreign_objects():
    reg = Registry()
    with pytest.raises(PluginError, match="needs a name"):
        reg.register(Plugin)
    with pytest.raises(PluginError, match="not a sidecar.Plugin"):
        reg.register(object())


def test_load_spec_takes_module_attr_or_a_self_registering_module(monkeypatch):
    reg = Registry()
    assert reg.load_spec("tests.plugins_for_tests:Echo") == ["test-echo"]
    with pytest.raises(PluginError, match="cannot import"):
        reg.load_spec("no_such_module_xyz:Thing")
    with pytest.raises(PluginError, match="no attribute"):
        reg.load_spec("tests.plugins_for_tests:Nope")
    with pytest.raises(PluginError, match="not a sidecar.Plugin"):
        reg.load_spec("tests.plugins_for_tests:RewriteConf")


def install_greet_package(site) -> None:
    """Lay out an installed distribution (dist-info with an entry point) as pip would."""
    (site / "greet_plugin").mkdir(parents=True)
    (site / "greet_plugin" / "__init__.py").write_text(textwrap.dedent("""
        from sidecar import Plugin
        class Greet(Plugin):
            name = "greet"
            def request_filter(self, conf, request, response):
                response.write("hi from greet")
    """))
    info = site / "greet_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: greet-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[apisix_sidecar.plugins]\ngreet = greet_plugin:Greet\n"
    )


def test_an_installed_package_is_found_through_its_entry_point(tmp_path):
    install_greet_package(tmp_path)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from sidecar.plugin import Registry\n"
        "r = Registry(); print(r.load_entry_points()); print(r.get('greet').name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['greet']", "greet"]
