"""The Optuna outer loop: a multi-objective study over the search's outer hyperparameters.

One study = many trials; each trial samples the outer hyperparameters declared in the config's
``hpo`` block (lambda, penalty kind, tau schedule, alpha learning rate, warm-up, ...), runs one
supernet search (:class:`nas.search.SearchRun`) in ``<out>/trials/<n>/``, derives the argmax
architecture and returns ``(psnr_db, gflops)``:

* ``psnr_db`` - PSNR (dB) of the derived network with the supernet's weights on centre crops of
  the held-out validation images, in the task's convention (SR: Y channel, ``scale`` pixels
  cropped; denoising/demosaicing: RGB; JPEG: Y), see ``result.json`` of each trial;
* ``gflops`` - exact GFLOPs (1e9 FLOPs, FLOPs = 2 x MACs, per image) of the derived network at the
  reference input size (``search.lr_size``, default a 1280x720 output).

Directions ``["maximize", "minimize"]``, metric names ``["psnr_db", "gflops"]``; seeded NSGA-II
(default) or multi-objective TPE.

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

Reference trials
    A known architecture (``no_attention``: skip at every point; ``<op>_everywhere``: that
    operator at every point reading the most keys from every reference; or
    ``{name: ..., choices: {label: value}}``) is evaluated by the same :class:`SearchRun` with
    the supernet's gates pinned to that architecture (logits one-hot, alpha frozen for the whole
    run). Only that architecture's path is sampled and trained, so this *is* training the fixed
    network for the search's step budget with the same data, optimiser, schedule and validation
    crops - the honest baseline for trials whose weights come from the same budget shared by many
    paths. Reference trials are enqueued when the study is created, carry the user attr
    ``reference`` and a constraint ``reference = 1`` (infeasible), so samplers never breed from
    them and ``study.best_trials`` lists searched trials only; their hyperparameters are the
    config's own values (they have no effect with frozen gates).

Storages (:func:`resolve_storage`)
    default ``sqlite:///<out>/study.db``; ``journal:PATH`` or a ``*.log`` path ->
    ``JournalStorage(JournalFileBackend(PATH))`` (several processes on one machine); any
    SQLAlchemy URL (``postgresql+psycopg2://user@host/db``, ``mysql+pymysql://...``) for workers
    on several machines. Several ``acla-nas search`` processes on one study cooperate: each runs
    trials until ``hpo.trials`` searched trials are finished or running.

Crashes and resume
    RDB storages record heartbeats (``heartbeat_interval``, ``grace_period``); a trial whose
    worker stopped beating is failed and re-queued with the same hyperparameters by
    :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`. Every trial also records its
    worker (host, pid); a restarted worker on the same host re-queues trials whose process is gone
    at once (any storage, journal files included, which have no heartbeats). Ctrl-C re-queues the
    interrupted trial. A retried trial reuses the run directory of the trial it retries and
    resumes from its ``supernet.pt``.

Failures
    A trial whose loss diverges (NaN/inf) ends FAIL, one that exceeds ``time_budget_s`` ends
    PRUNED; both carry the user attr ``fail_reason`` and the study goes on.

Duplicates
    A searched trial whose hyperparameters equal those of a COMPLETE trial reuses that trial's
    result (user attr ``duplicate_of``) instead of repeating a deterministic search.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import math
import os
import socket
import sys
import time
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from nas.config import Config, from_dict, set_dotted
from nas.errors import UsageError

log = logging.getLogger("acla_nas.hpo")

DIRECTIONS = ["maximize", "minimize"]
METRIC_NAMES = ["psnr_db", "gflops"]
SAMPLERS = ("nsga2", "tpe")
PARAM_TYPES = ("float", "int", "categorical")
#: gate logit given to the pinned choice of a reference trial (Gumbel noise is < 20 in size)
PINNED_LOGIT = 50.0


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
            from the trials, see :func:`nas.pareto.default_reference_point`).
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


@dataclass
class StudySetup:
    """A validated study set-up: base config, hpo block and the resolved parameter targets."""

    cfg: Config
    hpo: HpoConfig
    specs: dict[str, ParamSpec]
    targets: dict[str, str]  # param name -> canonical dotted field (aliases resolved)
    references: list[tuple[str, dict]]  # (name, architecture)
    source: str = "config"

    def fingerprint(self) -> dict:
        """What must agree between workers of one study (everything that shapes a trial), as
        JSON-ready data."""
        d = self.cfg.to_dict()
        d["hpo"] = {"params": {k: dataclasses.asdict(v) for k, v in self.specs.items()},
                    "reference_trials": [[n, a] for n, a in self.references],
                    "seed_per_trial": self.hpo.seed_per_trial}
        return json.loads(json.dumps(d))


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
            close = difflib.get_close_matches(part, cands, n=1)
            hint = f" (did you mean {'.'.join(parts[:i] + [close[0]])!r}?)" if close else ""
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
        close = difflib.get_close_matches(str(s.type), PARAM_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
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
            close = difflib.get_close_matches(h.sampler, SAMPLERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
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
    cfg = from_dict(Config, raw, where)
    cfg.task_obj()
    return cfg


def check_search_config(cfg: Config, where: str = "config") -> None:
    """Cheap checks of a search config that would otherwise fail inside a trial.

    Raises:
        UsageError: bad task, space, data selection, schedule, penalty or step counts.
    """
    from nas.data import BUILTIN_PHOTOS
    from nas.gates import TemperatureSchedule
    from nas.network import build_backbone
    from search_spaces.space import SearchSpace

    try:
        task = cfg.task_obj()
        s = cfg.search
        if s.steps < 1 or s.warmup_steps < 0:
            raise UsageError("search.steps must be >= 1 and search.warmup_steps >= 0")
        if s.warmup_steps >= s.steps:
            raise UsageError(f"search.warmup_steps ({s.warmup_steps}) must be < search.steps "
                             f"({s.steps}), or alpha is never trained")
        if s.checkpoint_every < 1 or s.log_every < 1:
            raise UsageError("search.checkpoint_every and search.log_every must be >= 1")
        for k in ("lr", "alpha_lr"):
            if not getattr(s, k) > 0:
                raise UsageError(f"search.{k}: must be > 0, got {getattr(s, k)}")
        TemperatureSchedule(s.tau.start, s.tau.end, s.tau.steps or s.steps, s.tau.kind)
        p = s.penalty
        if p.kind not in ("linear", "hinge", "log"):
            raise UsageError(f"search.penalty.kind: 'linear', 'hinge' or 'log', got {p.kind!r}")
        if p.kind != "linear" and not (p.target_gflops and p.target_gflops > 0):
            raise UsageError(f"search.penalty.target_gflops: required (> 0) for kind={p.kind!r}")
        if p.lam < 0:
            raise UsageError(f"search.penalty.lambda: must be >= 0, got {p.lam}")
        if s.lr_size is not None and (len(s.lr_size) != 2 or min(int(v) for v in s.lr_size) < 1):
            raise UsageError(f"search.lr_size: expected [H, W], got {s.lr_size}")
        d = cfg.data
        if d.source == "builtin":
            bad = [n for n in d.images if n not in BUILTIN_PHOTOS]
            if bad:
                raise UsageError(f"data.images: unknown built-in photo {bad[0]!r}; known: "
                                 f"{', '.join(BUILTIN_PHOTOS)}")
        elif not Path(d.source).is_dir():
            raise UsageError(f"data.source: {d.source}: image folder does not exist")
        if not 0 < d.val_fraction < 1:
            raise UsageError(f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
        if d.patch_size < 8 or d.batch_size < 1:
            raise UsageError("data.patch_size must be >= 8 and data.batch_size >= 1")
        backbone = build_backbone(cfg.space, task)
        SearchSpace(cfg.space, backbone.config.num_block)
    except UsageError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except TypeError as e:  # a backbone keyword that does not exist
        raise UsageError(f"{where}: space.backbone: {e}") from None


def _get_dotted(d: Mapping[str, Any], path: str) -> Any:
    cur: Any = d
    for k in path.split("."):
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    return cur


def base_values(setup: StudySetup) -> dict[str, Any]:
    """The config's own value of every parameter, moved into its distribution (reference trials)."""
    raw = setup.cfg.to_dict()
    out = {}
    for name, s in setup.specs.items():
        v = _get_dotted(raw, setup.targets[name])
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


