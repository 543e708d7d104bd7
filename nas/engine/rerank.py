"""``search.rerank``: the most probable architectures ranked by the supernet's own weights.

The gates can end up preferring a path that the shared weights themselves score lower (on the
planted problem, ``results/bench/planted*.csv``, they did on 3 of 10 seeds). Ranking the ``k``
most probable architectures (:func:`nas.engine.derive.derive_top`) by their inherited-weight PSNR
on fixed validation batches costs ``k x`` :data:`BATCHES` forward passes and corrects that.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from nas.engine.derive import derive_top
from nas.engine.objective import batch_psnr
from nas.restoration.patches import PatchStream

#: batches of the val split every candidate is scored on
BATCHES = 8


def rerank_batches(cfg, splits, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:data:`BATCHES` fixed ``(lq, hr)`` batches of the val (alpha) split, the same for every
    candidate (patch stream seed ``cfg.seed + 2``, the config's patch size and augmentation)."""
    stream = PatchStream(splits.val, cfg.task, cfg.data.patch_size, batch_size,
                         seed=cfg.seed + 2, augment=cfg.data.augment)
    return [stream.next() for _ in range(BATCHES)]


def inherited_psnr(model, archs: Sequence[dict[str, Any]], batches, device="cpu") -> list[float]:
    """PSNR (dB, RGB, mean over ``batches``) of each architecture run with the supernet ``model``'s
    weights (:meth:`nas.engine.supernet.Supernet.decisions`), in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for arch in archs:
                dec = model.decisions(arch)
                vals = [batch_psnr(model(lq.to(device), dec), hr.to(device)) for lq, hr in batches]
                out.append(sum(vals) / len(vals))
    finally:
        model.train(was_training)
    return out


def rerank(model, candidates: Sequence[dict[str, Any]], batches,
           device="cpu") -> tuple[dict[str, Any], list[dict]]:
    """The candidate with the highest inherited-weight PSNR (the more probable one on a tie) and
    every candidate's record ``{"rank", "inherited_psnr_db", "arch"}`` (rank = probability order).

    Raises:
        ValueError: no candidates.
    """
    if not candidates:
        raise ValueError("rerank: no candidate architectures")
    psnr = inherited_psnr(model, candidates, batches, device)
    records = [{"rank": i, "inherited_psnr_db": round(v, 4), "arch": dict(a)}
               for i, (a, v) in enumerate(zip(candidates, psnr))]
    best = max(range(len(candidates)), key=lambda i: (psnr[i], -i))
    return dict(candidates[best]), records


def derive_for_search(cfg, model, splits, batch_size: int,
                      device="cpu") -> tuple[dict[str, Any], list[dict]]:
    """The architecture a search exports and the rerank records (empty without a rerank).

    ``search.derive`` picks the mode (default: ``budget`` when ``penalty.target_gflops`` is set,
    else ``argmax``); ``search.rerank = k >= 2`` ranks the k most probable architectures by
    :func:`inherited_psnr` on :func:`rerank_batches` and takes the best (:func:`rerank`).

    Args:
        cfg: the run config.
        model: the trained :class:`nas.engine.supernet.Supernet` with its learned gates.
        splits: the data splits (:class:`nas.engine.scoring.SplitPairs`).
        batch_size: patches per rerank batch.
        device: where the supernet runs.
    """
    s = cfg.search
    mode = s.derive or ("budget" if s.penalty.target_gflops else "argmax")
    budget = s.penalty.target_gflops * 1e9 if mode == "budget" else None
    cands = derive_top(model.space, model.probs_dict(), model.cost, budget, max(1, s.rerank))
    if len(cands) == 1:
        return cands[0], []
    return rerank(model, cands, rerank_batches(cfg, splits, batch_size), device)
