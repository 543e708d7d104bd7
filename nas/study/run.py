"""The Optuna outer loop: set up, create or join, and run a multi-objective study.

One study = many trials; each trial samples the outer hyperparameters declared in the config's
``hpo`` block (:mod:`nas.study.params`), runs one supernet search and returns ``(psnr_db,
gflops)`` (:mod:`nas.study.objective`). Directions :data:`DIRECTIONS`, metric names
:data:`METRIC_NAMES`; seeded NSGA-II (default) or multi-objective TPE.

Storages (:mod:`nas.study.storage`): default ``sqlite:///<out>/study.db``; a journal file for
several processes on one machine; any SQLAlchemy URL for workers on several machines. Several
``acla-nas search`` processes on one study cooperate: each runs trials until ``hpo.trials``
searched trials are finished or running.

Reproducibility: before each trial the sampler is re-created with the seed ``hpo.seed`` plus the
number of trials that are neither retries nor duplicates so far, so a study that was
interrupted and resumed samples what the uninterrupted study would have (with one worker; with
several workers the order in which trials finish decides what the sampler sees).

Crashes and resume: see :mod:`nas.study.workers`. A retried trial reuses the run directory of the
trial it retries and resumes from its ``supernet.pt``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nas.config import Config
from nas.errors import DivergedError, UsageError
from nas.study.objective import Objective, TrialOutcome
from nas.study.params import HpoConfig, ParamSpec, base_values, check_params, parse_hpo
from nas.study.references import reference_arch
from nas.study.storage import StorageSpec, init_lock, open_storage, quiet_optuna
from nas.study.workers import RequeueStaleTrial, reap_dead_trials

log = logging.getLogger("acla_nas.study")

#: config fields that decide how architectures are scored: one value per study
PROTOCOL_FIELDS = ("score.", "task.", "data.source", "data.images", "data.val_fraction",
                   "data.score_fraction", "data.groups", "data.split_seed", "space.backbone",
                   "space.op_config")

#: objective directions and names of every acla-nas study: PSNR (dB) up, GFLOPs down
DIRECTIONS = ("maximize", "minimize")
METRIC_NAMES = ("psnr_db", "gflops")


@dataclass
class StudySetup:
    """A validated study set-up: base config, hpo block and the resolved parameter targets.

    Attributes:
        cfg: the study's config without its ``hpo`` block.
        hpo: the parsed ``hpo`` block.
        specs: ``{param name: ParamSpec}``.
        targets: ``{param name: canonical dotted config field}`` (aliases resolved).
        references: ``[(name, architecture)]`` of the reference trials.
        source: the config file name, for messages.
    """

    cfg: Config
    hpo: HpoConfig
    specs: dict[str, ParamSpec]
    targets: dict[str, str]
    references: list[tuple[str, dict]]
    source: str = "config"

    def fingerprint(self) -> dict:
        """What must agree between workers of one study (everything that shapes a trial), as
        JSON-ready data."""
        d = self.cfg.to_dict()
        d["hpo"] = {"params": {k: dataclasses.asdict(v) for k, v in self.specs.items()},
                    "reference_trials": [[n, a] for n, a in self.references],
                    "seed_per_trial": self.hpo.seed_per_trial}
        return json.loads(json.dumps(d))

    def fingerprint_sha(self) -> str:
        """Short SHA-256 of :meth:`fingerprint` (the study's ``config_sha`` user attr)."""
        text = json.dumps(self.fingerprint(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_study(cfg: Config, source: str = "config", trials: int | None = None,
                  study: str | None = None, storage: str | None = None) -> StudySetup:
    """Validate a study config completely, before any storage or file is touched.

    Args:
        cfg: the loaded config (its ``hpo`` block declares the study).
        source: the config file name, for messages.
        trials, study, storage: command-line values that replace ``hpo.trials/study/storage``.

    Raises:
        UsageError: any problem (unknown key with did-you-mean, wrong type, empty search space,
            a parameter value that does not fit its field or makes the config invalid, unknown
            reference architecture).
    """
    from nas.engine.network import build_backbone
    from search_spaces.space import SearchSpace

    raw = dict(cfg.hpo)
    for key, value in (("trials", trials), ("study", study), ("storage", storage)):
        if value is not None:
            raw[key] = value
    h, specs = parse_hpo(raw, source)
    base = copy.deepcopy(cfg)
    base.hpo = {}
    fill_target_range(base, specs, source)
    targets = check_params(base, specs, source)
    for name, field_ in targets.items():
        if field_.startswith(PROTOCOL_FIELDS):
            raise UsageError(f"{source}: hpo.params.{name}: {field_} is part of the scoring "
                             "protocol, which must be one for the whole study (scores of "
                             "different protocols cannot be compared)")
    space = SearchSpace(base.space, build_backbone(base.space, base.task).config.num_block)
    refs = []
    for i, ref in enumerate(h.reference_trials):
        try:
            refs.append(reference_arch(ref, space, f"hpo.reference_trials[{i}]"))
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
    names = [n for n, _ in refs]
    if len(set(names)) != len(names):
        raise UsageError(f"{source}: hpo.reference_trials: duplicated name")
    return StudySetup(cfg=base, hpo=h, specs=specs, targets=targets, references=refs,
                      source=source)


def fill_target_range(cfg: Config, specs: dict[str, ParamSpec], source: str) -> None:
    """A float parameter on ``search.penalty.target_gflops`` without ``low``/``high`` spans the
    space's FLOPs range: from the cheapest to the most expensive architecture (GFLOPs at the
    reference input size), so targets - and with a budget penalty the trials - spread over the
    whole FLOPs axis."""
    from nas.engine.derive import flops_range
    from nas.engine.flops import CostModel
    from nas.study.objective import study_space
    from nas.study.params import config_field

    for name, s in specs.items():
        try:
            field_, _ = config_field(name, f"hpo.params.{name}")
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
        if field_ == "search.penalty.target_gflops" and s.type == "float" and (
                s.low is None or s.high is None):
            space = study_space(cfg)
            lr_size = tuple(cfg.search.lr_size) if cfg.search.lr_size else None
            lo, hi = flops_range(space, CostModel(space, cfg.task, lr_size))
            s.low = s.low if s.low is not None else round(lo / 1e9, 6)
            s.high = s.high if s.high is not None else round(hi / 1e9, 6)


def make_sampler(h: HpoConfig, seed: int):
    """Seeded NSGA-II (``population_size``) or multi-objective TPE (``startup_trials``)."""
    import optuna

    with quiet_optuna():
        if h.sampler == "tpe":
            return optuna.samplers.TPESampler(n_startup_trials=h.startup_trials, seed=seed,
                                              constant_liar=True)
        return optuna.samplers.NSGAIISampler(population_size=h.population_size, seed=seed)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k, "<missing>") != b.get(k, "<missing>"):
                return _first_difference(a.get(k, "<missing>"), b.get(k, "<missing>"),
                                         f"{path}.{k}" if path else str(k))
    return f"{path or '(top)'}: {a!r} != {b!r}"


def open_study(setup: StudySetup, spec: StorageSpec, name: str, out_dir: str | os.PathLike):
    """Open the storage, then create the study (with its reference trials enqueued) or join it.

    Workers that start together on one machine serialise this step (:func:`init_lock`), so
    exactly one creates the study and enqueues the references.

    Returns:
        ``(study, storage, created)``.

    Raises:
        UsageError: the storage cannot be opened, or the existing study has other directions or
            was created with another config (the first difference is named when this folder
            holds the creator's ``study_config.json``).
    """
    import optuna

    h = setup.hpo
    sha = setup.fingerprint_sha()
    fp_file = Path(out_dir) / "study_config.json"
    with init_lock(spec):
        storage = open_storage(spec, heartbeat_interval=h.heartbeat_interval if spec.kind == "rdb"
                               else None, grace_period=h.grace_period,
                               stale_trial_callback=RequeueStaleTrial(h.max_retry))
        study, created = _create_or_load(storage, name)
        if not created and study.user_attrs.get("config_sha") not in (None, sha) \
                and not _holds_results(study):
            # created with another config, but nothing was computed in it (e.g. the first trial
            # stopped on a data error): the corrected config replaces it
            log.warning("study %r was created with another config and holds no finished or "
                        "running trial; replacing it", name)
            with quiet_optuna():
                optuna.delete_study(study_name=name, storage=storage)
            trials_dir = Path(out_dir) / "trials"
            if trials_dir.is_dir():  # partial runs of the replaced study
                import time

                trials_dir.rename(trials_dir.with_name(f"trials.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
            study, created = _create_or_load(storage, name)
        if created:
            _init_study(setup, study, storage)
            from nas.io import atomic_write_json

            atomic_write_json(fp_file, setup.fingerprint())
    if not created:
        dirs = [d.name.lower() for d in study.directions]
        if tuple(dirs) != DIRECTIONS:
            raise UsageError(f"study {name!r}: directions {dirs}, expected {list(DIRECTIONS)}; "
                             "use another --study")
        old = study.user_attrs.get("config_sha")
        if old is not None and old != sha:
            diff = ""
            if fp_file.is_file():
                try:
                    diff = "; first difference: " + _first_difference(
                        json.loads(fp_file.read_text()), setup.fingerprint())
                except (OSError, json.JSONDecodeError):
                    diff = ""
            raise UsageError(f"study {name!r} was created with a different config (config_sha "
                             f"{old}, this config {sha}{diff}); use another --study or the same "
                             "config")
    if h.ref_point is not None and study.user_attrs.get("ref_point") != [float(v) for v in h.ref_point]:
        # a reporting choice, not part of a trial: the latest config states it
        study.set_user_attr("ref_point", [float(v) for v in h.ref_point])
    return study, storage, created


def _create_or_load(storage, name: str):
    import optuna

    with quiet_optuna():
        try:
            return optuna.create_study(storage=storage, study_name=name,
                                       directions=list(DIRECTIONS), load_if_exists=False), True
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(study_name=name, storage=storage), False


def _holds_results(study) -> bool:
    """Whether a study holds anything worth keeping: a COMPLETE or RUNNING trial."""
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))


def _init_study(setup: StudySetup, study, storage) -> None:
    """Metric names, short user attrs (readable in ``optuna studies``) and reference trials."""
    from nas import __version__
    from nas.restoration.evaluate import Convention

    with quiet_optuna():
        study.set_metric_names(list(METRIC_NAMES))
    conv = Convention.for_task(setup.cfg.task)
    study.set_user_attr("acla_nas", __version__)
    study.set_user_attr("config_sha", setup.fingerprint_sha())
    study.set_user_attr("axis_labels", axis_labels(setup.cfg))
    study.set_user_attr("conventions", {
        "psnr_db": f"mean over scoring seeds of the PSNR after {setup.cfg.score.steps} steps of "
                   f"stand-alone training, held-out images, {'Y' if conv.y_channel else 'RGB'}, "
                   f"crop {conv.crop_border}",
        "gflops": f"GFLOPs at {_lr_size_text(setup.cfg)} input, FLOPs = 2 x MACs"})
    from nas.engine.scoring import arch_key, protocol_key
    from nas.study.noise import PLAIN_ATTR, PROTOCOL_ATTR
    from nas.study.objective import study_space

    sid = storage.get_study_id_from_name(study.study_name)
    storage.set_study_system_attr(sid, PROTOCOL_ATTR, protocol_key(setup.cfg))
    storage.set_study_system_attr(
        sid, PLAIN_ATTR, arch_key({p.op_label(): "skip" for p in study_space(setup.cfg)}))
    values = base_values(setup.cfg, setup.specs, setup.targets)
    for ref_name, _ in setup.references:
        with quiet_optuna():
            study.enqueue_trial(values, user_attrs={"reference": ref_name})


def axis_labels(cfg: Config) -> dict[str, str]:
    """Short axis labels with units and conventions, e.g. ``PSNR (dB, Y, crop 2)``."""
    from nas.restoration.evaluate import Convention

    conv = Convention.for_task(cfg.task)
    ch = "Y" if conv.y_channel else "RGB"
    return {"psnr_db": f"score PSNR (dB, {ch}, crop {conv.crop_border}; held-out images)",
            "gflops": f"GFLOPs at {_lr_size_text(cfg)} input (FLOPs = 2 x MACs)"}


def _lr_size_text(cfg: Config) -> str:
    from nas.engine.flops import default_lr_size

    h, w = cfg.search.lr_size or default_lr_size(cfg.task)
    return f"{w}x{h} (W x H)"


def count_trials(study) -> dict[str, int]:
    """Counts of searched (non-reference) and reference trials by what they mean for the loop.

    ``done``: searched trials that finished for good (COMPLETE, PRUNED, or FAIL with a
    ``fail_reason`` that is not a kill, an interruption or an input error; a killed or
    interrupted trial is re-queued, one stopped by an input error is run again, neither counts),
    duplicates (``duplicate_of``) excluded; ``running``, ``waiting``: searched trials in flight or
    queued; ``ref_done``/``ref_pending`` likewise for reference trials; ``complete``: searched
    COMPLETE trials (duplicates included); ``duplicates``; ``fresh``: trials that are neither
    retries nor duplicates (the sampler's seed offset).
    """
    from optuna.trial import TrialState

    c = dict(done=0, running=0, waiting=0, ref_done=0, ref_pending=0, complete=0, duplicates=0,
             fresh=0)
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        ref = "reference" in ua
        dup = "duplicate_of" in ua
        killed = t.state == TrialState.FAIL and (
            "fail_reason" not in ua
            or str(ua["fail_reason"]).startswith(("killed", "interrupted", "input error")))
        finished = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and not killed)
        if "retry_of" not in ua and not t.system_attrs.get("retry_history") and not dup:
            c["fresh"] += 1
        if t.state == TrialState.COMPLETE and not ref:
            c["complete"] += 1
        if dup:
            c["duplicates"] += 1
            continue
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


def run_study(setup: StudySetup, study, storage, out_dir: str | os.PathLike, *,
              device: Any = "cpu", progress: bool = False,
              max_trials_here: int | None = None) -> dict[str, int]:
    """Run trials in this process until the study has ``hpo.trials`` searched trials finished or
    in flight, and the queue (reference and re-queued trials) is empty.

    Args:
        setup: the validated set-up.
        study, storage: from :func:`open_study`.
        out_dir: results folder (run directories under ``trials/``).
        device: torch device.
        progress: tqdm bar over trials with the per-trial search bar below it.
        max_trials_here: stop after this many trials in this process (tests).

    Under ``torchrun`` this runs on rank 0; the other ranks run :func:`nas.study.group.follow`
    and rank 0 releases them when this returns (or fails).

    Returns:
        The final :func:`count_trials`.

    Raises:
        UsageError: a trial config that does not fit (config changed between workers).
    """
    import optuna
    from tqdm import tqdm

    h = setup.hpo
    n_refs = len(setup.references)
    max_duplicates = max(10, 2 * h.trials)

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

    from nas.study.group import Group

    group = Group(device, progress)
    objective = Objective(setup, study, storage, out_dir, device=device, progress=progress,
                          on_outcome=on_outcome, group=group)
    prev_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    c = count_trials(study)
    bar = tqdm(total=h.trials + n_refs, initial=min(c["done"] + c["ref_done"], h.trials + n_refs),
               desc="trials", unit="trial", disable=not progress, dynamic_ncols=True, position=0)
    ran = 0
    try:
        while True:
            for msg in reap_dead_trials(study, storage, h.max_retry):
                say(msg)
            c = count_trials(study)
            bar.n = min(c["done"] + c["ref_done"], bar.total)
            bar.set_postfix(complete=c["complete"], running=c["running"])
            bar.refresh()
            waiting_exists = any(t.state == optuna.trial.TrialState.WAITING
                                 for t in study.get_trials(deepcopy=False))
            if not waiting_exists and c["done"] + c["running"] + c["waiting"] >= h.trials:
                break
            if c["duplicates"] >= max_duplicates:
                say(f"stopping: the sampler proposed {c['duplicates']} duplicates of finished "
                    "trials (the space of outer hyperparameters is exhausted)")
                break
            if max_trials_here is not None and ran >= max_trials_here:
                break
            study.sampler = make_sampler(h, (h.seed + 7919 * c["fresh"]) % 2**31)
            with quiet_optuna():
                study.optimize(objective, n_trials=1, catch=(DivergedError,), gc_after_trial=True)
            ran += 1
        c = count_trials(study)
        if c["done"] >= h.trials and not c["running"] and not c["waiting"] and not c["ref_pending"]:
            from nas.study.noise import measure_noise

            runs = measure_noise(setup, study, storage, device, log=say, group=group)
            if runs:
                say(f"noise floor: {runs} more scoring runs of the front, references and plain "
                    "backbone")
    finally:
        with contextlib.suppress(Exception):  # a group whose other ranks died cannot be told
            group.stop()
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