def _boundary_values(s: ParamSpec) -> list[Any]:
    if s.type == "categorical":
        return list(s.choices or [])
    if s.type == "int":
        return [int(s.low), int(s.high)]
    return [float(s.low), float(s.high)]


# ---------------------------------------------------------------------------- references
def reference_names(space) -> list[str]:
    """Names of the built-in reference architectures of a search space."""
    from search_spaces.space import SKIP

    ops = sorted({op for p in space for op in p.ops if op != SKIP})
    return ["no_attention", *[f"{op}_everywhere" for op in ops]]


def reference_arch(ref: Any, space, where: str = "hpo.reference_trials") -> tuple[str, dict]:
    """Resolve a reference trial entry to ``(name, architecture)``.

    Args:
        ref: ``"no_attention"``, ``"<op>_everywhere"`` (e.g. ``acla_everywhere``: ``op`` at every
            point, reading the largest key count from every reference layer), or
            ``{"name": ..., "choices": {label: value}}`` (unlisted points skip, unlisted key
            counts take the largest value).
        space: the :class:`search_spaces.space.SearchSpace`.

    Raises:
        UsageError: unknown name (did-you-mean), an operator not offered, invalid choices.
    """
    from nas.network import canonical_arch
    from search_spaces.space import SKIP

    if isinstance(ref, str):
        name = ref
        known = reference_names(space)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{where}: unknown reference architecture {name!r}{hint}; known: "
                             f"{', '.join(known)}, or {{name: ..., choices: {{label: value}}}}")
        op = SKIP if name == "no_attention" else name[: -len("_everywhere")]
        arch: dict[str, Any] = {}
        for p in space:
            arch[p.op_label()] = op
            for r in p.refs:
                arch[p.key_label(r)] = max(p.keys)
    elif isinstance(ref, Mapping):
        extra = set(ref) - {"name", "choices"}
        if extra or not isinstance(ref.get("name"), str) or not isinstance(ref.get("choices"), Mapping):
            raise UsageError(f"{where}: expected a name or {{name: str, choices: {{label: value}}}}, "
                             f"got {dict(ref)!r}")
        name = ref["name"]
        try:
            given = space.validate(dict(ref["choices"]), complete=False)
        except UsageError as e:
            raise UsageError(f"{where}.{name}: {e}") from None
        arch = {}
        for p in space:
            arch[p.op_label()] = given.get(p.op_label(), SKIP)
            for r in p.refs:
                arch[p.key_label(r)] = given.get(p.key_label(r), max(p.keys))
    else:
        raise UsageError(f"{where}: expected a name or a mapping, got {ref!r}")
    by_label = {c.label for c in space.choices()}
    arch = {k: v for k, v in arch.items() if k in by_label}
    try:
        arch = space.validate(arch)
    except UsageError as e:
        raise UsageError(f"{where}.{name}: {e}") from None
    return name, canonical_arch(space, arch)


