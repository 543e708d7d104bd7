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

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from nas.errors import UsageError, did_you_mean
from nas.restoration.data import DataConfig
from nas.restoration.task import Task
from nas.yaml_loader import yaml_load
from search_spaces.space import SpaceConfig

#: penalty kinds of :class:`PenaltyConfig` (see :mod:`nas.engine.objective`)
PENALTY_KINDS = ("linear", "hinge", "log", "budget")
TAU_KINDS = ("exponential", "linear")


# ------------------------------------------------------------------------------------ blocks
@dataclass
class TauConfig:
    """Gumbel temperature schedule tau (``steps`` null = the search's step count).

    Attributes:
        start, end: temperatures (> 0) at the first and last scheduled step.
        kind: ``exponential`` or ``linear`` interpolation.
        steps: steps over which tau goes from ``start`` to ``end`` (constant afterwards).
    """

    start: float = 5.0
    end: float = 0.5
    kind: str = "exponential"
    steps: typing.Optional[int] = None


@dataclass
class PenaltyConfig:
    """The FLOPs term of the alpha loss (formulas in :func:`nas.engine.objective.alpha_loss`).

    Attributes:
        kind: ``linear`` lambda E[F]/F_base; ``hinge`` lambda max(0, E[F]/F_target - 1);
            ``log`` L1 (log E[F] / log F_target)^beta (ProxylessNAS); ``budget``
            lambda |E[F]/F_target - 1| (TuNAS absolute reward). F_base = the backbone alone.
        lam: lambda >= 0 (YAML key ``lambda``).
        target_gflops: F_target in GFLOPs (1e9 FLOPs) at the reference input size.
        beta: exponent of ``log``.
    """

    _aliases = {"lambda": "lam"}

    kind: str = "linear"
    lam: float = 0.0
    target_gflops: typing.Optional[float] = None
    beta: float = 0.6


