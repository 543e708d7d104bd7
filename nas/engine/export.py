"""Finish a search: derive -> score -> check FLOPs -> ArchSpec -> ``result.json``.

One sequence used by our supernet search (:mod:`nas.engine.supernet_search`) and by the NNI
adapter (:mod:`nas.adapters.nni`), so every exported ArchSpec carries the same fields and the
same guarantee: its FLOPs are the analytic FLOPs of the architecture *and* equal the FLOPs
``FlopCounterMode`` measures on the exported network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from nas.engine.archspec import ArchSpec, space_block
from nas.engine.flops import CostModel, measure_network_flops
from nas.io import atomic_write_json
from nas.restoration.data import PairedImage
from nas.restoration.evaluate import Convention, psnr_on_centre_crops
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
        psnr_db: validation PSNR (dB) of the derived network with inherited weights.
        gflops: exact GFLOPs (1e9 FLOPs) at the reference input size.
        params: parameters of the derived network.
        steps: search steps run.
        seconds: wall time of the search (this process), seconds.
    """

    arch: dict
    arch_path: Path
    psnr_db: float
    gflops: float
    params: int
    steps: int
    seconds: float


def export_result(fixed: torch.nn.Module, arch: Mapping[str, Any], *, task: Task, space_cfg,
                  cost: CostModel, probs: Mapping[str, Any], val_pairs: Sequence[PairedImage],
                  crop: int, to_device: Callable[[torch.Tensor], torch.Tensor],
                  out_dir: str | os.PathLike, provenance: Mapping[str, Any], steps: int,
                  seconds: float, extra_result: Mapping[str, Any] | None = None) -> SearchResult:
    """Score a derived network, check its FLOPs, write ``arch.json`` and ``result.json``.

    Args:
        fixed: the derived network (:func:`nas.engine.network.build_fixed`, weights inherited).
        arch: its canonical architecture.
        task: the task (scoring convention, ArchSpec ``task`` block).
        space_cfg: the search space offered (ArchSpec ``space`` block).
        cost: the FLOPs table (reference input size ``cost.lr_size``).
        probs: gate probabilities at export (``{label: {value: p}}``).
        val_pairs: held-out images scored on centre crops.
        crop: HR crop side of the scoring crops.
        to_device: moves an input batch to the network's device.
        out_dir: run folder.
        provenance: fields of the ArchSpec ``provenance`` block (the git commit is added).
        steps, seconds: search steps and wall time, recorded in ``result.json``.
        extra_result: more fields for ``result.json``.

    Returns:
        The :class:`SearchResult`.

    Raises:
        RuntimeError: the analytic FLOPs differ from the measured FLOPs (a bug).
    """
    out = Path(out_dir)
    psnr = psnr_on_centre_crops(fixed, val_pairs, task, crop, to_device)
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
        "psnr_db": psnr, "gflops": flops / 1e9, "params": params, "steps": steps,
        "seconds": seconds, "val_images": [p.name for p in val_pairs],
        "convention": Convention.for_task(task).describe(), **(extra_result or {})})
    return SearchResult(dict(arch), arch_path, psnr, flops / 1e9, params, steps, seconds)
