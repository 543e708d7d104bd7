"""YAML configs as typed dataclasses: unknown keys (with a did-you-mean), wrong types and bad
values raise :class:`UsageError` naming the file and the dotted field.

``--set a.b=c`` overrides are parsed with ``yaml.safe_load`` (no ``exec``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from nas.data import DataConfig, Task
from nas.errors import UsageError
from search_spaces.space import SpaceConfig


@dataclass
class TauConfig:
    """Gumbel temperature schedule (``steps`` null = the search's step count)."""

    start: float = 5.0
    end: float = 0.5
    kind: str = "exponential"
    steps: typing.Optional[int] = None


@dataclass
class PenaltyConfig:
    """FLOPs penalty: ``linear`` lambda*E[F]/F_base; ``hinge`` lambda*max(0, E[F]/F_target - 1);
    ``log`` L1*(log E[F] / log F_target)^beta (ProxylessNAS). F_base = the backbone alone."""

    _aliases = {"lambda": "lam"}

    kind: str = "linear"
    lam: float = 0.0
    target_gflops: typing.Optional[float] = None
    beta: float = 0.6


@dataclass
class SearchConfig:
    """The bilevel supernet search (``search`` block)."""

    steps: int = 300
    warmup_steps: int = 100
    lr: float = 2e-4
    alpha_lr: float = 3e-3
    alpha_betas: list = field(default_factory=lambda: [0.5, 0.999])
    alpha_weight_decay: float = 1e-3
    tau: TauConfig = field(default_factory=TauConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    lr_size: typing.Optional[list] = None
    checkpoint_every: int = 50
    log_every: int = 10
    val_images: int = 4
    amp: bool = True
    channels_last: bool = True
    grad_clip: float = 1.0


@dataclass
class RetrainConfig:
    """Training of a fixed network (``retrain`` block), BasicSR-like iteration schedule."""

    steps: int = 2000
    lr: float = 2e-4
    milestones: list = field(default_factory=list)
    gamma: float = 0.5
    val_every: int = 500
    val_set: str = "Set5"
    eval_sets: list = field(default_factory=lambda: ["Set5"])
    checkpoint_every: int = 500
    inherit: bool = False
    amp: bool = True


@dataclass
class Config:
    """A whole run config: ``name, seed, task, data, space, search, retrain``."""

    name: str = "search"
    seed: int = 0
    task: dict = field(default_factory=lambda: {"name": "sr", "scale": 2})
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    hpo: dict = field(default_factory=dict)

    def task_obj(self) -> Task:
        return Task.from_dict(self.task)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- conversion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{where}: expected a string, got {value!r}")
        return value
    if tp in (list, typing.List) or origin is list:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if tp in (dict, typing.Dict) or origin is dict:
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, d: Mapping[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively.

    Raises:
        UsageError: unknown key (did-you-mean), wrong type; the message names ``where.key``.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    aliases = getattr(cls, "_aliases", {})
    for key, value in d.items():
        key = aliases.get(key, key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{where}.{key}: unknown key{hint}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """``d["a"]["b"] = value`` for ``dotted == "a.b"`` (creating nested dicts)."""
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise UsageError(f"--set {dotted}: {k} is not a mapping")
        cur = nxt
    cur[keys[-1]] = value


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``["search.steps=10", ...]`` -> ``[("search.steps", 10), ...]`` (values as YAML)."""
    out = []
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected key=value")
        k, v = item.split("=", 1)
        try:
            out.append((k.strip(), yaml.safe_load(v)))
        except yaml.YAMLError:
            raise UsageError(f"--set {item}: value is not valid YAML") from None
    return out


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    Raises:
        UsageError: missing file, invalid YAML (with line), unknown key, wrong type, bad value;
            every message starts with the file name.
    """
    where = str(path) if path else "config"
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"{p}: no such config file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise UsageError(f"{p}: invalid YAML{at}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"{p}: top level must be a mapping")
    for k, v in parse_overrides(overrides):
        set_dotted(raw, k, v)
    try:
        cfg = from_dict(Config, raw, where)
        cfg.task_obj()
    except UsageError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
