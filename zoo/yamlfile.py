"""YAML files of the zoo (manifests, clips.yaml), read strictly: a key written twice in one mapping
is refused (PyYAML keeps the last silently), and every error is one line, `file:line: problem`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """An unreadable or invalid YAML file; the message is one line, `file:line: problem`."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor`: keys written beside it override the merged ones, once
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader's own error says so
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def describe_error(path: Path, e: yaml.YAMLError) -> str:
    """`file:line: problem (in a ... from line N)`: PyYAML's four-line report as one line."""
    if not isinstance(e, yaml.MarkedYAMLError) or e.problem_mark is None:
        return f"{path}: not valid YAML ({' '.join(str(e).split())})"
    line = f"{path}:{e.problem_mark.line + 1}: {e.problem}"
    if e.context and e.context_mark is not None and e.context_mark.line != e.problem_mark.line:
        context = e.context.removeprefix("while parsing ").removeprefix("while scanning ")
        line += f" (in {context} from line {e.context_mark.line + 1})"
    elif e.context:
        line += f" ({e.context})"
    return line


def load_yaml(path: Path) -> Any:
    """Parse one YAML file (duplicate keys refused); YamlFileError in one line otherwise."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise YamlFileError(f"{path}: cannot read ({e})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise YamlFileError(describe_error(path, e)) from None
