"""One fair, noise-aware score for every architecture, searched or reference.

An architecture is scored by training its fixed network stand-alone from scratch
(:class:`nas.config.ScoreConfig`: ``steps`` Adam steps, cosine learning rate) on the train split
and measuring PSNR (dB, the task's convention) on the held-out *score* split - images neither the
supernet's weights nor its logits have seen. Scoring runs use common random numbers: seed ``s``
fixes the initialisation of the layers every architecture shares (the backbone is built first),
the stream of training patches and the evaluation crops, so the difference between two
architectures under one seed is not blurred by different draws. A score is a function of
(architecture, protocol, seed) only - not of how a supernet happened to be trained - so trials
that derive the same architecture report the same PSNR, and the reference architectures are on
exactly the same footing as searched ones. Scores are cached by that key (:class:`ScoreCache`).

Noise: the spread of one architecture's scores over seeds (:func:`pooled_seed_sd` over many
architectures), and the paired difference to the plain backbone under the same seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from nas.config import Config
from nas.engine import distributed as dist
from nas.engine.network import build_fixed, canonical_arch
from nas.engine.objective import l1_train_step
from nas.restoration.data import PairedImage, make_pairs, split_data
from nas.restoration.evaluate import psnr_on_centre_crops
from nas.restoration.patches import PatchStream
from search_spaces.space import SearchSpace


@dataclass
class SplitPairs:
    """The three splits (see :func:`nas.restoration.data.split_data`).

    Attributes:
        train: images of the weight steps (supernet and scoring runs), a
            :class:`~nas.restoration.patches.PairSource`.
        val: images of the alpha steps, a :class:`~nas.restoration.patches.PairSource`.
        score: the held-out images architectures are scored on (in memory; for a disk-backed
            data set their centre crops of ``score.max_eval_side``).
    """

    train: Any
    val: Any
    score: list[PairedImage]


def load_splits(cfg: Config) -> SplitPairs:
    """Split the configured images and prepare each split (memoised per process): in memory, or
    for large folders (``data.storage``) as sub-images cached on disk, so memory stays flat in
    the number of training images.

    Raises:
        UsageError: unreadable images, too few images for the splits, a missing LR partner.
    """
    key = json.dumps({"data": _split_fields(cfg), "task": cfg.task.to_dict(),
                      "crop": cfg.score.max_eval_side}, sort_keys=True)
    return _load_splits(key)


def _split_fields(cfg: Config) -> dict:
    """The data fields that decide the images of each split."""
    d = cfg.to_dict()["data"]
    return {k: d[k] for k in ("source", "images", "val_fraction", "score_fraction", "groups",
                              "split_seed", "lr_source", "storage")}


@functools.lru_cache(maxsize=4)
def _load_splits(key: str) -> SplitPairs:
    from nas.config import config_from_dict
    from nas.restoration.images import load_image
    from nas.restoration.patches import MemorySource, folder_source, lr_partner

    k = json.loads(key)
    cfg = config_from_dict({"data": k["data"], "task": k["task"]})
    d, task = cfg.data, cfg.task
    names = list(d.image_sizes())
    train, val, score = split_data(names, d.val_fraction, d.score_fraction, d.split_seed,
                                   d.split_groups())
    score = score or val
    if not d.disk_backed(len(names)):
        images = d.load()

        def pairs(ns):
            return make_pairs({n: images[n] for n in ns}, task, d.split_seed)

        return SplitPairs(MemorySource(pairs(train)), MemorySource(pairs(val)), pairs(score))
    from nas.restoration.images import list_images

    files = {p.stem: p for p in list_images(d.source)}
    crop = int(k["crop"])
    out = []
    for n in score:  # centre crops of the score images only: they are read whole once
        hr = load_image(files[n])
        m = 2 * task.hr_modulo
        c = min(crop - crop % m, hr.shape[0] - hr.shape[0] % m, hr.shape[1] - hr.shape[1] % m)
        y, x = (hr.shape[0] - c) // 2 // m * m, (hr.shape[1] - c) // 2 // m * m
        hr = hr[y:y + c, x:x + c]
        if d.lr_source is not None:
            s = task.scale
            lq = load_image(lr_partner(Path(d.lr_source), files[n], s))
            lq = lq[y // s:(y + c) // s, x // s:(x + c) // s].astype(np.float32)
            out.append(PairedImage(n, hr, lq))
        else:
            out += make_pairs({n: hr}, task, d.split_seed)
    return SplitPairs(folder_source(d.source, task, train, d.lr_source),
                      folder_source(d.source, task, val, d.lr_source), out)


def arch_key(arch: Mapping[str, Any]) -> str:
    """A short stable key of a canonical architecture (16 hex digits of its SHA-256)."""
    return hashlib.sha256(json.dumps(dict(arch), sort_keys=True).encode()).hexdigest()[:16]


def protocol_key(cfg: Config) -> str:
    """A short key of everything that shapes a score besides the architecture and the seed: the
    task, the data and its splits, the backbone and operator settings, the ``score`` block."""
    d = cfg.to_dict()
    score = {k: v for k, v in d["score"].items() if k not in ("seeds", "noise_seeds")}
    what = {"task": d["task"], "data": _split_fields(cfg), "score": score,
            "backbone": d["space"]["backbone"], "op_config": d["space"]["op_config"]}
    if not cfg.data.augment:  # only when off: the default leaves earlier studies' keys unchanged
        what["augment"] = False
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Score:
    """One scoring run.

    Attributes:
        psnr_db: PSNR (dB) on the score split, the task's convention.
        seed: the scoring seed.
        seconds: wall time of the run (training and evaluation), seconds.
    """

    psnr_db: float
    seed: int
    seconds: float


def score_architecture(cfg: Config, space: SearchSpace, arch: Mapping[str, Any], seed: int,
                       device: torch.device | str = "cpu",
                       splits: SplitPairs | None = None) -> Score:
    """Train ``arch`` stand-alone with scoring seed ``seed`` and score it (module docstring).

    Args:
        cfg: the config (its ``task``, ``data``, ``score`` and ``search.amp`` are used).
        space: the search space the labels refer to.
        arch: the architecture ``{label: value}``.
        seed: the scoring seed (common random numbers across architectures).
        device: torch device.
        splits: the loaded splits (default: :func:`load_splits`).

    Returns:
        The :class:`Score`.

    Raises:
        DivergedError: the training loss became NaN or infinite.
    """
    sc = cfg.score
    splits = splits or load_splits(cfg)
    device = torch.device(device)
    t0 = time.perf_counter()
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(10007 * seed + 1)
        net = build_fixed(space, cfg.task, canonical_arch(space, space.validate(arch))).to(device)
        sampler = PatchStream(splits.train, cfg.task, sc.patch_size, sc.batch_size,
                              seed=10007 * seed + 2, workers=cfg.data.workers,
                              augment=cfg.data.augment)
        opt = torch.optim.Adam(net.parameters(), lr=sc.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sc.steps, eta_min=sc.lr * 0.1)
        use_amp = cfg.search.amp and device.type == "cuda"
        net.train()
        for step in range(sc.steps):
            lq, hr = (t.to(device) for t in sampler.next())
            l1_train_step(net, opt, lq, hr, amp=use_amp, grad_clip=1.0,
                          what=f"scoring step {step}")
            sched.step()
        psnr = psnr_on_centre_crops(net, splits.score, cfg.task, sc.max_eval_side,
                                    lambda t: t.to(device))
    finally:
        torch.set_rng_state(rng)
    return Score(float(psnr), int(seed), time.perf_counter() - t0)


class ScoreCache:
    """Scores by (protocol, architecture, seed).

    Args:
        get: ``key -> dict or None`` (e.g. a study's system attributes).
        put: ``(key, dict) -> None``.
        run: ``(cfg, space, arch, seed, device) -> Score`` for a missing score (default
            :func:`score_architecture`).

    The default keeps the scores in memory (one process).
    """

    def __init__(self, get: Callable[[str], dict | None] | None = None,
                 put: Callable[[str, dict], None] | None = None,
                 run: Callable[..., Score] | None = None) -> None:
        self._mem: dict[str, dict] = {}
        self._get = get or self._mem.get
        self._put = put or self._mem.__setitem__
        self._run = run or score_architecture

    def put(self, key: str, value: dict) -> None:
        """Store a score under a :meth:`key` (e.g. one known from another run of the protocol)."""
        self._put(key, value)

    @staticmethod
    def key(protocol: str, arch: Mapping[str, Any], seed: int) -> str:
        """``score:<protocol>:<arch>:<seed>``."""
        return f"score:{protocol}:{arch_key(arch)}:{int(seed)}"

    def scores(self, cfg: Config, space: SearchSpace, arch: Mapping[str, Any],
               seeds: Sequence[int], device: torch.device | str = "cpu",
               on_run: Callable[[Score], None] | None = None) -> list[Score]:
        """The scores of ``arch`` for ``seeds``, running the missing ones.

        Raises:
            DivergedError: a scoring run diverged.
        """
        arch = canonical_arch(space, space.validate(arch))
        proto = protocol_key(cfg)
        out = []
        for seed in seeds:
            k = self.key(proto, arch, seed)
            hit = self._get(k)
            if hit is None:
                s = self._run(cfg, space, arch, seed, device)
                if dist.is_main():
                    self._put(k, {"psnr_db": s.psnr_db, "seconds": round(s.seconds, 3)})
                if on_run is not None:
                    on_run(s)
                out.append(s)
            else:
                out.append(Score(float(hit["psnr_db"]), int(seed), float(hit.get("seconds", 0))))
        return out


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (``sd / sqrt(n)``, ``nan`` for one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, sd / math.sqrt(n)


def pooled_seed_sd(per_arch: Sequence[Sequence[float]]) -> float:
    """Pooled standard deviation of one architecture's score over seeds (dB), from every
    architecture scored with at least two seeds (``nan`` if none)."""
    ss, dof = 0.0, 0
    for vals in per_arch:
        if len(vals) >= 2:
            m = sum(vals) / len(vals)
            ss += sum((v - m) ** 2 for v in vals)
            dof += len(vals) - 1
    return math.sqrt(ss / dof) if dof else math.nan
