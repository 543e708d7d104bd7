"""The trial function of a study: sample the outer hyperparameters, search, derive, score, record.

Each trial runs one supernet search (:class:`nas.engine.supernet_search.SupernetSearch`) in
``<out>/trials/<n>/`` and returns ``(psnr_db, gflops)``:

* ``psnr_db`` - PSNR (dB) of the derived network on the held-out validation images, in the task's
  convention (SR: Y channel, ``scale`` pixels cropped; denoising/demosaicing: RGB; JPEG: Y), see
  ``result.json`` of each trial;
* ``gflops`` - exact GFLOPs (1e9 FLOPs, FLOPs = 2 x MACs, per image) of the derived network at the
  reference input size (``search.lr_size``, default a 1280x720 output).

Reference trials run the same search with the supernet frozen to their architecture
(:meth:`nas.engine.supernet.Supernet.freeze`).

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

from nas.errors import DivergedError, UsageError
from nas.study.params import suggest, trial_config
from nas.study.storage import quiet_optuna
from nas.study.workers import requeue, root_trial, trial_id, worker_id


class TimeBudgetExceeded(RuntimeError):
    """A trial ran longer than ``hpo.time_budget_s``."""


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
    """

    def __init__(self, setup, study, storage, out_dir: str | os.PathLike,
                 device: Any = "cpu", progress: bool = False,
                 on_outcome: Callable[[TrialOutcome], None] | None = None) -> None:
        self.setup = setup
        self.study = study
        self.storage = storage
        self.out = Path(out_dir)
        self.study_name = study.study_name
        self.device = device
        self.progress = progress
        self.on_outcome = on_outcome
        self.references = dict(setup.references)

    def run_dir(self, trial, root: int) -> Path:
        """The run folder of a trial: the recorded one of the series if it exists, else
        ``<out>/trials/<root>``."""
        recorded = trial.user_attrs.get("run_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
        return self.out / "trials" / str(root)

    def __call__(self, trial) -> tuple[float, float]:
        import optuna

        from nas.engine.supernet_search import SupernetSearch

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
                for k in ("run_dir", "arch_path", "flops", "params", "steps"):
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
        first_step: list[int] = []

        def on_step(row: dict) -> None:
            if not first_step:
                first_step.append(int(row["step"]) - 1)
            if budget is not None and time.perf_counter() - t0 > budget:
                raise TimeBudgetExceeded(f"time budget of {budget:g} s exceeded at step "
                                         f"{row['step']}")

        provenance: dict[str, Any] = {"study": self.study_name, "trial": trial.number,
                                      "hpo": values}
        if ref is not None:
            provenance["reference"] = ref
        if root != trial.number:
            provenance["retry_of"] = root
        try:
            search = SupernetSearch(cfg, run_dir, device=self.device, progress=self.progress,
                                    provenance=provenance)
            if ref is not None:
                search.model.freeze(self.references[ref])
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
        except UsageError as e:  # e.g. an image that cannot be decoded: not the trial's fault
            with contextlib.suppress(Exception):
                trial.set_user_attr("fail_reason", f"input error: {e}")
            raise
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM); re-queued")
                trial.set_user_attr("interrupted", True)
                frozen = self.storage.get_trial(trial_id(self.storage, self.study, trial.number))
                requeue(self.study, frozen, None, reason=f"trial {trial.number}: interrupted")
            raise
        if first_step and first_step[0] > 0:
            trial.set_user_attr("resumed_from_step", first_step[0])
        trial.set_user_attr("arch_path", str(res.arch_path))
        trial.set_user_attr("flops", int(round(res.gflops * 1e9)))
        trial.set_user_attr("params", int(res.params))
        trial.set_user_attr("steps", int(res.steps))
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        with quiet_optuna():
            trial.set_constraint("reference", 1.0 if ref is not None else 0.0)
        values_out = (float(res.psnr_db), float(res.gflops))
        self._report(TrialOutcome(trial.number, "COMPLETE", values_out, "",
                                  time.perf_counter() - t0))
        return values_out

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