def pin_architecture(model, arch: Mapping[str, Any]) -> None:
    """Set the supernet's logits one-hot at ``arch`` (the pinned value gets :data:`PINNED_LOGIT`).

    With alpha frozen, every Gumbel sample is then ``arch`` (the noise is bounded by ~20).
    Key-count labels absent from ``arch`` (points that skip) pin their largest value.
    """
    import torch

    with torch.no_grad():
        for label, a in model.gates.alpha.items():
            values = model.choices[label].values
            v = arch.get(label, values[-1])
            a.zero_()
            a[values.index(v)] = PINNED_LOGIT


# ------------------------------------------------------------------------------ set-up
def prepare(cfg: Config, source: str = "config", trials: int | None = None,
            study: str | None = None, storage: str | None = None) -> StudySetup:
    """Validate a study config completely, before any storage is touched.

    Args:
        cfg: the loaded config (its ``hpo`` block declares the study).
        source: the config file name, for messages.
        trials, study, storage: command-line values that replace ``hpo.trials/study/storage``.

    Raises:
        UsageError: any problem (unknown key with did-you-mean, wrong type, empty search space,
            a parameter value that does not fit its field, unknown reference architecture).
    """
    raw = dict(cfg.hpo)
    if trials is not None:
        raw["trials"] = trials
    if study is not None:
        raw["study"] = study
    if storage is not None:
        raw["storage"] = storage
    h, specs = parse_hpo(raw, source)
    base = copy.deepcopy(cfg)
    base.hpo = {}
    targets: dict[str, str] = {}
    for name, s in specs.items():
        try:
            targets[name], leaf = config_field(name, f"hpo.params.{name}")
            _check_spec(name, s, leaf)
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
    setup = StudySetup(cfg=base, hpo=h, specs=specs, targets=targets, references=[],
                       source=source)
    # the config as the reference trials run it (searched fields at the config's own values)
    check_search_config(trial_config(base, base_values(setup), targets, where=source), source)
    # every boundary value must give a valid trial config
    for name, s in specs.items():
        for v in _boundary_values(s):
            where = f"{source}: hpo.params.{name}={v!r}"
            try:
                tcfg = trial_config(base, {name: v}, targets, where=where)
            except UsageError as e:
                msg = str(e)
                raise UsageError(msg if msg.startswith(where) else f"{where}: {msg}") from None
            check_search_config(tcfg, where)
    from nas.network import build_backbone
    from search_spaces.space import SearchSpace

    space = SearchSpace(base.space, build_backbone(base.space, base.task_obj()).config.num_block)
    refs = []
    for i, ref in enumerate(h.reference_trials):
        try:
            refs.append(reference_arch(ref, space, f"hpo.reference_trials[{i}]"))
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
    names = [n for n, _ in refs]
    if len(set(names)) != len(names):
        raise UsageError(f"{source}: hpo.reference_trials: duplicated name")
    setup.references = refs
    return setup


