"""Finish a search: check FLOPs -> ArchSpec -> ``result.json``, then record its scores.

One sequence used by our supernet search (:mod:`nas.engine.supernet_search`) and by the NNI
adapter (:mod:`nas.adapters.nni`), so every exported ArchSpec carries the same fields and the
same guarantee: its FLOPs are the analytic FLOPs of the architecture *and* equal the FLOPs
``FlopCounterMode`` measures on the exported network. Scores come from one protocol for every
architecture (:mod:`nas.engine.scoring`), recorded by :func:`record_scores`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from nas.engine.archspec import ArchSpec, space_block
from nas.engine.flops import CostModel, measure_network_flops
from nas.io import atomic_write_json
from nas.restoration.task import Task
from nas.runtime import git_commit

#: the FLOPs convention written into every ArchSpec's ``cost`` block
COST_CONVENTION = "FLOPs = 2 x MACs, per image"


@dataclass
class SearchResult:
    """What a finished search exported.

    Attributes:
        arch: the derived architecture ``{label: value}`` (canonical).
        arch_path: its ArchSpec file.
        gflops: exact GFLOPs (1e9 FLOPs) at the reference input size.
        params: parameters of the derived network.
        steps: search steps run (weight and alpha steps).
        seconds: wall time of the search (this process), seconds.
        psnr_db: score of the architecture (mean over scoring seeds, dB), when scored.
        psnr_se: its standard error over seeds (dB; ``nan`` for one seed).
    """

    arch: dict
    arch_path: Path
    gflops: float
    params: int
    steps: int
    seconds: float
    psnr_db: float = math.nan
    psnr_se: float = math.nan


def export_result(fixed: torch.nn.Module, arch: Mapping[str, Any], *, task: Task, space_cfg,
                  cost: CostModel, probs: Mapping[str, Any], out_dir: str | os.PathLike,
                  provenance: Mapping[str, Any], steps: int, seconds: float,
                  extra_result: Mapping[str, Any] | None = None) -> SearchResult:
    """Check a derived network's FLOPs, write ``arch.json`` and ``result.json``.

    Args:
        fixed: the derived network (:func:`nas.engine.network.build_fixed`).
        arch: its canonical architecture.
        task: the task (ArchSpec ``task`` block).
        space_cfg: the search space offered (ArchSpec ``space`` block).
        cost: the FLOPs table (reference input size ``cost.lr_size``).
        probs: gate probabilities at export (``{label: {value: p}}``).
        out_dir: run folder.
        provenance: fields of the ArchSpec ``provenance`` block (the git commit is added).
        steps, seconds: search steps and wall time, recorded in ``result.json``.
        extra_result: more fields for ``result.json``.

    Returns:
        The :class:`SearchResult` (not scored).

    Raises:
        RuntimeError: the analytic FLOPs differ from the measured FLOPs (a bug).
    """
    out = Path(out_dir)
    flops = cost.exact(arch)
    params = sum(p.numel() for p in fixed.parameters())
    h, w = cost.lr_size
    measured = measure_network_flops(fixed, (h, w))
    if measured != flops:  # pragma: no cover - guarded by tests of nas.engine.flops
        raise RuntimeError(f"analytic FLOPs {flops} != measured {measured} for {dict(arch)}")
    spec = ArchSpec(
        task=task.to_dict(), backbone=fixed.backbone.archspec_block(), space=space_block(space_cfg),
        choices=dict(arch), probs=dict(probs),
        cost={"flops": flops, "gflops": flops / 1e9, "params": params, "lr_size": [h, w],
              "convention": COST_CONVENTION},
        provenance={**provenance, "git": git_commit()})
    arch_path = spec.save(out / "arch.json")
    atomic_write_json(out / "result.json", {
        "gflops": flops / 1e9, "params": params, "steps": steps, "seconds": seconds,
        "arch": dict(arch), **(extra_result or {})})
    return SearchResult(dict(arch), arch_path, flops / 1e9, params, steps, seconds)


def record_scores(result: SearchResult, out_dir: str | os.PathLike, scores: Sequence[Any],
                  convention: str) -> SearchResult:
    """Add the scores of the derived architecture to ``result.json`` and to ``result``.

    Args:
        result: from :func:`export_result`.
        out_dir: the run folder.
        scores: :class:`nas.engine.scoring.Score` s of the architecture.
        convention: how the PSNR was measured (printed tables and ``result.json`` say it).
    """
    from nas.engine.scoring import mean_and_se

    vals = [s.psnr_db for s in scores]
    result.psnr_db, result.psnr_se = mean_and_se(vals)
    path = Path(out_dir) / "result.json"
    d = json.loads(path.read_text())
    d.update({"psnr_db": result.psnr_db, "psnr_se": result.psnr_se,
              "scores": {str(s.seed): s.psnr_db for s in scores}, "convention": convention})
    atomic_write_json(path, d)
    return result
