"""The one validation of a config (:func:`check_config`), block by block.

Each check raises :class:`~nas.errors.UsageError` with one line naming the dotted field;
:func:`nas.config.load_config` runs :func:`check_config` on every config it loads, before anything
is written or trained.
"""

from __future__ import annotations

from nas.config_schema import (
    PENALTY_KINDS,
    TAU_KINDS,
    Config,
    RetrainConfig,
    ScoreConfig,
    SearchConfig,
)
from nas.errors import UsageError, did_you_mean
from nas.restoration.task import Task


def _positive(where: str, value: float, strict: bool = True) -> None:
    if not (value > 0 if strict else value >= 0):
        raise UsageError(f"{where}: must be {'>' if strict else '>='} 0, got {value}")


def check_search(s: SearchConfig, where: str = "search") -> None:
    """Values of the ``search`` block.

    Raises:
        UsageError: non-positive steps or rates, bad tau schedule, unknown penalty kind, a
            penalty kind without its target, an unknown derive mode, bad ``lr_size``.
    """
    for k in ("supernet_steps", "alpha_steps", "checkpoint_every", "log_every"):
        if getattr(s, k) < 1:
            raise UsageError(f"{where}.{k}: must be >= 1, got {getattr(s, k)}")
    if not 0 <= s.largest_path_steps <= s.supernet_steps:
        raise UsageError(f"{where}.largest_path_steps: must be in 0..{where}.supernet_steps "
                         f"({s.supernet_steps}), got {s.largest_path_steps}")
    if s.alpha_batch_size is not None and s.alpha_batch_size < 1:
        raise UsageError(f"{where}.alpha_batch_size: must be >= 1, got {s.alpha_batch_size}")
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
    if p.target_gflops is not None and not p.target_gflops > 0:
        raise UsageError(f"{where}.penalty.target_gflops: must be > 0, got {p.target_gflops}")
    _positive(f"{where}.penalty.lambda", p.lam, strict=False)
    if isinstance(s.rerank, bool) or not isinstance(s.rerank, int) or s.rerank < 0:
        raise UsageError(f"{where}.rerank: an int >= 0 (0: off), got {s.rerank!r}")
    if s.derive not in (None, "budget", "argmax"):
        raise UsageError(f"{where}.derive: 'budget' or 'argmax', got {s.derive!r}"
                         f"{did_you_mean(s.derive, ('budget', 'argmax'))}")
    if s.derive == "budget" and not p.target_gflops:
        raise UsageError(f"{where}.derive: 'budget' needs {where}.penalty.target_gflops")
    if s.lr_size is not None and (len(s.lr_size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s.lr_size)):
        raise UsageError(f"{where}.lr_size: expected [H, W] (positive integers), got {s.lr_size}")


def check_score(s: ScoreConfig, task: Task, where: str = "score") -> None:
    """Values of the ``score`` block.

    Raises:
        UsageError: non-positive steps, rates, sizes or seed counts, or a patch size that is not
            a multiple of the task's HR modulo.
    """
    for k in ("steps", "batch_size", "seeds", "max_eval_side"):
        if getattr(s, k) < 1:
            raise UsageError(f"{where}.{k}: must be >= 1, got {getattr(s, k)}")
    if s.noise_seeds < 0:
        raise UsageError(f"{where}.noise_seeds: must be >= 0, got {s.noise_seeds}")
    _positive(f"{where}.lr", s.lr)
    if s.patch_size < 8 or s.patch_size % task.hr_modulo:
        raise UsageError(f"{where}.patch_size: must be >= 8 and a multiple of {task.hr_modulo} "
                         f"({task.describe()}), got {s.patch_size}")


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
    _positive(f"{where}.grad_clip", r.grad_clip, strict=False)
    if not 0 <= r.ema < 1:
        raise UsageError(f"{where}.ema: a decay in [0, 1) (0: no EMA), got {r.ema}")
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
    from search_spaces.space import SearchSpace, check_op_config

    try:
        if not isinstance(cfg.name, str) or not cfg.name or "/" in cfg.name:
            raise UsageError(f"name: a non-empty name without '/', got {cfg.name!r}")
        check_search(cfg.search)
        check_score(cfg.score, cfg.task)
        check_retrain(cfg.retrain)
        cfg.data.check(cfg.task, min_images=3 if cfg.data.score_fraction > 0 else 2)
        for name, size in cfg.data.image_sizes().items():
            if min(size) < cfg.score.patch_size:
                raise UsageError(f"score.patch_size: {cfg.score.patch_size} is larger than image "
                                 f"{name!r} ({size[1]}x{size[0]})")
        tail = "upsample" if cfg.task.name == "sr" else "conv"
        backbone = build_backbone(cfg.space.backbone, cfg.task.scale, tail)
        SearchSpace(cfg.space, backbone.config.num_block)
        check_op_config(cfg.space, backbone.config.num_feat)
    except UsageError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(where) else f"{where}: {msg}") from None


