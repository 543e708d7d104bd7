"""YAML as restoration configs write it: PyYAML's safe loader with two fixes.

* Scientific notation without a dot (``1e-4``, ``5E+3``), which YAML 1.1 reads as a string, is a
  float, as in YAML 1.2 and in every restoration config (BasicSR writes ``lr: !!float 1e-4`` only
  because of this).
* A key given twice in one mapping is an error naming the key and both lines, instead of "the
  last one wins".
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from nas.errors import UsageError

#: YAML 1.2 floats: a dot or an exponent (``1e-4``, ``2.5``, ``.5``, ``1.``), ``.inf``, ``.nan``
_FLOAT = re.compile(r"""^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$
                        |^[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$
                        |^[-+]?[0-9][0-9_]*\.$
                        |^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$""", re.X)
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 floats (``1e-4``) and duplicate-key detection."""


# same resolvers in the same order, the float pattern replaced (PyYAML's needs a dot)
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, _FLOAT if tag == _FLOAT_TAG else rx) for tag, rx in rs]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in "0123456789":
    if not any(t == _FLOAT_TAG for t, _ in _Loader.yaml_implicit_resolvers.get(_ch, [])):
        _Loader.yaml_implicit_resolvers.setdefault(_ch, []).insert(0, (_FLOAT_TAG, _FLOAT))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicated key {key!r} (first at line {seen[key]})", key_node.start_mark)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_load(text: str, source: str) -> Any:
    """Parse YAML text with :class:`_Loader`.

    Raises:
        UsageError: invalid YAML or a duplicated key, naming ``source`` and the line.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        if problem.startswith("duplicated key"):
            raise UsageError(f"{source}: {problem}, again at line {mark.line + 1}") from None
        raise UsageError(f"{source}: invalid YAML{at} ({problem})") from None
