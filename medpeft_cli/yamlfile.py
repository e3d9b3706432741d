"""Reading the YAML a user writes (run configs, grid files, `--set` values): safe, and strict where
plain YAML is silently lossy.

PyYAML keeps the last of two equal keys in a mapping, so `epochs: 5` followed later by `epochs: 50`
would quietly train 50 epochs; here the second one is an error that names the key and both lines.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError

MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping holding the same key twice (merge keys `<<:` may still
    be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so below
                continue
            if key in first_line:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first at line {first_line[key]})", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The YAML document in `text` (None when it holds nothing); raises yaml.YAMLError on bad YAML,
    a duplicated key included (its `problem_mark` is the second key)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