# ----------------------------------------------------------------------------- storages
def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL
        return url


def storage_kind(spec: str | None) -> str:
    """``sqlite``, ``journal`` or ``rdb`` for a ``--storage`` value (None -> ``sqlite``)."""
    if spec is None:
        return "sqlite"
    if spec.startswith("journal:") or ("://" not in spec and spec.endswith(".log")):
        return "journal"
    if "://" not in spec:
        raise UsageError(f"--storage {spec}: expected sqlite:///FILE, journal:FILE, a .log path "
                         "or a database URL such as postgresql+psycopg2://user@host/db")
    return "sqlite" if spec.startswith("sqlite") else "rdb"


def default_storage_url(out_dir: str | os.PathLike) -> str:
    return f"sqlite:///{Path(out_dir) / 'study.db'}"


def _journal_path(spec: str) -> Path:
    return Path(spec[len("journal:"):] if spec.startswith("journal:") else spec)


def resolve_storage(spec: str | None, out_dir: str | os.PathLike | None = None, *,
                    heartbeat_interval: int | None = None, grace_period: int | None = None,
                    max_retry: int | None = 3, create: bool = True):
    """Open an Optuna storage.

    Args:
        spec: ``None`` (``sqlite:///<out_dir>/study.db``), ``journal:PATH`` or a ``.log`` path
            (``JournalStorage(JournalFileBackend(PATH))``), or a database URL
            (``sqlite:///...``, ``postgresql+psycopg2://...``, ``mysql+pymysql://...``).
        out_dir: folder of the default SQLite file.
        heartbeat_interval, grace_period: seconds (RDB storages only; ``None``: no heartbeat).
        max_retry: re-queue a stale trial this often
            (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).
        create: allow creating a new file (``False`` for read-only commands: a missing file is an
            error instead of an empty new storage).

    Returns:
        The storage object.

    Raises:
        UsageError: malformed URL, missing driver, unreachable or unreadable database.
    """
    import optuna

    kind = storage_kind(spec)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        path = _journal_path(spec)
        if not create and not path.is_file():
            raise UsageError(f"{path}: no such journal file")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: cannot open journal storage ({e})") from None
    if spec is None:
        if out_dir is None:
            raise UsageError("--storage: no storage given")
        spec = default_storage_url(out_dir)
    url = spec
    kwargs: dict[str, Any] = {}
    if kind == "sqlite":
        db = url.split(":///", 1)[1] if ":///" in url else ""
        if db and db != ":memory:":
            p = Path(db)
            if not create and not p.is_file():
                raise UsageError(f"{p}: no such study database")
            if create:
                p.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif url.startswith(("postgresql", "mysql")):
        kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if heartbeat_interval:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        with _quiet_optuna():
            cb = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        kwargs.update(heartbeat_interval=int(heartbeat_interval),
                      grace_period=int(grace_period) if grace_period else None,
                      heartbeat_stale_trial_callback=cb)
    try:
        return _open_rdb(url, kwargs)
    except ModuleNotFoundError as e:
        extra = " (pip install 'acla-nas[postgres]')" if "psycopg" in str(e.name) else ""
        raise UsageError(f"--storage {redact(url)}: database driver {e.name!r} is not "
                         f"installed{extra}") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's many connection/URL errors
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise UsageError(f"--storage {redact(url)}: cannot open ({e.__class__.__name__}: "
                         f"{first[:200]})") from None


