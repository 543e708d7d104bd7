"""The search objective: the alpha loss ``L1 + penalty(E[F])`` and a batch PSNR indicator.

Penalties (``docs/design.md``, "Gates and the objective"), with E[F] the expected FLOPs of the supernet
(:meth:`nas.engine.flops.CostModel.expected`), F_base the backbone alone and F_target the
configured budget (FLOPs = 2 x MACs, per image, at the reference input size):

* ``linear``: ``L1 + lambda * E[F] / F_base``
* ``hinge``:  ``L1 + lambda * max(0, E[F] / F_target - 1)``
* ``log``:    ``L1 * (log E[F] / log F_target) ** beta`` (ProxylessNAS, Cai et al. 2019, Eq. 6)
* ``budget``: ``L1 + lambda * |E[F] / F_target - 1|`` (TuNAS absolute reward, Bender et al. 2020,
  Eq. 2, as a loss): pulls E[F] to the budget from both sides, so a study that samples targets
  across the space's FLOPs range spreads its trials over the FLOPs axis by construction.
"""

from __future__ import annotations

import math

import torch

from nas.config import PENALTY_KINDS, PenaltyConfig
from nas.engine import distributed as dist
from nas.errors import DivergedError, UsageError


def alpha_loss(l1: torch.Tensor, e_flops: torch.Tensor, cfg: PenaltyConfig,
               base_flops: float) -> torch.Tensor:
    """``L1 + penalty(E[F])`` (the formulas in the module docstring).

    Args:
        l1: scalar L1 loss.
        e_flops: scalar expected FLOPs (float64), differentiable in alpha.
        cfg: the penalty config (``target_gflops`` in GFLOPs, i.e. 1e9 FLOPs).
        base_flops: F_base, FLOPs of the backbone alone.

    Returns:
        The scalar loss, in ``l1``'s dtype.

    Raises:
        UsageError: unknown kind, or ``hinge``/``log``/``budget`` without ``target_gflops``.
    """
    if cfg.kind == "linear":
        return l1 + cfg.lam * (e_flops / base_flops).to(l1.dtype)
    if cfg.kind not in PENALTY_KINDS:
        raise UsageError(f"search.penalty.kind: one of {', '.join(PENALTY_KINDS)}, got {cfg.kind!r}")
    if not cfg.target_gflops or cfg.target_gflops <= 0:
        raise UsageError(f"search.penalty.target_gflops: required (> 0) for kind {cfg.kind!r}")
    target = cfg.target_gflops * 1e9
    if cfg.kind == "hinge":
        return l1 + cfg.lam * torch.clamp(e_flops / target - 1.0, min=0.0).to(l1.dtype)
    if cfg.kind == "budget":
        return l1 + cfg.lam * torch.abs(e_flops / target - 1.0).to(l1.dtype)
    ratio = torch.log(e_flops) / math.log(target)
    return l1 * ratio.to(l1.dtype) ** cfg.beta


def batch_psnr(out: torch.Tensor, hr: torch.Tensor) -> float:
    """Mean RGB PSNR (dB) of a batch ``(B, 3, H, W)`` in [0, 1] (a progress indicator, not the
    benchmark metric)."""
    mse = ((out.detach().float().clamp(0, 1) - hr.float()) ** 2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def l1_train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, lq: torch.Tensor,
                  hr: torch.Tensor, *, amp: bool = False, grad_clip: float = 0.0,
                  what: str = "training") -> tuple[torch.Tensor, torch.Tensor]:
    """One L1 step of a fixed network: forward (bf16 autocast on CUDA when ``amp``; the loss in
    float32), backward, gradients averaged over a ``torchrun`` group, optional gradient-norm
    clipping, optimiser step. Schedulers and weight averages are the caller's.

    Args:
        model: maps ``lq (B, 3, h, w)`` to ``(B, 3, H, W)``.
        opt: its optimiser.
        lq, hr: the batch (this rank's shard), on the model's device.
        amp: bf16 autocast (CUDA only).
        grad_clip: max global gradient norm (0: none).
        what: names the loop in the error.

    Returns:
        ``(l1, output)``: the detached loss and the output.

    Raises:
        DivergedError: the loss is NaN or infinite on any rank.
    """
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(lq)
    loss = torch.nn.functional.l1_loss(out.float(), hr)
    if not dist.all_true(bool(torch.isfinite(loss))):
        raise DivergedError(f"{what}: L1 is {float(loss.detach())}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_gradients(model.parameters())
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach(), out
