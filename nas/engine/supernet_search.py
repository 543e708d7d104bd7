"""The supernet search: train the supernet's weights, then learn the gates, then derive.

Phase 1 - **supernet training** (:class:`SupernetTraining`): ``search.supernet_steps`` weight
steps on batches of the train split, each on one path drawn *independently of alpha*: the
largest architecture for the first ``largest_path_steps`` (every candidate, at its largest key
count, learns to be useful before any choice is made), then a uniform draw per label (single-path
one-shot, SPOS, Guo et al. 2020), optionally plus the largest path on every step (``sandwich``,
Yu et al. 2019). Weight sharing that follows alpha trains what alpha already likes and biases the
search toward ``skip``; these paths do not. The weights depend only on the data, the space and
the weight schedule, so every trial of a study shares one supernet (``supernet_dir``).

Phase 2 - **architecture search** (:class:`ArchitectureSearch`): ``search.alpha_steps`` steps of
the logits alpha on batches of the val split with the weights frozen (network in eval mode), loss
``L1 + penalty(E[F])`` (:mod:`nas.engine.objective`), tau annealed over these steps. Each step
draws an architecture with straight-through Gumbel-softmax and also computes, at every point, the
operators that were not drawn with zero-valued straight-through weights
(``Supernet.sample(all_candidates=True)``): every operator logit receives the first-order effect
of its candidate on the loss on every step, not only when drawn.

Derivation (:mod:`nas.engine.derive`): the most probable architecture, within
``penalty.target_gflops`` when a target is set; ``search.rerank = k``: the best of the k most
probable by the supernet's own PSNR (:mod:`nas.engine.rerank`).

Files::

    <supernet_dir>/supernet.pt        weights, optimiser, scheduler, RNG and sampler states, step
    <supernet_dir>/supernet_log.jsonl per logged weight step: step, l1, psnr, path
    <out>/search.pt                   alpha, its optimiser, RNG and sampler states, step
    <out>/log.jsonl                   per logged alpha step: step, l1, loss, e_gflops, tau, probs
    <out>/arch.json                   the derived ArchSpec (exact cost, probabilities, provenance)
    <out>/result.json                 GFLOPs, parameters, steps, seconds (scores are added by
                                      the caller: ``nas.engine.scoring``)

A killed run restarted with the same config resumes from its checkpoints; the resumed log equals
the uninterrupted run's on the same device (tested).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nas.config import Config, dump_config
from nas.config_checks import check_search
from nas.engine import distributed as dist
from nas.engine.export import SearchResult, export_result
from nas.engine.gates import TemperatureSchedule
from nas.engine.objective import alpha_loss, batch_psnr
from nas.engine.rerank import derive_for_search
from nas.engine.runlog import RunLog
from nas.engine.scoring import SplitPairs, load_splits
from nas.engine.supernet import Supernet
from nas.errors import DivergedError, UsageError
from nas.io import atomic_torch_save, atomic_write_text, ensure_dir, load_checkpoint, truncate_jsonl
from nas.restoration.patches import PatchStream
from nas.runtime import rng_state, set_rng_state

log = logging.getLogger("acla_nas.search")

#: search fields that shape the supernet's weights (besides task, data, space and seed)
WEIGHT_FIELDS = ("supernet_steps", "largest_path_steps", "sandwich", "lr", "grad_clip", "amp",
                 "channels_last")


def weight_config(cfg: Config) -> dict:
    """The part of a config that determines the trained supernet (JSON-ready)."""
    d = cfg.to_dict()
    if d["data"].get("augment", True):  # the default leaves the keys of earlier studies unchanged
        d["data"].pop("augment", None)
    return {"task": d["task"], "data": d["data"], "space": d["space"], "seed": d["seed"],
            "search": {k: d["search"][k] for k in WEIGHT_FIELDS},
            "lr_size": d["search"]["lr_size"]}


def supernet_key(cfg: Config) -> str:
    """Short hash of :func:`weight_config`: the name of a shared supernet folder."""
    return hashlib.sha256(json.dumps(weight_config(cfg), sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    if not dist.is_main():  # rank 0 takes the lock for its group
        yield
        return
    ensure_dir(folder, "supernet folder")
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _Run:
    """What both phases share: config, device, supernet, data, autocast and memory format."""

    def __init__(self, cfg: Config, device: torch.device | str, splits: SplitPairs | None) -> None:
        check_search(cfg.search)
        self.cfg = cfg
        self.device = torch.device(device)
        self.task = cfg.task
        self.splits = splits or load_splits(cfg)
        s = cfg.search
        torch.manual_seed(cfg.seed)
        lr_size = tuple(s.lr_size) if s.lr_size else None
        self.model = Supernet(cfg.space, self.task, lr_size).to(self.device)
        self.use_amp = s.amp and self.device.type == "cuda"
        self.channels_last = s.channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def autocast(self):
        """bf16 autocast on CUDA (``search.amp``), else nothing."""
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device (channels-last on CUDA)."""
        t = t.to(self.device, non_blocking=True)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def batch(self, stream: PatchStream) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's shard of the stream's next global batch, on the device."""
        return tuple(self.to_device(t) for t in stream.next())


class SupernetTraining(_Run):
    """Phase 1: the supernet's weights on alpha-independent paths (module docstring).

    Args:
        cfg: the run config.
        folder: where ``supernet.pt`` and ``supernet_log.jsonl`` live (resumed if present).
        device: torch device.
        progress: show a tqdm bar.
        splits: the loaded data splits (default: :func:`nas.engine.scoring.load_splits`).
    """

    def __init__(self, cfg: Config, folder: str | Path, device: torch.device | str = "cpu",
                 progress: bool = False, splits: SplitPairs | None = None) -> None:
        super().__init__(cfg, device, splits)
        s = cfg.search
        self.folder = Path(folder)
        self.ckpt_path = self.folder / "supernet.pt"
        self.log_path = self.folder / "supernet_log.jsonl"
        self.progress = progress
        self.sampler = PatchStream(self.splits.train, self.task, cfg.data.patch_size,
                                   cfg.data.batch_size, seed=cfg.seed, workers=cfg.data.workers,
                                   augment=cfg.data.augment)
        self.opt = torch.optim.Adam(self.model.weight_parameters(), lr=s.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=s.supernet_steps,
                                                                eta_min=s.lr * 0.1)
        self.largest = self.model.largest_arch()
        self.step = 0
        self.done = False

    def state_dict(self) -> dict:
        """Weights, optimiser, scheduler, RNG and sampler states, step, done flag, config."""
        return {"step": self.step, "done": self.done, "model": self.model.net.state_dict(),
                "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "rng": rng_state(), "sampler": self.sampler.state_dict(),
                "config": weight_config(self.cfg)}

    def try_resume(self) -> bool:
        """Load ``supernet.pt`` if present (an unreadable one is moved aside).

        Raises:
            UsageError: the checkpoint was written for another weight config.
        """
        st = dist.broadcast(load_checkpoint(self.ckpt_path) if dist.is_main() else None)
        if st is None:
            return False
        if st.get("config") != weight_config(self.cfg):
            raise UsageError(f"{self.ckpt_path}: supernet checkpoint of another config; use "
                             "another --out or --force")
        self.model.net.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        set_rng_state(st["rng"])
        self.sampler.load_state_dict(st["sampler"])
        self.step, self.done = int(st["step"]), bool(st["done"])
        truncate_jsonl(self.log_path, self.step)
        return True

    def train_step(self) -> dict[str, Any]:
        """One weight step on an alpha-independent path; returns the logged values.

        Raises:
            DivergedError: the loss is NaN or infinite.
        """
        s = self.cfg.search
        self.model.train()
        lq, hr = self.batch(self.sampler)
        largest = self.step < s.largest_path_steps
        arch = self.largest if largest else self.model.sample_uniform()
        paths = [arch] + ([self.largest] if s.sandwich and not largest else [])
        self.opt.zero_grad(set_to_none=True)
        l1_first = out_first = None
        for a in paths:
            with self.autocast():
                out = self.model(lq, self.model.decisions(a))
                l1 = F.l1_loss(out.float(), hr)
            if not dist.all_true(bool(torch.isfinite(l1))):
                raise DivergedError(f"supernet step {self.step}: L1 is {l1.item()}")
            (l1 / len(paths)).backward()
            if l1_first is None:
                l1_first, out_first = l1, out
        dist.average_gradients(self.model.weight_parameters())
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.weight_parameters(), s.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return {"phase": "supernet", "step": self.step,
                "l1": dist.mean_over_ranks(float(l1_first.detach())),
                "psnr": dist.mean_over_ranks(batch_psnr(out_first, hr)),
                "path": "largest" if largest else "uniform" + ("+largest" if s.sandwich else "")}

    def run(self, stop_after: int | None = None,
            on_step: Callable[[dict], None] | None = None) -> bool:
        """Train (or resume) to ``supernet_steps``.

        Args:
            stop_after: stop once this many steps are done (tests of resume).
            on_step: called with every step's row.

        Returns:
            Whether the training is complete.
        """
        s = self.cfg.search
        main = dist.is_main()
        if main:
            ensure_dir(self.folder, "supernet folder")
        if not self.try_resume() and main and self.log_path.exists():
            self.log_path.unlink()
        if self.done:
            return True
        bar = tqdm(total=s.supernet_steps, initial=self.step, desc="supernet", unit="step",
                   disable=not (self.progress and main), dynamic_ncols=True, leave=False)
        try:
            with RunLog(self.log_path, self.folder / "tb" if s.tensorboard else None,
                        "search.tensorboard") as logf:
                while self.step < s.supernet_steps:
                    row = self.train_step()
                    bar.update(1)
                    bar.set_postfix(l1=f"{row['l1']:.4f}", psnr=f"{row['psnr']:.2f}")
                    if self.step % s.log_every == 0 or self.step == s.supernet_steps:
                        logf.write(dict(row, lr=self.sched.get_last_lr()[0]))
                    if on_step is not None:
                        on_step(row)
                    self.done = self.step == s.supernet_steps
                    if (self.step % s.checkpoint_every == 0 or self.done) and main:
                        atomic_torch_save(self.ckpt_path, self.state_dict())
                    if stop_after is not None and self.step >= stop_after and not self.done:
                        return False
        finally:
            bar.close()
        return True


class ArchitectureSearch(_Run):
    """Phase 2: the logits alpha on the frozen, trained supernet, then derive and export.

    Args:
        cfg: the run config.
        out_dir: the run folder (``search.pt`` resumed if present).
        weights: the trained supernet's ``supernet.pt``.
        device: torch device.
        progress: show a tqdm bar.
        provenance: extra fields of the ArchSpec's provenance block.
        splits: the loaded data splits.
    """

    def __init__(self, cfg: Config, out_dir: str | Path, weights: str | Path,
                 device: torch.device | str = "cpu", progress: bool = False,
                 provenance: dict | None = None, splits: SplitPairs | None = None) -> None:
        super().__init__(cfg, device, splits)
        s = cfg.search
        st = dist.broadcast(load_checkpoint(weights) if dist.is_main() else None)
        if st is None or not st.get("done"):
            raise UsageError(f"{weights}: no trained supernet")
        self.model.net.load_state_dict(st["model"])
        for p in self.model.weight_parameters():
            p.requires_grad_(False)
        self.out = Path(out_dir)
        self.ckpt_path = self.out / "search.pt"
        self.log_path = self.out / "log.jsonl"
        self.progress = progress
        self.provenance = dict(provenance or {})
        self.weights = Path(weights)
        bs = s.alpha_batch_size or cfg.data.batch_size
        self.batch_size = bs
        self.sampler = PatchStream(self.splits.val, self.task, cfg.data.patch_size, bs,
                                   seed=cfg.seed + 1, workers=cfg.data.workers,
                                   augment=cfg.data.augment)
        self.opt = torch.optim.Adam(self.model.arch_parameters(), lr=s.alpha_lr,
                                    betas=tuple(s.alpha_betas),
                                    weight_decay=s.alpha_weight_decay)
        self.tau = TemperatureSchedule(s.tau.start, s.tau.end, s.tau.steps or s.alpha_steps,
                                       s.tau.kind)
        self.base_flops = float(self.model.cost.fixed)
        self.step = 0

    def state_dict(self) -> dict:
        """alpha, its optimiser, RNG and sampler states, the step and the config."""
        return {"step": self.step, "alpha": self.model.gates.state_dict(),
                "opt": self.opt.state_dict(), "rng": rng_state(),
                "sampler": self.sampler.state_dict(), "config": self.cfg.to_dict()}

    def try_resume(self) -> bool:
        """Load ``search.pt`` if present (an unreadable one is moved aside).

        Raises:
            UsageError: the checkpoint was written with another config.
        """
        st = dist.broadcast(load_checkpoint(self.ckpt_path) if dist.is_main() else None)
        if st is None:
            return False
        if st.get("config") != self.cfg.to_dict():
            raise UsageError(f"{self.ckpt_path}: checkpoint was written with a different config; "
                             "use another --out or --force")
        self.model.gates.load_state_dict(st["alpha"])
        self.opt.load_state_dict(st["opt"])
        set_rng_state(st["rng"])
        self.sampler.load_state_dict(st["sampler"])
        self.step = int(st["step"])
        truncate_jsonl(self.log_path, self.step)
        return True

    def train_step(self) -> dict[str, Any]:
        """One alpha step; returns the logged values.

        Raises:
            DivergedError: the loss is NaN or infinite.
        """
        s = self.cfg.search
        tau = self.tau(self.step)
        self.model.set_tau(tau)
        self.model.net.eval()
        lq, hr = self.batch(self.sampler)
        _, dec = self.model.sample(tau, all_candidates=True)
        with self.autocast():
            out = self.model(lq, dec)
            l1 = F.l1_loss(out.float(), hr)
        e_flops = self.model.expected_flops()
        loss = alpha_loss(l1, e_flops, s.penalty, self.base_flops)
        if not dist.all_true(bool(torch.isfinite(loss))):
            raise DivergedError(f"alpha step {self.step}: loss is {loss.item()}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(self.model.arch_parameters())
        self.opt.step()
        self.step += 1
        return {"phase": "alpha", "step": self.step, "l1": dist.mean_over_ranks(float(l1.detach())),
                "loss": dist.mean_over_ranks(float(loss.detach())),
                "e_gflops": float(e_flops.detach()) / 1e9, "tau": tau}

    def derive(self) -> tuple[dict[str, Any], list[dict]]:
        """The derived architecture and the rerank records
        (:func:`nas.engine.rerank.derive_for_search`)."""
        return derive_for_search(self.cfg, self.model, self.splits, self.batch_size, self.device)

    def run(self, stop_after: int | None = None, on_step: Callable[[dict], None] | None = None,
            seconds_before: float = 0.0) -> SearchResult | None:
        """Learn alpha (or resume) to ``alpha_steps``, then derive and export.

        Args:
            stop_after: stop once this many alpha steps are done, without finishing.
            on_step: called with every step's row.
            seconds_before: wall time already spent (phase 1), for ``result.json``.

        Returns:
            The :class:`SearchResult` (without scores), or ``None`` when stopped early.
        """
        s = self.cfg.search
        main = dist.is_main()
        if main:
            ensure_dir(self.out, "run folder")
        t0 = time.perf_counter()
        if not self.try_resume():
            torch.manual_seed(self.cfg.seed + 1)
            self.model.gates.reset_parameters()
            if main:
                atomic_write_text(self.out / "config.yaml", dump_config(self.cfg))
                if self.log_path.exists():
                    self.log_path.unlink()
        bar = tqdm(total=s.alpha_steps, initial=self.step, desc="alpha", unit="step",
                   disable=not (self.progress and main), dynamic_ncols=True, leave=False)
        try:
            with RunLog(self.log_path, self.out / "tb" if s.tensorboard else None,
                        "search.tensorboard") as logf:
                while self.step < s.alpha_steps:
                    row = self.train_step()
                    bar.update(1)
                    bar.set_postfix(l1=f"{row['l1']:.4f}", gflops=f"{row['e_gflops']:.2f}",
                                    tau=f"{row['tau']:.2f}")
                    if self.step % s.log_every == 0 or self.step == s.alpha_steps:
                        row["probs"] = self.model.probs_dict()
                        logf.write(row)
                    if on_step is not None:
                        on_step(row)
                    if (self.step % s.checkpoint_every == 0 or self.step == s.alpha_steps) and main:
                        atomic_torch_save(self.ckpt_path, self.state_dict())
                    if stop_after is not None and self.step >= stop_after:
                        return None
        finally:
            bar.close()
        res = self.finish(seconds_before + time.perf_counter() - t0) if main else None
        return dist.broadcast(res)

    def finish(self, seconds: float) -> SearchResult:
        """Derive and export (:func:`nas.engine.export.export_result`; rank 0)."""
        arch, reranked = self.derive()
        fixed = self.model.fixed_network(arch, inherit=True)
        s = self.cfg.search
        provenance = {"run": str(self.out), "supernet": str(self.weights), "seed": self.cfg.seed,
                      "supernet_steps": s.supernet_steps, "alpha_steps": self.step,
                      "tau": self.tau(self.step), "lambda": s.penalty.lam,
                      "penalty": s.penalty.kind, "target_gflops": s.penalty.target_gflops,
                      **({"rerank": reranked} if reranked else {}),
                      **self.provenance}
        return export_result(fixed, arch, task=self.task, space_cfg=self.cfg.space,
                             cost=self.model.cost, probs=self.model.probs_dict(), out_dir=self.out,
                             provenance=provenance, steps=s.supernet_steps + self.step,
                             seconds=seconds)


class SupernetSearch:
    """Both phases for one config: train (or reuse) the supernet, learn alpha, derive, export.

    Args:
        cfg: the run config.
        out_dir: the run folder.
        device: torch device.
        progress: show tqdm bars.
        provenance: extra ArchSpec provenance fields (study, trial, ...).
        supernet_dir: where the supernet lives (shared by the trials of a study; default
            ``<out_dir>/supernet``). Workers on one machine take turns through a lock file.
    """

    def __init__(self, cfg: Config, out_dir: str | Path, device: torch.device | str = "cpu",
                 progress: bool = True, provenance: dict | None = None,
                 supernet_dir: str | Path | None = None) -> None:
        check_search(cfg.search)
        self.cfg = cfg
        self.out = Path(out_dir)
        self.device = device
        self.progress = progress
        self.provenance = provenance
        self.supernet_dir = Path(supernet_dir) if supernet_dir else self.out / "supernet"

    def run(self, stop_after: int | None = None,
            on_step: Callable[[dict], None] | None = None) -> SearchResult | None:
        """Run (or resume) both phases.

        Args:
            stop_after: stop after this many steps of both phases together (tests of resume).
            on_step: called with every step's row (``phase``, ``step``, ...).

        Returns:
            The :class:`SearchResult` (scores not included), or ``None`` when stopped early.

        Raises:
            DivergedError: a NaN or infinite loss.
            UsageError: a checkpoint of another config in the folder.
        """
        t0 = time.perf_counter()
        splits = load_splits(self.cfg)
        with _folder_lock(self.supernet_dir):
            trainer = SupernetTraining(self.cfg, self.supernet_dir, self.device, self.progress,
                                       splits)
            if not trainer.run(stop_after=stop_after, on_step=on_step):
                return None
            del trainer
        done = self.cfg.search.supernet_steps
        search = ArchitectureSearch(self.cfg, self.out, self.supernet_dir / "supernet.pt",
                                    self.device, self.progress, self.provenance, splits)
        left = None if stop_after is None else max(0, stop_after - done)
        if left == 0:
            return None
        return search.run(stop_after=left, on_step=on_step,
                          seconds_before=time.perf_counter() - t0)