def _open_rdb(url: str, kwargs: dict, tries: int = 5):
    """``RDBStorage(url)``, retried when workers starting together race to create the tables."""
    import optuna
    from sqlalchemy import exc

    for attempt in range(tries):
        try:
            with _quiet_optuna():
                return optuna.storages.RDBStorage(url, **kwargs)
        except (exc.IntegrityError, exc.ProgrammingError):
            if attempt == tries - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _quiet_optuna():
    """Silence Optuna's info logs and its ExperimentalWarning/FutureWarning for the APIs we use on
    purpose."""
    import optuna

    prev = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(prev, optuna.logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        optuna.logging.set_verbosity(prev)


def heartbeat_enabled(storage) -> bool:
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    return isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)


# -------------------------------------------------------------------------------- workers
def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def worker_id() -> dict:
    """This process as ``{"host", "ns", "pid", "start"}``: host name (``ACLA_NAS_WORKER_HOST`` if
    set), PID namespace (containers on one host differ), PID and process start time (PID reuse)."""
    pid = os.getpid()
    return {"host": os.environ.get("ACLA_NAS_WORKER_HOST") or socket.gethostname(),
            "ns": _pid_namespace(), "pid": pid, "start": _proc_start(pid)}


def worker_alive(w: Mapping[str, Any]) -> bool | None:
    """Whether a recorded worker process still runs; ``None`` if it ran on another host or in
    another PID namespace (then only heartbeats can tell)."""
    me = worker_id()
    if not isinstance(w, Mapping) or w.get("host") != me["host"] or w.get("ns") != me["ns"]:
        return None
    pid = int(w.get("pid", -1))
    if pid == me["pid"]:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    start = _proc_start(pid)
    return not (w.get("start") and start and start != w.get("start"))


def requeue(study, trial, max_retry: int | None) -> bool:
    """Put a copy of a failed ``trial`` (same params and user attrs) back in the queue, with the
    retry bookkeeping of :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`.

    Returns:
        ``False`` when ``max_retry`` retries were already made.
    """
    import optuna

    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    system_attrs.pop("fixed_params", None)
    if max_retry is not None and max_retry < len(system_attrs["retry_history"]):
        return False
    with _quiet_optuna():
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params,
            distributions=trial.distributions, user_attrs=trial.user_attrs,
            system_attrs=system_attrs))
    return True


