"""Run configs: YAML files as typed dataclasses, validated in one place.

``load_config(path, overrides)`` reads a YAML file, applies ``--set a.b=c`` overrides and returns
a :class:`Config`; :func:`check_config` (called by ``load_config``) is the one validation of every
block. Every problem raises :class:`~nas.errors.UsageError` with one line naming the file and the
dotted field: unknown keys (with a did-you-mean), wrong types, bad values, a duplicated YAML key
(with its line), a file that is not text, a folder given as a file.

YAML is read with PyYAML's safe loader plus two fixes: scientific notation without a dot
(``1e-4``, ``5E+3``), which YAML 1.1 reads as a string, is a float as in YAML 1.2 and in every
restoration config; and a key given twice in one mapping is an error instead of "the last wins".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from nas.config_checks import check_config
from nas.config_schema import (  # noqa: F401 - the config's public names live here too
    PENALTY_KINDS,
    RENAMED,
    TAU_KINDS,
    Config,
    PenaltyConfig,
    RetrainConfig,
    ScoreConfig,
    SearchConfig,
    TauConfig,
    from_dict,
)
from nas.errors import UsageError
from nas.yaml_loader import yaml_load

__all__ = ["Config", "PenaltyConfig", "RetrainConfig", "ScoreConfig", "SearchConfig", "TauConfig",
           "PENALTY_KINDS", "RENAMED", "TAU_KINDS", "check_config", "config_from_dict",
           "dump_config", "from_dict", "get_dotted", "load_config", "parse_overrides",
           "set_dotted", "yaml_load"]


# ---------------------------------------------------------------------------------- overrides
def set_dotted(d: dict, dotted: str, value: Any, where: str = "--set") -> None:
    """``d["a"]["b"] = value`` for ``dotted == "a.b"`` (creating nested dicts).

    Raises:
        UsageError: a path through a value that is not a mapping.
    """
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise UsageError(f"{where} {dotted}: {k} is not a mapping")
        cur = nxt
    cur[keys[-1]] = value


def get_dotted(d: Mapping[str, Any], path: str) -> Any:
    """``d["a"]["b"]`` for ``path == "a.b"``, or ``None`` when absent."""
    cur: Any = d
    for k in path.split("."):
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    return cur


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``["search.steps=10", ...]`` -> ``[("search.steps", 10), ...]`` (values read as YAML).

    Raises:
        UsageError: an item without ``=`` or with a value that is not valid YAML.
    """
    out = []
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected key=value")
        k, v = item.split("=", 1)
        if not k.strip():
            raise UsageError(f"--set {item}: empty key")
        out.append((k.strip(), yaml_load(v, f"--set {item}")))
    return out


# ---------------------------------------------------------------------------------- loading
def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = (), *,
                check: bool = True) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply ``--set`` overrides and
    validate it with :func:`check_config`.

    Args:
        path: the YAML file.
        overrides: ``["a.b=value", ...]``.
        check: run :func:`check_config` (data folders, backbone, search space, ...).

    Raises:
        UsageError: missing file, a folder, not text, invalid YAML (with line), a duplicated key
            (with line), unknown key, wrong type, bad value; every message starts with the file
            name.
    """
    from nas.io import read_text

    where = str(path) if path else "config"
    raw: Any = {}
    if path is not None:
        raw = yaml_load(read_text(path, "config file"), str(path)) or {}
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: the top level must be a mapping of blocks (name, task, ...)")
    try:
        for k, v in parse_overrides(overrides):
            set_dotted(raw, k, v)
        cfg = from_dict(Config, raw)
        if check:
            check_config(cfg, where)
    except UsageError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return cfg


def dump_config(cfg: Config) -> str:
    """The config as YAML (what ``config.yaml`` of a run holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """A :class:`Config` from a plain dict (e.g. a checkpoint's), unchecked.

    Raises:
        UsageError: unknown key or wrong type (names the dotted field).
    """
    return from_dict(Config, d)


def config_path_for(out_dir: str | os.PathLike) -> Path:
    """Where a run folder keeps its resolved config."""
    return Path(out_dir) / "config.yaml"
