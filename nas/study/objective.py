"""The trial function of a study: sample the outer hyperparameters, search, derive, score, record.

A searched trial runs :class:`nas.engine.supernet_search.SupernetSearch` in
``<out>/trials/<n>/`` - with the supernet shared by every trial that agrees on the weight
settings (``<out>/supernets/<key>/``) - derives an architecture and scores it with the study's
one protocol (:mod:`nas.engine.scoring`); a reference trial scores its known architecture the
same way. Each trial returns ``(psnr_db, gflops)``:

* ``psnr_db`` - the mean over ``score.seeds`` scoring seeds of the architecture's PSNR (dB) on the
  held-out score images after stand-alone training, in the task's convention (SR: Y channel,
  ``scale`` pixels cropped; denoising/demosaicing: RGB; JPEG: Y). Scores are cached in the
  study's system attributes by (protocol, architecture, seed), so two trials that derive the same
  architecture report the same PSNR;
* ``gflops`` - exact GFLOPs (1e9 FLOPs, FLOPs = 2 x MACs, per image) of the architecture at the
  reference input size (``search.lr_size``, default a 1280x720 output).

Failures: a trial whose loss diverges (NaN/inf) ends FAIL, one that exceeds ``time_budget_s``
ends PRUNED; both carry the user attr ``fail_reason`` and the study goes on. Ctrl-C (or SIGTERM)
records the reason and re-queues the interrupted trial, which resumes from its checkpoint.

Duplicates: a searched trial whose hyperparameters equal those of a COMPLETE trial reuses that
trial's result (user attr ``duplicate_of``) instead of repeating a deterministic search; it does
not count towards ``hpo.trials``.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from nas.engine.export import SearchResult, export_result, record_scores
from nas.engine.scoring import ScoreCache, arch_key
from nas.errors import DivergedError, UsageError
from nas.study.group import Group, TimeBudgetExceeded
from nas.study.params import suggest, trial_config
from nas.study.storage import quiet_optuna
from nas.study.workers import requeue, root_trial, trial_id, worker_id


@dataclass
class TrialOutcome:
    """What one trial attempt ended with (for progress lines and tests).

    Attributes:
        number: the trial number.
        state: ``COMPLETE``, ``FAIL`` or ``PRUNED``.
        values: ``(psnr_db, gflops)`` when complete.
        reason: why it failed, or a note (``same hyperparameters as trial N``).
        seconds: wall time of the attempt.
    """

    number: int
    state: str
    values: tuple[float, float] | None = None
    reason: str = ""
    seconds: float = 0.0


class Objective:
    """The trial function: sample, build the trial config, search, derive, score, record.

    Args:
        setup: the validated study set-up (:class:`nas.study.run.StudySetup`).
        study: the Optuna study.
        storage: the study's storage object (trial ids and system attrs, public API).
        out_dir: results folder; trial ``n`` runs in ``<out_dir>/trials/<n>/`` (a retried trial in
            the folder of the trial it retries).
        device: torch device of the searches.
        progress: show the per-trial search bar.
        on_outcome: called with a :class:`TrialOutcome` when an attempt ends.
        group: runs the work on every rank of a ``torchrun`` group (default: this process).
    """

    def __init__(self, setup, study, storage, out_dir: str | os.PathLike,
                 device: Any = "cpu", progress: bool = False,
                 on_outcome: Callable[[TrialOutcome], None] | None = None,
                 group: Group | None = None) -> None:
        self.setup = setup
        self.study = study
        self.storage = storage
        self.out = Path(out_dir)
        self.study_name = study.study_name
        self.device = device
        self.progress = progress
        self.on_outcome = on_outcome
        self.references = dict(setup.references)
        self.space = study_space(setup.cfg)
        self.group = group or Group(device, progress)
        self.cache = study_score_cache(study, storage, run=self.group.score)
        from nas.restoration.evaluate import Convention

        self.convention = Convention.for_task(setup.cfg.task).describe()

    def run_dir(self, trial, root: int) -> Path:
        """The run folder of a trial: the recorded one of the series if it exists, else
        ``<out>/trials/<root>``."""
        recorded = trial.user_attrs.get("run_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
        return self.out / "trials" / str(root)

    def __call__(self, trial) -> tuple[float, float]:
        import optuna

        from nas.engine.supernet_search import supernet_key

        setup = self.setup
        t0 = time.perf_counter()
        ref = trial.user_attrs.get("reference")
        root = root_trial(self.storage, self.study, trial.number)
        run_dir = self.run_dir(trial, root)
        seed = setup.cfg.seed + root if setup.hpo.seed_per_trial else setup.cfg.seed
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("worker", worker_id())
        if root != trial.number:
            trial.set_user_attr("retry_of", root)
        values = {name: suggest(trial, name, s) for name, s in setup.specs.items()}
        if ref is None and not setup.hpo.seed_per_trial:
            twin = finished_twin(self.study, trial.number, values)
            if twin is not None:  # the search is deterministic: same params, same result
                for k in ("run_dir", "arch_path", "arch", "arch_key", "flops", "params", "steps",
                          "score_seeds"):
                    if k in twin.user_attrs:
                        trial.set_user_attr(k, twin.user_attrs[k])
                trial.set_user_attr("duplicate_of", twin.number)
                with quiet_optuna():
                    trial.set_constraint("reference", 0.0)
                out = (float(twin.values[0]), float(twin.values[1]))
                self._report(TrialOutcome(trial.number, "COMPLETE", out,
                                          f"same hyperparameters as trial {twin.number}"))
                return out
        cfg = trial_config(setup.cfg, values, setup.targets, seed, where=f"trial {trial.number}")
        if ref is not None:
            if ref not in self.references:
                raise UsageError(f"trial {trial.number}: unknown reference {ref!r} (config changed?)")
        budget = setup.hpo.time_budget_s
        started = time.time()
        resumed = 0
        provenance: dict[str, Any] = {"study": self.study_name, "trial": trial.number,
                                      "hpo": values}
        if ref is not None:
            provenance["reference"] = ref
        if root != trial.number:
            provenance["retry_of"] = root
        try:
            if ref is not None:
                res = export_reference(cfg, self.references[ref], run_dir, provenance)
            else:
                res, resumed = self.group.search(cfg, run_dir,
                                                 self.out / "supernets" / supernet_key(cfg),
                                                 provenance, budget, started)
            scores = self.cache.scores(cfg, self.space, res.arch, range(cfg.score.seeds),
                                       device=self.device)
            res = record_scores(res, run_dir, scores, self.convention)
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
        except UsageError as e:  # e.g. an image that cannot be decoded: not the trial's fault
            with contextlib.suppress(Exception):
                trial.set_user_attr("fail_reason", f"input error: {e}")
            raise
        except KeyboardInterrupt:
            self._requeue(trial, "interrupted (Ctrl-C or SIGTERM); re-queued", "interrupted")
            raise
        except Exception as e:
            if not _group_broke(e):
                raise
            # a rank of the torchrun group died: this process cannot go on either; the trial
            # resumes from its checkpoint when the group is restarted (torchrun --max-restarts)
            first = (str(e).splitlines() or [e.__class__.__name__])[0][:160]
            self._requeue(trial, f"killed: a process of the torchrun group died ({first}); "
                          "re-queued", "a process of its torchrun group died")
            raise
        if resumed > 0:
            trial.set_user_attr("resumed_from_step", resumed)
        trial.set_user_attr("arch_path", str(res.arch_path))
        trial.set_user_attr("arch_key", arch_key(res.arch))
        trial.set_user_attr("arch", res.arch)
        trial.set_user_attr("flops", int(round(res.gflops * 1e9)))
        trial.set_user_attr("params", int(res.params))
        trial.set_user_attr("steps", int(res.steps))
        trial.set_user_attr("score_seeds", [s.seed for s in scores])
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        with quiet_optuna():
            trial.set_constraint("reference", 1.0 if ref is not None else 0.0)
        values_out = (float(res.psnr_db), float(res.gflops))
        self._report(TrialOutcome(trial.number, "COMPLETE", values_out, "",
                                  time.perf_counter() - t0))
        return values_out

    def _requeue(self, trial, reason: str, why: str) -> None:
        """Record why the trial stops and put a copy of it back in the queue; SIGINT/SIGTERM
        (a launcher stopping the other ranks) wait until this bookkeeping is done."""
        import signal

        blocked = {signal.SIGINT, signal.SIGTERM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("interrupted", True)
            frozen = self.storage.get_trial(trial_id(self.storage, self.study, trial.number))
            requeue(self.study, frozen, self.setup.hpo.max_retry,
                    reason=f"trial {trial.number}: {why}")
        except Exception as e:  # noqa: BLE001 - the next start re-queues it (requeue_orphans)
            import logging

            logging.getLogger("acla_nas.study").warning(
                "trial %d: could not re-queue (%s: %s); the next start will", trial.number,
                e.__class__.__name__, e)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _report(self, outcome: TrialOutcome) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)


def finished_twin(study, number: int, values: Mapping[str, Any]):
    """A COMPLETE searched trial with exactly these hyperparameters, or ``None``.

    Trials share the config's seed (unless ``hpo.seed_per_trial``) and the search is
    deterministic on a given device, so such a trial's result is reused instead of recomputed
    (NSGA-II readily proposes a copy of a parent in small studies).
    """
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and "reference" not in t.user_attrs and t.params == values:
            return t
    return None


def _group_broke(e: BaseException) -> bool:
    """Whether an error means the torchrun group lost a process (a collective failed)."""
    import torch.distributed as tdist

    from nas.engine import distributed as dist

    if not dist.is_distributed():
        return False
    if isinstance(e, getattr(tdist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(w in text for w in ("gloo", "nccl", "connection",
                                                                   "peer"))


def study_space(cfg):
    """The :class:`~search_spaces.space.SearchSpace` of a study's config."""
    from nas.engine.network import build_backbone
    from search_spaces.space import SearchSpace

    return SearchSpace(cfg.space, build_backbone(cfg.space, cfg.task).config.num_block)


