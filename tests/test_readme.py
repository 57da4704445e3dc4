"""The README's plugin example works as printed: its plugin and its unit tests run."""

import re
import sys
import types

from tests.conftest import ROOT


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_plugin_example_and_its_tests_pass(monkeypatch):
    plugin_src, test_src = python_blocks()[:2]
    module = types.ModuleType("my_plugins")
    exec(compile(plugin_src, "README:my_plugins", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "my_plugins", module)
    tests: dict = {}
    exec(compile(test_src, "README:test", "exec"), tests)
    names = [n for n in tests if n.startswith("test_")]
    assert len(names) == 2
    for name in names:
        tests[name]()
