"""The bilevel supernet search: w-step on the train split, alpha-step on the val split.

First-order DARTS-style alternation (Liu et al. 2019) with straight-through Gumbel gates
(:mod:`nas.engine.gates`): each step draws an architecture, takes one weight step on a train batch
(L1 only), then - after ``warmup_steps`` during which alpha is frozen - one alpha step on a
val batch with ``L1 + penalty(E[F])``. tau is annealed per step.

Outputs in the run directory::

    log.jsonl        one line per ``log_every`` steps: step, loss, l1, psnr, e_gflops, tau, probs
    supernet.pt      checkpoint (weights, alpha, optimisers, schedulers, RNG states, samplers, step)
    arch.json        the derived ArchSpec (argmax), with exact cost and provenance
    result.json      validation PSNR of the derived network (inherited weights) and its GFLOPs

A killed run restarted with the same config resumes from ``supernet.pt``; its next step's loss
equals the uninterrupted run's on the same device (tested).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nas.config import Config, check_search, dump_config
from nas.engine.export import SearchResult, export_result
from nas.engine.gates import TemperatureSchedule
from nas.engine.objective import alpha_loss, batch_psnr
from nas.engine.supernet import Supernet
from nas.errors import DivergedError, UsageError
from nas.io import atomic_torch_save, atomic_write_text, load_checkpoint, truncate_jsonl
from nas.restoration.data import PatchSampler, make_pairs, split_names
from nas.restoration.task import Task
from nas.runtime import rng_state, set_rng_state

log = logging.getLogger("acla_nas.search")


class SupernetSearch:
    """One supernet search in a run directory (see the module docstring).

    Args:
        cfg: the run config.
        out_dir: run directory (created; an existing checkpoint there is resumed).
        device: torch device.
        progress: show a tqdm bar.
        provenance: extra fields for the ArchSpec's ``provenance`` block (study, trial, ...).
    """

    def __init__(self, cfg: Config, out_dir: str | Path, device: torch.device | str = "cpu",
                 progress: bool = True, provenance: dict | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.device = torch.device(device)
        self.progress = progress
        self.provenance = dict(provenance or {})
        self.task: Task = cfg.task
        s = cfg.search
        check_search(s)
        torch.manual_seed(cfg.seed)
        images = cfg.data.load()
        train_names, val_names = split_names(list(images), cfg.data.val_fraction, cfg.seed)
        self.val_names = val_names
        self.train_pairs = make_pairs({n: images[n] for n in train_names}, self.task, cfg.seed)
        self.val_pairs = make_pairs({n: images[n] for n in val_names}, self.task, cfg.seed)
        p = cfg.data.patch_size
        self.train_sampler = PatchSampler(self.train_pairs, self.task, p, seed=cfg.seed)
        self.val_sampler = PatchSampler(self.val_pairs, self.task, p, seed=cfg.seed + 1)
        lr_size = tuple(s.lr_size) if s.lr_size else None
        self.model = Supernet(cfg.space, self.task, lr_size).to(self.device)
        self.use_amp = s.amp and self.device.type == "cuda"
        if s.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt_w = torch.optim.Adam(self.model.weight_parameters(), lr=s.lr)
        self.sched_w = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_w, T_max=s.steps,
                                                                  eta_min=s.lr * 0.1)
        self.opt_a = torch.optim.Adam(self.model.arch_parameters(), lr=s.alpha_lr,
                                      betas=tuple(s.alpha_betas),
                                      weight_decay=s.alpha_weight_decay)
        self.tau = TemperatureSchedule(s.tau.start, s.tau.end, s.tau.steps or s.steps, s.tau.kind)
        self.base_flops = float(self.model.cost.fixed)
        self.step = 0
        self.ckpt_path = self.out / "supernet.pt"
        self.log_path = self.out / "log.jsonl"

    # -- checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything an exact resume needs: weights, alpha, optimisers, scheduler, RNG and sampler
        states, the step and the config.
        """
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "opt_w": self.opt_w.state_dict(),
            "sched_w": self.sched_w.state_dict(),
            "opt_a": self.opt_a.state_dict(),
            "rng": rng_state(),
            "train_sampler": self.train_sampler.state_dict(),
            "val_sampler": self.val_sampler.state_dict(),
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self) -> None:
        """Write :meth:`state_dict` to ``supernet.pt`` atomically."""
        atomic_torch_save(self.ckpt_path, self.state_dict())

    def try_resume(self) -> bool:
        """Load ``supernet.pt`` if present (an unreadable one is moved aside and the search starts
        over, see :func:`nas.io.load_checkpoint`).

        Returns:
            Whether a checkpoint was loaded.

        Raises:
            UsageError: the checkpoint belongs to another config.
        """
        state = load_checkpoint(self.ckpt_path, self.device)
        if state is None:
            return False
        if state.get("config") != self.cfg.to_dict():
            raise UsageError(f"{self.ckpt_path}: checkpoint was written with a different config; "
                             "use another --out or move it away")
        self.model.load_state_dict(state["model"])
        self.opt_w.load_state_dict(state["opt_w"])
        self.sched_w.load_state_dict(state["sched_w"])
        self.opt_a.load_state_dict(state["opt_a"])
        set_rng_state(state["rng"])
        self.train_sampler.load_state_dict(state["train_sampler"])
        self.val_sampler.load_state_dict(state["val_sampler"])
        self.step = int(state["step"])
        truncate_jsonl(self.log_path, self.step)
        return True

    # -- steps ---------------------------------------------------------------------------
    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.cfg.search.channels_last and self.device.type == "cuda":
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def train_step(self) -> dict[str, Any]:
        """One w-step and (after warm-up) one alpha-step. Returns the logged values."""
        s = self.cfg.search
        bs = self.cfg.data.batch_size
        tau = self.tau(self.step)
        self.model.set_tau(tau)
        self.model.train()
        # w-step: train split, L1 only; alpha gets no update here
        lq, hr = (self._to_device(t) for t in self.train_sampler.sample(bs))
        _, dec = self.model.sample(tau)
        with self._autocast():
            out = self.model(lq, dec)
            l1 = F.l1_loss(out.float(), hr)
        if not torch.isfinite(l1):
            raise DivergedError(f"step {self.step}: L1 is {l1.item()}")
        self.opt_w.zero_grad(set_to_none=True)
        self.opt_a.zero_grad(set_to_none=True)
        l1.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.weight_parameters(), s.grad_clip)
        self.opt_w.step()
        self.sched_w.step()
        row = {"step": self.step + 1, "l1": float(l1.detach()), "psnr": batch_psnr(out, hr), "tau": tau}
        # alpha-step: val split, L1 + FLOPs penalty
        e_flops = self.model.expected_flops()
        loss = l1
        if self.step >= s.warmup_steps and self.model.frozen_arch is None:
            lq, hr = (self._to_device(t) for t in self.val_sampler.sample(bs))
            _, dec = self.model.sample(tau)
            with self._autocast():
                out_v = self.model(lq, dec)
                l1_v = F.l1_loss(out_v.float(), hr)
            loss = alpha_loss(l1_v, e_flops, s.penalty, self.base_flops)
            if not torch.isfinite(loss):
                raise DivergedError(f"step {self.step}: alpha loss is {loss.item()}")
            self.opt_a.zero_grad(set_to_none=True)
            self.opt_w.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_a.step()
            row["l1_val"] = float(l1_v.detach())
        row["loss"] = float(loss.detach())
        row["e_gflops"] = float(e_flops.detach()) / 1e9
        self.step += 1
        return row

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop_after: int | None = None,
            on_step: Callable[[dict], None] | None = None) -> SearchResult | None:
        """Run (or resume) to ``search.steps``; then derive, score and export.

        Args:
            stop_after: stop once this many steps are done, without finishing (for tests of
                resume; a later ``run`` continues from the last checkpoint).
            on_step: callback receiving each logged row (e.g. a time budget check).

        Returns:
            The :class:`SearchResult`, or ``None`` when stopped early.

        Raises:
            DivergedError: NaN/inf loss.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        resumed = self.try_resume()
        if not resumed:
            atomic_write_text(self.out / "config.yaml", dump_config(self.cfg))
            if self.log_path.exists():
                self.log_path.unlink()
        s = self.cfg.search
        bar = tqdm(total=s.steps, initial=self.step, desc="search", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        logf = self.log_path.open("a")
        try:
            while self.step < s.steps:
                row = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.2f}",
                                gflops=f"{row['e_gflops']:.2f}", tau=f"{row['tau']:.2f}")
                if self.step % s.log_every == 0 or self.step == s.steps:
                    row["probs"] = self.model.probs_dict()
                    logf.write(json.dumps(row) + "\n")
                    logf.flush()
                if on_step is not None:
                    on_step(row)
                if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                    self.save_checkpoint()
                if stop_after is not None and self.step >= stop_after:
                    return None
        finally:
            logf.close()
            bar.close()
        return self.finish(time.perf_counter() - t0)

    # -- derive + score + export -----------------------------------------------------------
    def finish(self, seconds: float) -> SearchResult:
        """Derive the argmax architecture, score it with inherited weights and export it
        (:func:`nas.engine.export.export_result`)."""
        model = self.model
        arch = model.derive()
        fixed = model.fixed_network(arch, inherit=True)
        s = self.cfg.search
        provenance = {"run": str(self.out), "seed": self.cfg.seed, "steps": self.step,
                      "tau": self.tau(self.step), "lambda": s.penalty.lam,
                      "penalty": s.penalty.kind, **self.provenance}
        return export_result(
            fixed, arch, task=self.task, space_cfg=self.cfg.space, cost=model.cost,
            probs=model.probs_dict(), val_pairs=self.val_pairs[: s.val_images],
            crop=max(self.cfg.data.patch_size, 96), to_device=self._to_device, out_dir=self.out,
            provenance=provenance, steps=self.step, seconds=seconds)