def fail_dead_local_trials(study, max_retry: int | None = 3) -> list[int]:
    """Fail RUNNING trials whose worker ran on this host and is gone; re-queue them.

    Works on every storage (journal files have no heartbeats). Trials of other hosts are left
    to the heartbeat mechanism.

    Returns:
        The numbers of the trials failed here.
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(t.user_attrs.get("worker")) is not False:
            continue
        try:
            ok = storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if ok:
            requeue(study, storage.get_trial(t._trial_id), max_retry)
            failed.append(t.number)
    return failed


# ---------------------------------------------------------------------------- the study
class TimeBudgetExceeded(RuntimeError):
    """A trial ran longer than ``hpo.time_budget_s``."""


def open_study(setup: StudySetup, storage, name: str, *, seed: int | None = None):
    """Create the study (and enqueue the reference trials) or join the existing one.

    Returns:
        ``(study, created)``.

    Raises:
        UsageError: the existing study has other directions, or was created with another config.
    """
    import optuna

    h = setup.hpo
    fp = setup.fingerprint()
    created = True
    with _quiet_optuna():
        try:
            study = optuna.create_study(storage=storage, study_name=name, directions=DIRECTIONS,
                                        load_if_exists=False)
        except optuna.exceptions.DuplicatedStudyError:
            created = False
            study = optuna.load_study(study_name=name, storage=storage)
    if not created:
        dirs = [d.name.lower() for d in study.directions]
        if dirs != DIRECTIONS:
            raise UsageError(f"study {name!r}: directions {dirs}, expected {DIRECTIONS}; "
                             "use another --study")
        old = study.user_attrs.get("acla_nas_config")
        if old is not None and old != fp:
            diff = _first_difference(old, fp)
            raise UsageError(f"study {name!r} was created with a different config (first "
                             f"difference: {diff}); use another --study or the same config")
    if h.ref_point is not None and study.user_attrs.get("ref_point") != [float(v) for v in h.ref_point]:
        # a reporting choice, not part of a trial: the latest config states it
        study.set_user_attr("ref_point", [float(v) for v in h.ref_point])
    if seed is None:
        seed = h.seed if created else (h.seed + 7919 * (1 + len(study.trials)) + os.getpid()) % 2**31
    study.sampler = make_sampler(h, seed)
    if created:
        from nas.search import Convention_desc

        task = setup.cfg.task_obj()
        with _quiet_optuna():
            study.set_metric_names(METRIC_NAMES)
        study.set_user_attr("acla_nas_config", fp)
        study.set_user_attr("conventions", {
            "psnr_db": f"validation PSNR (dB) of the derived network with inherited supernet "
                       f"weights, centre crops of the held-out images; {Convention_desc(task)}",
            "gflops": "exact GFLOPs of the derived network at LR input "
                      f"{_lr_size_text(setup.cfg)}, FLOPs = 2 x MACs, per image"})
        study.set_user_attr("axis_labels", axis_labels(setup.cfg))
        values = base_values(setup)
        for ref_name, arch in setup.references:
            with _quiet_optuna():
                study.enqueue_trial(values, user_attrs={"reference": ref_name})
    return study, created


def axis_labels(cfg: Config) -> dict[str, str]:
    """Short axis labels with units and conventions, e.g. ``PSNR (dB, Y, crop 2)``."""
    from nas.evaluate import Convention

    conv = Convention.for_task(cfg.task_obj())
    ch = "Y" if conv.y_channel else "RGB"
    return {"psnr_db": f"validation PSNR (dB, {ch}, crop {conv.crop_border})",
            "gflops": f"GFLOPs at {_lr_size_text(cfg)} input (FLOPs = 2 x MACs)"}


def _lr_size_text(cfg: Config) -> str:
    from nas.cost import default_lr_size

    h, w = cfg.search.lr_size or default_lr_size(cfg.task_obj())
    return f"{w}x{h} (W x H)"


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k, "<missing>") != b.get(k, "<missing>"):
                return _first_difference(a.get(k, "<missing>"), b.get(k, "<missing>"),
                                         f"{path}.{k}" if path else str(k))
    return f"{path or '(top)'}: {a!r} != {b!r}"


def make_sampler(h: HpoConfig, seed: int):
    """Seeded NSGA-II (``population_size``) or multi-objective TPE (``startup_trials``)."""
    import optuna

    with _quiet_optuna():
        if h.sampler == "tpe":
            return optuna.samplers.TPESampler(n_startup_trials=h.startup_trials, seed=seed,
                                              constant_liar=True)
        return optuna.samplers.NSGAIISampler(population_size=h.population_size, seed=seed)


def _system_attrs(trial) -> dict:
    if hasattr(trial, "system_attrs"):  # FrozenTrial
        return dict(trial.system_attrs)
    return dict(trial.storage.get_trial_system_attrs(trial._trial_id))


def root_trial(trial) -> int:
    """The number of the first trial of a retry series (the trial itself if it is no retry).

    Args:
        trial: an :class:`optuna.trial.Trial` or :class:`optuna.trial.FrozenTrial`.
    """
    hist = _system_attrs(trial).get("retry_history") or []
    return int(hist[0]) if hist else int(trial.number)


def suggest(trial, name: str, s: ParamSpec) -> Any:
    """Sample one outer hyperparameter."""
    if s.type == "categorical":
        return trial.suggest_categorical(name, list(s.choices))
    if s.type == "int":
        return trial.suggest_int(name, int(s.low), int(s.high), log=s.log,
                                 step=int(s.step) if s.step else 1)
    return trial.suggest_float(name, float(s.low), float(s.high), log=s.log, step=s.step)


@dataclass
class TrialOutcome:
    """What one trial attempt ended with (for progress lines and tests)."""

    number: int
    state: str
    values: tuple[float, float] | None = None
    reason: str = ""
    seconds: float = 0.0


class Objective:
    """The trial function: sample, build the trial config, search, derive, score, record.

    Args:
        setup: the validated study set-up.
        out_dir: results folder; trial ``n`` runs in ``<out_dir>/trials/<n>/`` (a retried trial in
            the folder of the trial it retries).
        study_name: recorded in each ArchSpec's provenance.
        device: torch device of the searches.
        progress: show the per-trial search bar.
    """

    def __init__(self, setup: StudySetup, out_dir: str | os.PathLike, study_name: str,
                 device: Any = "cpu", progress: bool = False,
                 on_outcome: Callable[[TrialOutcome], None] | None = None) -> None:
        self.setup = setup
        self.out = Path(out_dir)
        self.study_name = study_name
        self.device = device
        self.progress = progress
        self.on_outcome = on_outcome
        self.references = dict(setup.references)

    def run_dir(self, trial) -> Path:
        recorded = trial.user_attrs.get("run_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
        return self.out / "trials" / str(root_trial(trial))

    def __call__(self, trial) -> tuple[float, float]:
        import optuna

        from nas.search import DivergedError, SearchRun

        setup = self.setup
        t0 = time.perf_counter()
        ref = trial.user_attrs.get("reference")
        root = root_trial(trial)
        run_dir = self.run_dir(trial)
        seed = setup.cfg.seed + root if setup.hpo.seed_per_trial else setup.cfg.seed
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("worker", worker_id())
        if root != trial.number:
            trial.set_user_attr("retry_of", root)
        values = {name: suggest(trial, name, s) for name, s in setup.specs.items()}
        if ref is None and not setup.hpo.seed_per_trial:
            twin = finished_twin(trial, values)
            if twin is not None:  # the search is deterministic: same params, same result
                for k in ("run_dir", "arch_path", "flops", "params", "steps"):
                    if k in twin.user_attrs:
                        trial.set_user_attr(k, twin.user_attrs[k])
                trial.set_user_attr("duplicate_of", twin.number)
                with _quiet_optuna():
                    trial.set_constraint("reference", 0.0)
                out = (float(twin.values[0]), float(twin.values[1]))
                self._report(TrialOutcome(trial.number, "COMPLETE", out,
                                          f"same hyperparameters as trial {twin.number}"))
                return out
        cfg = trial_config(setup.cfg, values, setup.targets, seed, where=f"trial {trial.number}")
        if ref is not None:
            if ref not in self.references:
                raise UsageError(f"trial {trial.number}: unknown reference {ref!r} (config changed?)")
            cfg.search.warmup_steps = cfg.search.steps  # alpha frozen: the pinned path only
        budget = setup.hpo.time_budget_s
        first_step: list[int] = []

        def on_step(row: dict) -> None:
            if not first_step:
                first_step.append(int(row["step"]) - 1)
            if budget is not None and time.perf_counter() - t0 > budget:
                raise TimeBudgetExceeded(f"time budget of {budget:g} s exceeded at step "
                                         f"{row['step']}")

        provenance = {"study": self.study_name, "trial": trial.number, "hpo": values}
        if ref is not None:
            provenance["reference"] = ref
        if root != trial.number:
            provenance["retry_of"] = root
        try:
            search = SearchRun(cfg, run_dir, device=self.device, progress=self.progress,
                               provenance=provenance)
            if ref is not None:
                pin_architecture(search.model, self.references[ref])
            res = search.run(on_step=on_step)
        except DivergedError as e:
            reason = f"diverged: {e}"
            trial.set_user_attr("fail_reason", reason)
            self._report(TrialOutcome(trial.number, "FAIL", None, reason, time.perf_counter() - t0))
            raise
        except TimeBudgetExceeded as e:
            trial.set_user_attr("fail_reason", str(e))
            self._report(TrialOutcome(trial.number, "PRUNED", None, str(e),
                                      time.perf_counter() - t0))
            raise optuna.TrialPruned(str(e)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            with contextlib.suppress(Exception):
                frozen = trial.storage.get_trial(trial._trial_id)
                requeue(trial.study, frozen, None)
            raise
        if first_step and first_step[0] > 0:
            trial.set_user_attr("resumed_from_step", first_step[0])
        trial.set_user_attr("arch_path", str(res.arch_path))
        trial.set_user_attr("flops", int(round(res.gflops * 1e9)))
        trial.set_user_attr("params", int(res.params))
        trial.set_user_attr("steps", int(res.steps))
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        with _quiet_optuna():
            trial.set_constraint("reference", 1.0 if ref is not None else 0.0)
        values_out = (float(res.psnr_db), float(res.gflops))
        self._report(TrialOutcome(trial.number, "COMPLETE", values_out, "",
                                  time.perf_counter() - t0))
        return values_out

    def _report(self, outcome: TrialOutcome) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)


def finished_twin(trial, values: Mapping[str, Any]):
    """A COMPLETE searched trial with exactly these hyperparameters, or ``None``.

    Trials share the config's seed (unless ``hpo.seed_per_trial``) and the search is
    deterministic on a given device, so such a trial's result is reused instead of recomputed
    (NSGA-II readily proposes a copy of a parent in small studies).
    """
    from optuna.trial import TrialState

    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and "reference" not in t.user_attrs and t.params == values:
            return t
    return None


def count_trials(study) -> dict[str, int]:
    """Counts of searched (non-reference) and reference trials by what they mean for the loop.

    ``done``: searched trials that finished for good (COMPLETE, PRUNED, or FAIL with a
    ``fail_reason``; a killed/interrupted trial is re-queued and not counted); ``running``,
    ``waiting``: searched trials in flight or queued; ``ref_done``/``ref_pending`` likewise for
    reference trials.
    """
    from optuna.trial import TrialState

    c = dict(done=0, running=0, waiting=0, ref_done=0, ref_pending=0, complete=0)
    for t in study.get_trials(deepcopy=False):
        ref = "reference" in t.user_attrs
        finished = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)
        if t.state == TrialState.COMPLETE and not ref:
            c["complete"] += 1
        if ref:
            if finished:
                c["ref_done"] += 1
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                c["ref_pending"] += 1
        elif finished:
            c["done"] += 1
        elif t.state == TrialState.RUNNING:
            c["running"] += 1
        elif t.state == TrialState.WAITING:
            c["waiting"] += 1
    return c


def run_study(setup: StudySetup, study, out_dir: str | os.PathLike, *, device: Any = "cpu",
              progress: bool = False, max_trials_here: int | None = None) -> dict[str, int]:
    """Run trials in this process until the study has ``hpo.trials`` searched trials finished or
    in flight, and the queue (reference and re-queued trials) is empty.

    Args:
        setup: the validated set-up.
        study: from :func:`open_study`.
        out_dir: results folder (run directories under ``trials/``).
        device: torch device.
        progress: tqdm bar over trials with the per-trial search bar below it.
        max_trials_here: stop after this many trials in this process (tests).

    Returns:
        The final :func:`count_trials`.

    Raises:
        UsageError: a trial config that does not fit (config changed between workers).
    """
    import optuna
    from tqdm import tqdm

    from nas.search import DivergedError

    h = setup.hpo
    n_refs = len(setup.references)

    def say(msg: str) -> None:
        if progress:
            tqdm.write(msg, file=sys.stderr)
        else:
            log.info(msg)

    def on_outcome(o: TrialOutcome) -> None:
        if o.state == "COMPLETE":
            psnr, gfl = o.values
            say(f"trial {o.number}: {psnr:.3f} dB, {gfl:.4f} GFLOPs "
                + (f"({o.reason})" if o.reason else f"({o.seconds:.0f} s)"))
        else:
            say(f"trial {o.number}: {o.state.lower()} - {o.reason} ({o.seconds:.0f} s)")

    objective = Objective(setup, out_dir, study.study_name, device=device, progress=progress,
                          on_outcome=on_outcome)
    prev_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    c = count_trials(study)
    bar = tqdm(total=h.trials + n_refs, initial=min(c["done"] + c["ref_done"], h.trials + n_refs),
               desc="trials", unit="trial", disable=not progress, dynamic_ncols=True, position=0)
    ran = 0
    try:
        while True:
            with _quiet_optuna():
                optuna.storages.fail_stale_trials(study)
            for n in fail_dead_local_trials(study, h.max_retry):
                say(f"trial {n}: its worker is gone; re-queued to resume from its checkpoint")
            c = count_trials(study)
            bar.n = min(c["done"] + c["ref_done"], bar.total)
            bar.set_postfix(complete=c["complete"], running=c["running"])
            bar.refresh()
            waiting_exists = any(t.state == optuna.trial.TrialState.WAITING
                                 for t in study.get_trials(deepcopy=False))
            if not waiting_exists and c["done"] + c["running"] + c["waiting"] >= h.trials:
                break
            if max_trials_here is not None and ran >= max_trials_here:
                break
            with _quiet_optuna():
                study.optimize(objective, n_trials=1, catch=(DivergedError,),
                               gc_after_trial=True)
            ran += 1
    finally:
        optuna.logging.set_verbosity(prev_verbosity)
        c = count_trials(study)
        bar.n = min(c["done"] + c["ref_done"], bar.total)
        bar.close()
    return c


def trial_seconds(trial) -> float:
    """Wall time of a finished trial in seconds (NaN if unknown)."""
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return math.nan