@dataclass
class SearchConfig:
    """The bilevel supernet search (``search`` block); see :mod:`nas.engine.supernet_search`.

    Attributes:
        steps: total search steps (one weight step each; alpha steps after ``warmup_steps``).
        warmup_steps: steps with alpha frozen.
        lr: Adam learning rate of the weights (cosine-annealed to 0.1 x).
        alpha_lr: Adam learning rate of the architecture logits alpha.
        alpha_betas: Adam betas of alpha.
        alpha_weight_decay: L2 on alpha (0: the gates move by accuracy and FLOPs only).
        tau: temperature schedule.
        penalty: FLOPs term.
        lr_size: ``[H, W]`` input size of the FLOPs table (null: a 1280x720 output).
        checkpoint_every, log_every: in steps.
        val_images: held-out images scored after the search.
        amp: bf16 autocast on CUDA.
        channels_last: channels-last memory format on CUDA.
        grad_clip: max gradient norm of the weights (0: off).
    """

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
    """Training of a fixed network (``retrain`` block), BasicSR-like iteration schedule.

    Attributes:
        steps: iterations.
        lr: Adam learning rate.
        milestones: learning-rate halvings, as fractions of ``steps`` (< 1) or iterations (>= 1).
        gamma: learning-rate factor at each milestone.
        val_every, checkpoint_every: in iterations.
        val_set: benchmark set validated on (with a data root).
        eval_sets: benchmark sets evaluated after training (with a data root).
        inherit: initialise from the supernet's weights.
        amp: bf16 autocast on CUDA.
    """

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
    """A whole run config: ``name, seed, task, data, space, search, retrain, hpo``.

    ``hpo`` (the Optuna study) is parsed by :mod:`nas.study.params`.
    """

    name: str = "search"
    seed: int = 0
    task: Task = field(default_factory=Task)
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    hpo: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON/YAML-ready dict; the task as its compact :meth:`Task.to_dict`."""
        d = dataclasses.asdict(self)
        d["task"] = self.task.to_dict()
        return d


# ----------------------------------------------------------------------------- conversion
def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if tp is Task:
        if isinstance(value, Task):
            return value
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: expected a mapping like {{name: sr, scale: 2}}, got {value!r}")
        return Task.from_dict(value, where)
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
        item = (typing.get_args(tp) or (Any,))[0]
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp in (dict, typing.Dict) or origin is dict:
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, d: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively.

    Args:
        cls: the dataclass.
        d: the mapping.
        where: dotted name of the block (``""`` for a whole config), prefixed to field names.

    Raises:
        UsageError: unknown key (did-you-mean), wrong type; the message names ``where.key``.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    aliases = getattr(cls, "_aliases", {})
    for key, value in d.items():
        key = aliases.get(key, key)
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise UsageError(f"{name}: unknown key{did_you_mean(key, fields)}")
        kwargs[key] = _convert(value, hints[key], name)
    return cls(**kwargs)


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


# ------------------------------------------------------------------------------- validation
def _positive(where: str, value: float, strict: bool = True) -> None:
    if not (value > 0 if strict else value >= 0):
        raise UsageError(f"{where}: must be {'>' if strict else '>='} 0, got {value}")


def check_search(s: SearchConfig, where: str = "search") -> None:
    """Values of the ``search`` block.

    Raises:
        UsageError: non-positive steps or rates, a warm-up that leaves no alpha step, bad tau
            schedule, unknown penalty kind, a penalty kind without its target, bad ``lr_size``.
    """
    if s.steps < 1:
        raise UsageError(f"{where}.steps: must be >= 1, got {s.steps}")
    if s.warmup_steps < 0:
        raise UsageError(f"{where}.warmup_steps: must be >= 0, got {s.warmup_steps}")
    if s.warmup_steps >= s.steps:
        raise UsageError(f"{where}.warmup_steps: ({s.warmup_steps}) must be < {where}.steps "
                         f"({s.steps}), or alpha is never trained")
    for k in ("checkpoint_every", "log_every", "val_images"):
        if getattr(s, k) < 1:
            raise UsageError(f"{where}.{k}: must be >= 1, got {getattr(s, k)}")
    for k in ("lr", "alpha_lr"):
        _positive(f"{where}.{k}", getattr(s, k))
    _positive(f"{where}.alpha_weight_decay", s.alpha_weight_decay, strict=False)
    _positive(f"{where}.grad_clip", s.grad_clip, strict=False)
    if len(s.alpha_betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1
                                          for b in s.alpha_betas):
        raise UsageError(f"{where}.alpha_betas: expected two numbers in [0, 1), got {s.alpha_betas}")
    t = s.tau
    if not (t.start > 0 and t.end > 0):
        raise UsageError(f"{where}.tau: start and end must be > 0, got {t.start}, {t.end}")
    if t.kind not in TAU_KINDS:
        raise UsageError(f"{where}.tau.kind: one of {', '.join(TAU_KINDS)}, got {t.kind!r}"
                         f"{did_you_mean(t.kind, TAU_KINDS)}")
    if t.steps is not None and t.steps < 1:
        raise UsageError(f"{where}.tau.steps: must be >= 1, got {t.steps}")
    p = s.penalty
    if p.kind not in PENALTY_KINDS:
        raise UsageError(f"{where}.penalty.kind: one of {', '.join(PENALTY_KINDS)}, got "
                         f"{p.kind!r}{did_you_mean(p.kind, PENALTY_KINDS)}")
    if p.kind != "linear" and not (p.target_gflops and p.target_gflops > 0):
        raise UsageError(f"{where}.penalty.target_gflops: required (> 0) for kind {p.kind!r}")
    _positive(f"{where}.penalty.lambda", p.lam, strict=False)
    if s.lr_size is not None and (len(s.lr_size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s.lr_size)):
        raise UsageError(f"{where}.lr_size: expected [H, W] (positive integers), got {s.lr_size}")


def check_retrain(r: RetrainConfig, where: str = "retrain") -> None:
    """Values of the ``retrain`` block.

    Raises:
        UsageError: non-positive steps, intervals or rates, bad milestones, unknown set names.
    """
    from nas.restoration.images import SET_LOCATIONS

    for k in ("steps", "val_every", "checkpoint_every"):
        if getattr(r, k) < 1:
            raise UsageError(f"{where}.{k}: must be >= 1, got {getattr(r, k)}")
    _positive(f"{where}.lr", r.lr)
    _positive(f"{where}.gamma", r.gamma)
    for i, m in enumerate(r.milestones):
        if isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 or (
                m >= 1 and not float(m).is_integer()):
            raise UsageError(f"{where}.milestones[{i}]: expected a fraction of the steps in (0, 1) "
                             f"or an iteration number, got {m!r}")
    for key, names in (("val_set", [r.val_set]), ("eval_sets", r.eval_sets)):
        for n in names:
            if not isinstance(n, str) or n not in SET_LOCATIONS:
                raise UsageError(f"{where}.{key}: unknown benchmark set {n!r}"
                                 f"{did_you_mean(n, SET_LOCATIONS)}; known: {', '.join(SET_LOCATIONS)}")


def check_config(cfg: Config, where: str = "config") -> None:
    """The one validation of a whole config, run before anything is written or trained.

    Checks the ``search`` and ``retrain`` values, the data (source exists and holds images,
    built-in names, patch size a multiple of the task's modulo and no larger than any image,
    enough images for a train/val split), the backbone (known, keywords it takes) and the search
    space (operators, points, references, key counts). The ``hpo`` block is checked by
    :func:`nas.study.params.prepare_study`.

    Raises:
        UsageError: the first problem found, naming ``where`` and the dotted field.
    """
    from backbones import build_backbone
    from search_spaces.space import SearchSpace

    try:
        if not isinstance(cfg.name, str) or not cfg.name or "/" in cfg.name:
            raise UsageError(f"name: a non-empty name without '/', got {cfg.name!r}")
        check_search(cfg.search)
        check_retrain(cfg.retrain)
        cfg.data.check(cfg.task)
        tail = "upsample" if cfg.task.name == "sr" else "conv"
        backbone = build_backbone(cfg.space.backbone, cfg.task.scale, tail)
        SearchSpace(cfg.space, backbone.config.num_block)
    except UsageError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def config_path_for(out_dir: str | os.PathLike) -> Path:
    """Where a run folder keeps its resolved config."""
    return Path(out_dir) / "config.yaml"
