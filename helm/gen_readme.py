#!/usr/bin/env python3
"""Generate the values table of helm/apisix-sidecar/README.md from values.yaml.

A value is documented by a `# -- text` comment (continued by further `#` lines) right above its
key, as helm-docs does; a documented map covers its whole subtree. The table goes between the
`<!-- values-table:start -->` and `<!-- values-table:end -->` markers of the README.

usage: python3 helm/gen_readme.py [--check]   (--check: exit 1 if the README is out of date)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "apisix-sidecar"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY_RE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")


def documented_values(text: str) -> list[tuple[str, str]]:
    """(dotted path, description) for every `# --` comment, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        m = KEY_RE.match(line)
        if not m:
            if stripped and not stripped.startswith("-"):
                pending = None
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        if pending is not None:
            out.append((".".join(k for _, k in stack), " ".join(pending).strip()))
            pending = None
    return out


def lookup(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def schema_type(schema: dict, path: str) -> str:
    """The JSON-schema type(s) of a value, e.g. `integer`, `number or null`."""
    node = schema
    for part in path.split("."):
        node = node["properties"][part]
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    else:
        types = [alt.get("type", "any") for alt in node.get("oneOf", node.get("anyOf", []))]
    return " or ".join(dict.fromkeys(types)) or "any"


def render_table(values_text: str, schema: dict) -> str:
    values = yaml.safe_load(values_text)
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for path, desc in documented_values(values_text):
        value = lookup(values, path)
        default = json.dumps(value, separators=(",", ":")).replace("|", "\\|")
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{path}` | {schema_type(schema, path)} | `{default}` | {desc} |")
    return "\n".join(rows)


def updated_readme(readme: str, table: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    values_text = (CHART / "values.yaml").read_text()
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    new = updated_readme(readme, render_table(values_text, schema))
    if "--check" in argv:
        if new != readme:
            print("helm/apisix-sidecar/README.md values table is out of date: "
                  "run python3 helm/gen_readme.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
