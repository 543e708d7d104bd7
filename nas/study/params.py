"""The study's outer hyperparameters: the ``hpo`` block, its parameters and the trial configs.

The ``hpo`` block (parsed into :class:`HpoConfig`)::

    hpo:
      trials: 8                    # searched trials (reference trials come on top)
      sampler: nsga2               # nsga2 | tpe
      seed: 0
      population_size: 4           # NSGA-II generation size
      params:                      # dotted config field -> distribution
        search.penalty.lambda: {type: float, low: 0.01, high: 3.0, log: true}
        search.penalty.kind: {type: categorical, choices: [linear, log]}
        search.alpha_lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
        search.warmup_steps: {type: int, low: 10, high: 40}
      reference_trials: [no_attention, acla_everywhere]
      time_budget_s: 600           # per trial; exceeded -> PRUNED with the reason
      heartbeat_interval: 60       # seconds (RDB storages)

Each parameter is an Optuna distribution over a dotted field of the config; a trial's config is
the study's config with the sampled values set (:func:`trial_config`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from nas.config import Config, check_config, from_dict, get_dotted, set_dotted
from nas.errors import UsageError, did_you_mean

SAMPLERS = ("nsga2", "tpe")
PARAM_TYPES = ("float", "int", "categorical")


# ------------------------------------------------------------------------------------ config
@dataclass
class ParamSpec:
    """One outer hyperparameter: an Optuna distribution over a dotted config field.

    Attributes:
        type: ``float``, ``int`` or ``categorical``.
        low, high: bounds (float/int), inclusive.
        log: sample on a log scale (float/int; ``low > 0``).
        step: discretisation step (float/int; not with ``log`` for floats).
        choices: the values of a categorical (numbers, strings, booleans or null).
    """

    type: str = "float"
    low: typing.Optional[float] = None
    high: typing.Optional[float] = None
    log: bool = False
    step: typing.Optional[float] = None
    choices: typing.Optional[list] = None


@dataclass
class HpoConfig:
    """The ``hpo`` block of a config (see the module docstring).

    Attributes:
        trials: number of searched trials of the study (reference trials not counted).
        sampler: ``nsga2`` or ``tpe`` (multi-objective TPE).
        seed: sampler seed (the process that creates the study uses it as is).
        population_size: NSGA-II generation size.
        startup_trials: TPE random start-up trials.
        params: ``{dotted config field: ParamSpec}``.
        reference_trials: known architectures to evaluate as baselines.
        time_budget_s: wall-clock budget of one trial attempt (seconds); ``None``: unlimited.
        heartbeat_interval: seconds between heartbeats of a running trial (RDB storages).
        grace_period: seconds without heartbeat before a trial counts as dead (default 2x
            ``heartbeat_interval``).
        max_retry: how often a killed trial is re-queued.
        seed_per_trial: trial seed = ``seed`` + trial number (default: every trial uses the
            config's ``seed``, so trials differ only in their hyperparameters).
        ref_point: ``[psnr_db, gflops]`` reference point of the hypervolume (default: derived
            from the trials, see :func:`nas.study.pareto.default_reference_point`).
        storage: storage URL or journal path (``--storage`` wins).
        study: study name (``--study`` wins; default: the config's ``name``).
    """

    trials: int = 10
    sampler: str = "nsga2"
    seed: int = 0
    population_size: int = 8
    startup_trials: int = 5
    params: dict = field(default_factory=dict)
    reference_trials: list = field(default_factory=list)
    time_budget_s: typing.Optional[float] = None
    heartbeat_interval: int = 60
    grace_period: typing.Optional[int] = None
    max_retry: int = 3
    seed_per_trial: bool = False
    ref_point: typing.Optional[list] = None
    storage: typing.Optional[str] = None
    study: typing.Optional[str] = None



def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if args else tp
    return tp


def config_field(path: str, where: str) -> tuple[str, Any]:
    """Resolve a dotted config field (aliases like ``lambda`` -> ``lam``).

    Returns:
        ``(canonical dotted path, leaf type)``; the type is ``Any`` inside free-form mappings.

    Raises:
        UsageError: unknown field (with a did-you-mean), or a path through a non-mapping field.
    """
    cls: Any = Config
    out: list[str] = []
    tp: Any = Config
    parts = path.split(".")
    for i, part in enumerate(parts):
        if cls is None:  # inside a free-form mapping (task, space.backbone, space.op_config)
            out.append(part)
            tp = Any
            continue
        if not dataclasses.is_dataclass(cls):
            raise UsageError(f"{where}: {'.'.join(out)} is not a mapping")
        aliases = getattr(cls, "_aliases", {})
        names = [f.name for f in dataclasses.fields(cls)]
        name = aliases.get(part, part)
        if name not in names:
            cands = names + list(aliases)
            hint = did_you_mean(part, cands, prefix=".".join(parts[:i] + [""]))
            raise UsageError(f"{where}: unknown config field {path!r}{hint}")
        if cls is Config and name == "hpo":
            raise UsageError(f"{where}: the hpo block itself cannot be searched")
        out.append(name)
        tp = _unwrap_optional(typing.get_type_hints(cls)[name])
        if dataclasses.is_dataclass(tp):
            cls = tp
        elif tp in (dict, typing.Dict) or typing.get_origin(tp) is dict:
            cls = None
        else:
            cls = "leaf"
            if i < len(parts) - 1:
                raise UsageError(f"{where}: {'.'.join(out)} is not a mapping")
    if dataclasses.is_dataclass(tp):
        raise UsageError(f"{where}: {path!r} is a block, not a field")
    return ".".join(out), tp


def _flatten_params(raw: Mapping[str, Any], prefix: str = "") -> dict[str, dict]:
    """``{"search.tau.start": {...}}`` and nested ``{"search": {"tau": {"start": {...}}}}`` (what
    ``--set hpo.params.search.tau.start.low=1`` produces) -> flat ``{dotted: spec dict}``."""
    spec_keys = {f.name for f in dataclasses.fields(ParamSpec)}
    out: dict[str, dict] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not (set(value) & spec_keys):
            for k, v in _flatten_params(value, name + ".").items():
                out.setdefault(k, {}).update(v)
        else:
            if not isinstance(value, Mapping):
                raise UsageError(f"hpo.params.{name}: expected a mapping like "
                                 "{type: float, low: ..., high: ...}, got " + repr(value))
            out.setdefault(name, {}).update(value)
    return out


def _check_spec(name: str, s: ParamSpec, leaf: Any) -> None:
    where = f"hpo.params.{name}"
    if s.type not in PARAM_TYPES:
        hint = did_you_mean(s.type, PARAM_TYPES)
        raise UsageError(f"{where}.type: one of {', '.join(PARAM_TYPES)}, got {s.type!r}{hint}")
    if s.type == "categorical":
        if not s.choices:
            raise UsageError(f"{where}.choices: empty search space (give at least one value)")
        for c in s.choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise UsageError(f"{where}.choices: values must be numbers, strings, booleans or "
                                 f"null, got {c!r}")
        if s.low is not None or s.high is not None or s.log or s.step is not None:
            raise UsageError(f"{where}: a categorical takes only 'choices'")
        return
    if s.choices is not None:
        raise UsageError(f"{where}.choices: only for type categorical")
    if s.low is None or s.high is None:
        raise UsageError(f"{where}: {s.type} needs 'low' and 'high'")
    if not s.low <= s.high:
        raise UsageError(f"{where}: low ({s.low}) must be <= high ({s.high})")
    if s.log and s.low <= 0:
        raise UsageError(f"{where}: log scale needs low > 0, got {s.low}")
    if s.step is not None and not s.step > 0:
        raise UsageError(f"{where}.step: must be > 0, got {s.step}")
    if s.type == "float" and s.log and s.step is not None:
        raise UsageError(f"{where}: a float cannot have both 'log' and 'step'")
    if s.type == "int":
        for k in ("low", "high", "step"):
            v = getattr(s, k)
            if v is not None and not float(v).is_integer():
                raise UsageError(f"{where}.{k}: expected an integer for type int, got {v}")
    if s.type == "float" and leaf is int:
        raise UsageError(f"{where}.type: the field is an integer; use type: int")
    if leaf in (str, bool):
        raise UsageError(f"{where}.type: the field is a {leaf.__name__}; use type: categorical")


def parse_hpo(raw: Mapping[str, Any] | None, source: str = "config") -> tuple[HpoConfig, dict]:
    """Parse the ``hpo`` block into :class:`HpoConfig` and ``{name: ParamSpec}``.

    Raises:
        UsageError: unknown key (did-you-mean), wrong type, bad value, empty search space; the
            message starts with ``source`` and names the field.
    """
    try:
        h = from_dict(HpoConfig, raw or {}, "hpo")
        if h.trials < 1:
            raise UsageError(f"hpo.trials: must be >= 1, got {h.trials}")
        if h.sampler not in SAMPLERS:
            hint = did_you_mean(h.sampler, SAMPLERS)
            raise UsageError(f"hpo.sampler: one of {', '.join(SAMPLERS)}, got {h.sampler!r}{hint}")
        if h.population_size < 2:
            raise UsageError(f"hpo.population_size: must be >= 2, got {h.population_size}")
        if h.startup_trials < 0:
            raise UsageError(f"hpo.startup_trials: must be >= 0, got {h.startup_trials}")
        if h.time_budget_s is not None and not h.time_budget_s > 0:
            raise UsageError(f"hpo.time_budget_s: must be > 0, got {h.time_budget_s}")
        if h.heartbeat_interval < 1:
            raise UsageError(f"hpo.heartbeat_interval: must be >= 1 s, got {h.heartbeat_interval}")
        if h.grace_period is not None and h.grace_period < h.heartbeat_interval:
            raise UsageError(f"hpo.grace_period: must be >= heartbeat_interval "
                             f"({h.heartbeat_interval}), got {h.grace_period}")
        if h.max_retry < 0:
            raise UsageError(f"hpo.max_retry: must be >= 0, got {h.max_retry}")
        if h.ref_point is not None and (len(h.ref_point) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in h.ref_point)):
            raise UsageError(f"hpo.ref_point: expected [psnr_db, gflops], got {h.ref_point}")
        specs: dict[str, ParamSpec] = {}
        for name, d in _flatten_params(h.params).items():
            specs[name] = from_dict(ParamSpec, d, f"hpo.params.{name}")
        if not specs:
            raise UsageError("hpo.params: empty search space (declare at least one outer "
                             "hyperparameter, e.g. search.penalty.lambda: {type: float, low: 0.01, "
                             "high: 1, log: true})")
    except UsageError as e:
        raise UsageError(f"{source}: {e}") from None
    return h, specs



# ------------------------------------------------------------------------- trial configs
def trial_config(base: Config, values: Mapping[str, Any], targets: Mapping[str, str],
                 seed: int | None = None, where: str = "trial") -> Config:
    """The config of one trial: ``base`` with the sampled ``values`` set (and no ``hpo`` block).

    Args:
        base: the study's config.
        values: ``{param name: value}``.
        targets: ``{param name: canonical dotted field}``.
        seed: the trial's seed (``None``: keep ``base.seed``).
        where: prefix of error messages.

    Raises:
        UsageError: a value that does not fit its field.
    """
    raw = base.to_dict()
    raw["hpo"] = {}
    for name, value in values.items():
        set_dotted(raw, targets[name], value)
    if seed is not None:
        raw["seed"] = int(seed)
    try:
        return from_dict(Config, raw)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None




def base_values(cfg: Config, specs: Mapping[str, "ParamSpec"],
                targets: Mapping[str, str]) -> dict[str, Any]:
    """The config's own value of every parameter, moved into its distribution (reference trials
    and the config check of :func:`check_params`)."""
    raw = cfg.to_dict()
    out = {}
    for name, s in specs.items():
        v = get_dotted(raw, targets[name])
        if s.type == "categorical":
            out[name] = v if v in s.choices else s.choices[0]
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = float(s.low)
        v = min(max(v, float(s.low)), float(s.high))
        if s.step is not None:
            v = s.low + round((v - s.low) / s.step) * s.step
            v = min(v, s.high)
        out[name] = int(round(v)) if s.type == "int" else v
    return out


def boundary_values(s: ParamSpec) -> list[Any]:
    """The extreme values of a distribution (every choice of a categorical), checked at set-up."""
    if s.type == "categorical":
        return list(s.choices or [])
    if s.type == "int":
        return [int(s.low), int(s.high)]
    return [float(s.low), float(s.high)]



def suggest(trial, name: str, s: ParamSpec) -> Any:
    """Sample one outer hyperparameter."""
    if s.type == "categorical":
        return trial.suggest_categorical(name, list(s.choices))
    if s.type == "int":
        return trial.suggest_int(name, int(s.low), int(s.high), log=s.log,
                                 step=int(s.step) if s.step else 1)
    return trial.suggest_float(name, float(s.low), float(s.high), log=s.log, step=s.step)




def check_params(cfg: Config, specs: Mapping[str, ParamSpec], source: str) -> dict[str, str]:
    """Resolve every parameter's dotted field and check that the config, with the parameters at
    the config's own values and at every boundary value, is valid (:func:`nas.config.check_config`).

    Returns:
        ``{param name: canonical dotted field}``.

    Raises:
        UsageError: unknown field, a distribution that does not fit its field, or a boundary
            value that makes the config invalid (names ``source`` and ``hpo.params.<name>``).
    """
    targets: dict[str, str] = {}
    for name, s in specs.items():
        try:
            targets[name], leaf = config_field(name, f"hpo.params.{name}")
            _check_spec(name, s, leaf)
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
    check_config(trial_config(cfg, base_values(cfg, specs, targets), targets, where=source), source)
    for name, s in specs.items():
        for v in boundary_values(s):
            where = f"{source}: hpo.params.{name}={v!r}"
            try:
                tcfg = trial_config(cfg, {name: v}, targets, where=where)
                check_config(tcfg, where)
            except UsageError as e:
                msg = str(e)
                raise UsageError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return targets
