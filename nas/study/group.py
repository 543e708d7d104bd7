"""Trials run by a ``torchrun`` group: rank 0 owns the Optuna study, every rank does the work.

Under ``torchrun --nproc_per_node=N -m nas search ...`` rank 0 runs the study loop exactly as a
single process does (sampling, storage, retries, records), and hands every unit of work - one
supernet search, one scoring run - to :class:`Group`, which sends it as a small *plan* to the
other ranks (:func:`follow`) and runs it itself; the ranks then train in lockstep
(:mod:`nas.engine.distributed`). Only rank 0 writes files or talks to the storage. Without a group
(one process) :class:`Group` just runs the work. This is the role Optuna's
``TorchDistributedTrial`` plays for a trial function that only suggests parameters; our trials
also resume checkpoints, score architectures and measure the noise floor, so the plan carries the
whole unit of work.

A time budget is checked on rank 0 and agreed by all ranks at every step, so every rank stops at
the same step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import torch

from nas.engine import distributed as dist


class TimeBudgetExceeded(RuntimeError):
    """A trial ran longer than ``hpo.time_budget_s``."""


def _execute(plan: Mapping[str, Any], device: Any, progress: bool) -> Any:
    """Run one plan on this rank (every rank of the group calls this with the same plan)."""
    from nas.config import config_from_dict

    cfg = config_from_dict(plan["cfg"])
    if plan["kind"] == "score":
        from nas.engine.scoring import score_architecture
        from nas.study.objective import study_space

        return score_architecture(cfg, study_space(cfg), plan["arch"], plan["seed"], device)
    from nas.engine.supernet_search import SupernetSearch

    deadline = plan.get("deadline")
    first: list[int] = []

    def on_step(row: dict) -> None:
        if not first:
            first.append(int(row["step"]) - 1)
        late = dist.is_main() and deadline is not None and time.time() > deadline
        if _any(late):
            raise TimeBudgetExceeded(f"time budget of {plan['budget']:g} s exceeded at step "
                                     f"{row['step']}")

    search = SupernetSearch(cfg, Path(plan["run_dir"]), device=device,
                            progress=progress and dist.is_main(),
                            provenance=plan.get("provenance"),
                            supernet_dir=Path(plan["supernet_dir"]))
    res = search.run(on_step=on_step)
    return res, (first[0] if first else 0)


def _any(flag: bool) -> bool:
    """Whether any rank raised ``flag`` (every rank learns the same answer)."""
    if not dist.is_distributed():
        return flag
    import torch.distributed as tdist

    t = torch.tensor([1.0 if flag else 0.0])
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t[0] > 0)


class Group:
    """Rank 0's handle on its group (a plain runner without one).

    Args:
        device: this rank's torch device.
        progress: show progress bars (rank 0).
    """

    def __init__(self, device: Any = "cpu", progress: bool = False) -> None:
        self.device = device
        self.progress = progress

    def _run(self, plan: dict) -> Any:
        if dist.is_distributed():
            dist.broadcast(plan)
        return _execute(plan, self.device, self.progress)

    def search(self, cfg, run_dir: Path, supernet_dir: Path, provenance: dict,
               budget_s: float | None, started: float):
        """One supernet search on every rank.

        Returns:
            ``(SearchResult, the step it resumed from)``.

        Raises:
            TimeBudgetExceeded: the budget ran out (on every rank).
            DivergedError: a NaN loss (on every rank).
        """
        return self._run({"kind": "search", "cfg": cfg.to_dict(), "run_dir": str(run_dir),
                          "supernet_dir": str(supernet_dir), "provenance": provenance,
                          "budget": budget_s,
                          "deadline": None if budget_s is None else started + budget_s})

    def score(self, cfg, space, arch: Mapping[str, Any], seed: int, device: Any = None):
        """One scoring run on every rank (the signature of :func:`score_architecture`)."""
        return self._run({"kind": "score", "cfg": cfg.to_dict(), "arch": dict(arch),
                          "seed": int(seed)})

    def stop(self) -> None:
        """Release the other ranks from :func:`follow`."""
        if dist.is_distributed():
            dist.broadcast({"kind": "stop"})


def follow(device: Any) -> None:
    """The loop of ranks other than 0: run rank 0's plans until it says stop. An error in a plan
    (a diverged loss, a time budget) is raised by every rank alike, so the follower goes on to
    the next plan as rank 0 goes on to the next trial."""
    from nas.errors import DivergedError

    while True:
        plan = dist.broadcast(None)
        if plan["kind"] == "stop":
            return
        try:
            _execute(plan, device, False)
        except (DivergedError, TimeBudgetExceeded):
            continue
