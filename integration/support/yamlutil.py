"""YAML that APISIX reads: never an anchor or an alias.

APISIX's YAML loader rejects anchors and aliases (`&a` / `*a`) in apisix.yaml and silently drops
the routes that use them, logging only an error. PyYAML emits an alias whenever one Python object
appears twice in the data (an upstream shared by two routes, say), so every file this project
writes for APISIX goes through `NoAliasDumper`.
"""

from __future__ import annotations

from typing import Any

import yaml

END_MARKER = "#END"


class NoAliasDumper(yaml.SafeDumper):
    """A SafeDumper that writes a shared object out in full each time instead of aliasing it."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(data: Any) -> str:
    """YAML text for `data`, keys in insertion order, block style, no anchors or aliases."""
    return yaml.dump(
        data,
        Dumper=NoAliasDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1000,
    )


def dump_apisix_yaml(data: Any) -> str:
    """A file-driven standalone apisix.yaml: the YAML, then `#END` on its own last line.

    APISIX applies the file only once it ends with the marker, so a half-written file is ignored.
    """
    return dump(data) + END_MARKER + "\n"


def has_anchor_or_alias(text: str) -> bool:
    """True when the YAML text declares an anchor or uses an alias (as APISIX would refuse)."""
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
            return True
    return False