def study_score_cache(study, storage, run=None) -> ScoreCache:
    """A :class:`ScoreCache` kept in the study's system attributes (public storage API), so every
    worker of the study, on any machine, reuses every score; ``run`` scores a missing one (e.g.
    :meth:`nas.study.group.Group.score`, on every rank of a group)."""
    sid = storage.get_study_id_from_name(study.study_name)
    return ScoreCache(get=lambda k: storage.get_study_system_attrs(sid).get(k),
                      put=lambda k, v: storage.set_study_system_attr(sid, k, v), run=run)


def export_reference(cfg, arch: Mapping[str, Any], run_dir: Path,
                     provenance: Mapping[str, Any]) -> SearchResult:
    """Export a reference architecture (no search: it is known) like a searched one."""
    from nas.engine.flops import CostModel
    from nas.engine.network import build_fixed

    space = study_space(cfg)
    lr_size = tuple(cfg.search.lr_size) if cfg.search.lr_size else None
    cost = CostModel(space, cfg.task, lr_size)
    fixed = build_fixed(space, cfg.task, arch)
    probs = {label: {str(v): float(v == arch.get(label)) for v in c.values}
             for label, c in ((c.label, c) for c in space.choices()) if label in arch}
    return export_result(fixed, arch, task=cfg.task, space_cfg=cfg.space, cost=cost, probs=probs,
                         out_dir=run_dir, provenance=dict(provenance), steps=0, seconds=0.0)
