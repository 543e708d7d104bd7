"""The config's schema: one typed dataclass per block, and their conversion from plain mappings
with checked keys and types (:func:`from_dict`). Loading, ``--set`` overrides and saving live in
:mod:`nas.config`; the value checks in :mod:`nas.config_checks`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from nas.errors import UsageError, did_you_mean
from nas.restoration.data import DataConfig
from nas.restoration.task import Task
from search_spaces.space import SpaceConfig

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
    """The supernet search (``search`` block); see :mod:`nas.engine.supernet_search`.

    Two phases. **Supernet training** (shared by every trial of a study that agrees on these
    fields): ``supernet_steps`` weight steps on the train split, each on a path drawn
    independently of alpha - the largest architecture for the first ``largest_path_steps``, then
    uniformly (SPOS) - so every candidate is trained before alpha learns and the weights do not
    favour what alpha already prefers. **Architecture search**: ``alpha_steps`` steps of the
    logits alpha on the val split with the weights frozen, loss ``L1 + penalty(E[F])``, every
    operator's logit receiving its first-order effect on every step.

    Attributes:
        supernet_steps: weight steps of the supernet training.
        largest_path_steps: the first weight steps train the largest architecture only.
        sandwich: every weight step also trains the largest architecture (sandwich rule).
        lr: Adam learning rate of the weights (cosine-annealed to 0.1 x).
        alpha_steps: alpha steps of the architecture search.
        alpha_batch_size: patches per alpha step (null: ``data.batch_size``).
        alpha_lr: Adam learning rate of alpha.
        alpha_betas: Adam betas of alpha.
        alpha_weight_decay: L2 on alpha (0: the gates move by accuracy and FLOPs only).
        tau: temperature schedule over the alpha steps.
        penalty: FLOPs term.
        derive: ``budget`` (the most probable architecture within ``penalty.target_gflops``;
            the default when a target is set) or ``argmax`` (the most probable architecture).
        rerank: 0 exports the derived architecture. ``k >= 2`` takes the ``k`` most probable
            architectures (within the budget in budget mode), scores each with the supernet's
            inherited weights (PSNR, dB, on 8 fixed batches of the val split) and exports the
            best: a few forward passes that correct the gates when they prefer a path the shared
            weights themselves rank lower.
        lr_size: ``[H, W]`` input size of the FLOPs table (null: a 1280x720 output).
        checkpoint_every, log_every: in steps.
        amp: bf16 autocast on CUDA.
        channels_last: channels-last memory format on CUDA.
        grad_clip: max gradient norm of the weights (0: off).
        tensorboard: log losses, learning rate, E[GFLOPs], tau and the gate probabilities to
            ``<supernet_dir>/tb`` and ``<out>/tb`` (needs the ``tensorboard`` extra).
    """

    supernet_steps: int = 400
    largest_path_steps: int = 50
    sandwich: bool = False
    lr: float = 1e-3
    alpha_steps: int = 100
    alpha_batch_size: typing.Optional[int] = None
    alpha_lr: float = 0.05
    alpha_betas: list = field(default_factory=lambda: [0.5, 0.999])
    alpha_weight_decay: float = 0.0
    tau: TauConfig = field(default_factory=TauConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    derive: typing.Optional[str] = None
    rerank: int = 0
    lr_size: typing.Optional[list] = None
    checkpoint_every: int = 50
    log_every: int = 10
    amp: bool = True
    channels_last: bool = True
    grad_clip: float = 1.0
    tensorboard: bool = False


@dataclass
class ScoreConfig:
    """How every architecture - searched or reference - is scored (``score`` block): trained
    stand-alone from scratch for ``steps`` on the train split and scored on the held-out score
    split (full images, the task's convention), with common random numbers: seed ``s`` fixes the
    initialisation of the shared layers, the patch stream and the evaluation, whatever the
    architecture. The reported PSNR is the mean over ``seeds`` seeds; their spread is the noise.

    Attributes:
        steps: training steps of one scoring run.
        lr: Adam learning rate (cosine-annealed to 0.1 x).
        batch_size: patches per step.
        patch_size: HR patch side.
        seeds: scoring runs per architecture (seeds 0 .. seeds-1).
        noise_seeds: seeds for the study's noise floor (the front and the references are scored
            with this many seeds once the trials are done; 0: ``seeds``).
        max_eval_side: score images are centre-cropped to at most this HR side (pixels).
    """

    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 8
    patch_size: int = 48
    seeds: int = 1
    noise_seeds: int = 3
    max_eval_side: int = 256


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
        amp: bf16 autocast on CUDA (ACLA's sampling stays in float32).
        channels_last: channels-last memory format on CUDA.
        ema: decay of an exponential moving average of the weights (BasicSR's ``params_ema``),
            saved and evaluated as weights of their own; 0: none.
        grad_clip: max gradient norm (0: no clipping, as in EDSR).
        tensorboard: log losses, PSNR and the learning rate to ``<out>/tb`` (needs the
            ``tensorboard`` extra).
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
    channels_last: bool = True
    ema: float = 0.999
    grad_clip: float = 0.0
    tensorboard: bool = False


@dataclass
class Config:
    """A whole run config: ``name, seed, task, data, space, search, score, retrain, hpo``.

    ``hpo`` (the Optuna study) is parsed by :mod:`nas.study.params`.
    """

    name: str = "search"
    seed: int = 0
    task: Task = field(default_factory=Task)
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    hpo: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON/YAML-ready dict; the task as its compact :meth:`Task.to_dict`."""
        d = dataclasses.asdict(self)
        d["task"] = self.task.to_dict()
        return d


#: keys of earlier versions and what replaced them
RENAMED = {"search.steps": "search.supernet_steps and search.alpha_steps",
           "search.warmup_steps": "search.largest_path_steps (alpha now learns on a trained "
                                  "supernet)",
           "search.val_images": "score.* (every architecture is scored stand-alone)"}



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
            if name in RENAMED:
                raise UsageError(f"{name}: replaced by {RENAMED[name]} in acla-nas 0.2 "
                                 "(docs/design.md, \"Changes in 0.2\")")
            raise UsageError(f"{name}: unknown key{did_you_mean(key, fields)}")
        kwargs[key] = _convert(value, hints[key], name)
    return cls(**kwargs)
