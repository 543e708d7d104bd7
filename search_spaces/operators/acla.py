"""Adaptive Cross-Layer Attention (ACLA), arXiv 2203.03619 (formulas: ``docs/operators.md``).

Each query pixel ``p`` of the query layer ``X`` (``B x C x H x W``) attends to ``K_l`` keys in each
earlier (reference) layer ``F_l``, ``l = 1..L``. Everything about the keys is predicted from the
query alone (Deformable-DETR style, as in the public ``CL_Attention``/``ACL_Attention`` code)::

    Δ      = Conv1x1_{C→2S}(X)                    S = Σ_l K_l slots; Δ_{l,k}(p) in pixels (x, y)
    A      = Conv1x1_{C→S}(X)                     one attention logit per slot
    M      = Conv1x1_{C→S}(X)                     one keep/drop logit per slot (adaptive only)
    V_l    = Conv1x1_{C→C}(F_l)                   one projection shared by all references
    S_lk(p)= Bilinear(V_l, p + Δ_{l,k}(p))        zero padding (as F.grid_sample)
    a(p)   = Softmax_{(l,k) kept}(A(p))           one softmax over all kept slots jointly
    Y      = X + Proj(Σ_{l,k} a_lk · S_lk)         Proj: zero-initialised 1x1 conv

Fixes relative to the released code (``docs/operators.md``): the offset of slot ``s`` is read from
channels ``2s, 2s+1`` (not ``s, s+1``); the softmax normalises over the key slots (not over
``W``); masked keys are *removed* from the softmax (``-inf`` logits) instead of being
down-weighted by a multiplicative mask on the logits; no tensor is created on the CPU in
``forward``.

Adaptive key selection: in training each slot of each query gets a hard keep/drop decision from a
binary Gumbel (logistic-noise) sample of ``M`` (``keep = M + L > 0``, ``L ~ Logistic(0, 1)``),
with a straight-through gradient; in eval the decision is the deterministic ``M > 0``. The slot
with the highest score is always kept so every query has at least one key.

Supernet weight sharing: slot ``(l, k)`` lives at index ``s = Σ_{j<l} K_j + k`` of every
per-slot conv (rows ``2s, 2s+1`` of ``conv_offset``, row ``s`` of ``conv_logit``/``conv_mask``).
``forward(..., active_keys=[k_1, ..., k_L])`` uses only the first ``k_l`` slots of reference
``l`` (0 skips the reference), and :meth:`ACLA.sliced` / :meth:`ACLA.sliced_state_dict` build the
equivalent stand-alone module.

Implementation: one 1x1 convolution gives every slot's offsets, logit and keep logit. On the CPU
a fused C++ kernel compiled on first use (:func:`search_spaces.operators.acla_fused.attend`)
then takes the keep decision, the softmax over the kept slots and the sampling with the weighted
sum in one call, and :meth:`ACLA.forward` runs the whole module there as one autograd function
(:func:`search_spaces.operators.acla_fused.block`: the 1x1 convolutions as batched matmuls on
the layouts around the kernel); elsewhere (CUDA, or no C++ compiler) those are PyTorch operators and the
sampling a sparse gather-and-reduce (:mod:`search_spaces.operators.acla_sampling`). Both sample
only the kept (query, slot) pairs whose bilinear footprint overlaps the map. ``ACLA.sampler``
(class or instance attribute: ``"auto"``, ``"fused"``, ``"sparse"``, ``"grid_sample"``) picks a
path; ``"grid_sample"`` is the first ``F.grid_sample`` + ``bmm`` implementation, which samples
every slot. All compute the same function and count the same FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.operators.acla_fused import attend as fused_attend
from search_spaces.operators.acla_fused import block as fused_block
from search_spaces.operators.acla_fused import fused_available
from search_spaces.operators.acla_sampling import bilinear_gather, bordered, corner_plan
from search_spaces.operators.base import (
    OPERATORS,
    AttentionOp,
    batch_rand_like,
    compute_dtype,
    require_int,
)

#: values of :attr:`ACLA.sampler`.
SAMPLERS = ("auto", "fused", "sparse", "grid_sample")
#: default number of key slots per reference layer (hard-coded ``key_num`` of the public code).
DEFAULT_KEYS = 9
#: initial bias of the keep/drop logits: ``sigmoid(2) ≈ 0.88`` of the slots are kept at first.
MASK_BIAS_INIT = 2.0
#: clamp (in log space) of the relative weight of a dropped key in the straight-through gradient.
ST_LOG_CLAMP = 10.0


def slot_grid(num_slots: int) -> list[tuple[int, int]]:
    """Initial pixel offsets ``(dx, dy)`` of the first ``num_slots`` key slots.

    Integer points around the query ordered by Chebyshev ring, then Euclidean distance, then
    angle: the centre, its 4 neighbours, the 4 diagonals (so 9 slots = the 3x3 neighbourhood),
    then ring 2, ... The first ``k`` entries do not depend on ``num_slots``, so a module with
    ``k`` slots starts exactly like the first ``k`` slots of a larger one.

    Args:
        num_slots: how many offsets to return (>= 0).

    Returns:
        A list of ``num_slots`` ``(dx, dy)`` integer tuples, in pixels.

    Raises:
        ValueError: ``num_slots`` is negative.
    """
    require_int("num_slots", num_slots, 0)
    radius = 0
    while (2 * radius + 1) ** 2 < num_slots:
        radius += 1
    points = [(dx, dy) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    points.sort(
        key=lambda p: (max(abs(p[0]), abs(p[1])), p[0] ** 2 + p[1] ** 2,
                       math.atan2(p[1], p[0]) % (2 * math.pi))
    )
    return points[:num_slots]


def _check_keys(keys: Any, num_refs: int, name: str, minimum: int) -> tuple[int, ...]:
    """Normalise a key-count argument to one int per reference layer.

    ``None`` means :data:`DEFAULT_KEYS` per reference, an int means that count per reference.

    Raises:
        ValueError: wrong length, or a count that is not an int ``>= minimum`` (names ``name``).
    """
    if keys is None:
        keys = [DEFAULT_KEYS] * num_refs
    elif isinstance(keys, int) and not isinstance(keys, bool):
        keys = [keys] * num_refs
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        raise ValueError(f"{name} must be a sequence of ints (one per reference), got {keys!r}")
    if len(keys) != num_refs:
        raise ValueError(f"{name} must have one entry per reference ({num_refs}), got {keys!r}")
    for i, k in enumerate(keys):
        require_int(f"{name}[{i}]", k, minimum)
    return tuple(int(k) for k in keys)


class ACLAOutput(NamedTuple):
    """What :meth:`ACLA.attend` returns.

    Attributes:
        agg: ``(B, C, H, W)`` attention result before the output projection, or ``None`` when no
            slot is active.
        weights: ``(B, S, H, W)`` attention weights over the active slots (dropped slots exactly
            0, kept slots sum to 1), ``S = Σ active_keys``; ``None`` when no slot is active.
        keep: ``(B, S, H, W)`` bool keep mask, or ``None`` when every slot is kept (non-adaptive
            module without ``key_mask``).
    """

    agg: torch.Tensor | None
    weights: torch.Tensor | None
    keep: torch.Tensor | None


class _MaskedSoftmaxST(torch.autograd.Function):
    """Softmax over the kept slots (dim 1) with the straight-through gradient of the keep mask.

    Forward: ``w = softmax(logits masked to -inf where not kept)``; dropped slots weigh exactly 0.
    Backward, with ``G = dL/dw`` and ``t = G - Σ_i w_i G_i``:

    * ``dL/dlogits = w · t`` (the masked softmax's own gradient);
    * ``dL/dscore_s = r_s · t_s · sigmoid'(score_s / tau) / tau`` for kept *and* dropped ``s``,
      ``r_s = exp(min(logit_s - logsumexp_kept(logits), ST_LOG_CLAMP))``: the gradient at
      ``m = keep`` of the renormalised relaxation ``w_i = m_i e_i / Σ_j m_j e_j`` with
      ``m = sigmoid(score / tau)`` (straight-through).
    """

    @staticmethod
    def forward(ctx, logits, keep, score, tau):
        masked = logits.masked_fill(~keep, float("-inf"))
        w = torch.softmax(masked, dim=1)
        ctx.save_for_backward(logits, masked, w, score)
        ctx.tau = tau
        return w

    @staticmethod
    def backward(ctx, grad):
        logits, masked, w, score = ctx.saved_tensors
        t = grad - (grad * w).sum(dim=1, keepdim=True)
        g_logits = w * t if ctx.needs_input_grad[0] else None
        g_score = None
        if ctx.needs_input_grad[2]:
            lse = torch.logsumexp(masked, dim=1, keepdim=True)
            r = torch.exp((logits - lse).clamp_(max=ST_LOG_CLAMP))
            sig = torch.sigmoid(score / ctx.tau)
            g_score = r.mul_(t).mul_(sig * (1.0 - sig)).div_(ctx.tau)
        return g_logits, None, g_score, None


@OPERATORS.register("acla")
class ACLA(AttentionOp):
    """Adaptive Cross-Layer Attention (arXiv 2203.03619 §3; public ``CLA``/``ACL_Attention``).

    See the module docstring for the equations.

    Sampling convention: offsets are in pixels of the ``H x W`` map, ``(dx, dy)`` = (width,
    height) from channels ``(2s, 2s+1)``; the sample point of query pixel ``(i, j)`` is
    ``(j + dx, i + dy)`` in pixel-centre coordinates, converted to ``F.grid_sample`` coordinates
    with ``align_corners=False`` (``g = (2 * px + 1) / W - 1``), ``mode="bilinear"``,
    ``padding_mode="zeros"`` (points outside the map read zeros, like the public code's
    ``deform_conv2d``). Offsets are initialised to the fixed pattern :func:`slot_grid` (through
    the bias of ``conv_offset``, whose weights start at zero), so slots start at distinct
    positions.

    Args:
        channels: C, channels of the query and of every reference.
        num_refs: L >= 1, number of reference layers ``forward`` receives.
        keys: K_l, key slots per reference: a sequence of ``num_refs`` ints >= 1, an int (the
            same for every reference) or ``None`` (9 each, as in the public code).
        adaptive: learn an input-dependent keep/drop mask over the slots (ACLA); ``False`` keeps
            every slot (CLA).
        tau: temperature of the binary Gumbel relaxation used for the straight-through gradient
            (> 0; the hard decision itself does not depend on it). Can be reassigned (annealed).
        dilation: spacing of the initial slot pattern in pixels (int >= 1): slot ``s`` starts at
            ``dilation * slot_grid(K_l)[s]``, so 9 keys start on a dilated 3x3 grid and reach
            ``dilation`` pixels before any offset is learned (1: the public code's 3x3
            neighbourhood). Only the offsets' initial bias changes; the FLOPs do not.

    Raises:
        ValueError: ``num_refs < 1``, a bad ``keys`` entry (wrong length or a count < 1),
            ``tau <= 0`` or ``dilation < 1`` (the message names the argument).

    Shapes:
        ``forward(x (B, C, H, W), refs [L x (B, C, H, W)]) -> (B, C, H, W)``.
    """

    uses_refs = True
    #: sampling implementation, settable on the class or on an instance: ``"auto"`` (default:
    #: ``"fused"`` on the CPU when its kernel builds, else ``"sparse"``), ``"fused"`` (the C++
    #: CPU kernel of :mod:`search_spaces.operators.acla_fused`, keep decision and softmax
    #: included), ``"sparse"`` (sparse-matrix
    #: products, CPU and CUDA) or ``"grid_sample"`` (the first path, kept for comparisons).
    sampler = "auto"

    def __init__(
        self,
        channels: int,
        num_refs: int = 0,
        keys: Sequence[int] | int | None = None,
        adaptive: bool = True,
        tau: float = 1.0,
        dilation: int = 1,
    ) -> None:
        super().__init__(channels, num_refs)
        require_int("num_refs", num_refs, 1)
        self.keys = _check_keys(keys, num_refs, "keys", 1)
        self.adaptive = bool(adaptive)
        self.tau = tau
        self.dilation = require_int("dilation", dilation, 1)
        starts = [0]
        for k in self.keys:
            starts.append(starts[-1] + k)
        self._starts = tuple(starts[:-1])
        total = starts[-1]
        c = channels
        self.conv_offset = nn.Conv2d(c, 2 * total, 1)
        self.conv_logit = nn.Conv2d(c, total, 1)
        self.conv_mask = nn.Conv2d(c, total, 1) if self.adaptive else None
        self.conv_refer = nn.Conv2d(c, c, 1)
        self.proj = self.zero_proj(c)
        self._init_weights()

    # ----------------------------------------------------------------------------- set-up
    @property
    def tau(self) -> float:
        """Temperature of the straight-through Gumbel relaxation (> 0)."""
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"tau must be a positive number, got {value!r}")
        self._tau = float(value)

    def set_temperature(self, tau: float) -> None:
        """Anneal the keep/drop relaxation's temperature (see :attr:`tau`).

        Raises:
            ValueError: ``tau <= 0``.
        """
        self.tau = tau

    def _init_weights(self) -> None:
        nn.init.zeros_(self.conv_offset.weight)
        grid: list[float] = []
        for k in self.keys:
            for dx, dy in slot_grid(k):
                grid += [float(dx * self.dilation), float(dy * self.dilation)]
        with torch.no_grad():
            self.conv_offset.bias.copy_(torch.tensor(grid))
        if self.conv_mask is not None:
            nn.init.constant_(self.conv_mask.bias, MASK_BIAS_INIT)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_refs={self.num_refs}, keys={list(self.keys)}, "
                f"adaptive={self.adaptive}, tau={self.tau}, dilation={self.dilation}")

    # ----------------------------------------------------------------------------- slicing
    def check_active_keys(self, active_keys: Sequence[int] | None) -> tuple[int, ...]:
        """Validate ``active_keys`` (``None`` = all constructed slots).

        Args:
            active_keys: one int per reference, ``0 <= k_l <= keys[l]``.

        Returns:
            The active key counts as a tuple.

        Raises:
            ValueError: wrong length, or a count outside ``[0, keys[l]]`` (names ``active_keys``).
        """
        if active_keys is None:
            return self.keys
        active = _check_keys(active_keys, self.num_refs, "active_keys", 0)
        for i, (k, kmax) in enumerate(zip(active, self.keys)):
            if k > kmax:
                raise ValueError(
                    f"active_keys[{i}]={k} exceeds the {kmax} slots the module was built with"
                )
        return active

    def _slot_ranges(self, active: Sequence[int]) -> list[tuple[int, int]]:
        """``(start, stop)`` slot-index ranges of the active slots, one per used reference."""
        return [(s, s + k) for s, k in zip(self._starts, active) if k > 0]

    @staticmethod
    def select_refs(
        refs: Sequence[torch.Tensor], active_keys: Sequence[int]
    ) -> list[torch.Tensor]:
        """The references a sliced module receives: those with ``active_keys[l] > 0``.

        Args:
            refs: the ``L`` reference maps, each ``(B, C, H, W)``.
            active_keys: one key count per reference.

        Returns:
            The sub-list of ``refs`` in their original order.
        """
        return [r for r, k in zip(refs, active_keys) if k > 0]

    def sliced_config(self, active_keys: Sequence[int]) -> dict[str, Any]:
        """Constructor keywords of the stand-alone module equivalent to ``active_keys``.

        Returns:
            ``{"num_refs": L', "keys": [k for k in active_keys if k > 0], "adaptive", "tau",
            "dilation"}``.

        Raises:
            ValueError: bad ``active_keys`` or all zero (that choice is the identity: use skip).
        """
        active = self.check_active_keys(active_keys)
        kept = [k for k in active if k > 0]
        if not kept:
            raise ValueError("active_keys: all counts are 0, the module is the identity")
        return {"num_refs": len(kept), "keys": kept, "adaptive": self.adaptive, "tau": self.tau,
                "dilation": self.dilation}

    def sliced_state_dict(self, active_keys: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """State dict of ``ACLA(channels, **self.sliced_config(active_keys))`` holding the slots
        ``active_keys`` selects (the first ``k_l`` slots of each reference, detached copies).

        A module loaded with it, called with ``ACLA.select_refs(refs, active_keys)``, gives
        exactly ``self(x, refs, active_keys=active_keys)``.

        Raises:
            ValueError: bad ``active_keys`` or all zero.
        """
        active = self.check_active_keys(active_keys)
        self.sliced_config(active)
        ranges = self._slot_ranges(active)
        out: dict[str, torch.Tensor] = {}
        for name, t in self.state_dict().items():
            mod = name.split(".")[0]
            if mod == "conv_offset":
                t = torch.cat([t[2 * a:2 * b] for a, b in ranges])
            elif mod in ("conv_logit", "conv_mask"):
                t = torch.cat([t[a:b] for a, b in ranges])
            out[name] = t.detach().clone()
        return out

    def sliced(self, active_keys: Sequence[int]) -> ACLA:
        """A new stand-alone :class:`ACLA` equal to this one restricted to ``active_keys``
        (same device, dtype and train/eval mode; see :meth:`sliced_state_dict`).

        Raises:
            ValueError: bad ``active_keys`` or all zero.
        """
        new = ACLA(self.channels, **self.sliced_config(active_keys))
        p = self.proj.weight
        new.to(device=p.device, dtype=p.dtype)
        new.load_state_dict(self.sliced_state_dict(active_keys))
        new.train(self.training)
        return new

    # ----------------------------------------------------------------------------- forward
    def _query_conv(self, x: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
        """One 1x1 conv of the queries (the per-slot rows of ``conv_offset``, ``conv_logit`` and
        ``conv_mask`` concatenated): ``(B, 3S, H, W)`` - channels ``2s`` and ``2s + 1`` the
        offsets ``dx``, ``dy`` of slot ``s`` (``conv_offset``'s own order), then the ``S``
        logits - or ``(B, 4S, H, W)`` with the ``S`` keep logits last for an adaptive module."""
        weight, bias = self._query_weights(ranges)
        return F.conv2d(x, weight, bias)

    def _query_weights(self, ranges: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight ``(Qc, C, 1, 1)`` and bias ``(Qc,)`` of :meth:`_query_conv`. Adjacent ranges
        are merged, so with every slot active the weights are not sliced."""
        merged: list[list[int]] = []
        for a, b in ranges:
            if merged and merged[-1][1] == a:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        convs = [self.conv_offset, self.conv_logit] + ([self.conv_mask] if self.adaptive else [])
        ws, bs = [], []
        for conv, rows in zip(convs, (2, 1, 1)):
            if merged == [[0, sum(self.keys)]]:
                ws.append(conv.weight)
                bs.append(conv.bias)
            else:
                ws += [conv.weight[rows * a:rows * b] for a, b in merged]
                bs += [conv.bias[rows * a:rows * b] for a, b in merged]
        return torch.cat(ws), torch.cat(bs)

    def _query(self, x: torch.Tensor, ranges: list[tuple[int, int]]):
        """:meth:`_query_conv` as views ``(dx, dy, logits, mask_logits)``, each ``(B, S, H, W)``
        (``mask_logits`` is ``None`` for a non-adaptive module)."""
        q = self._query_conv(x, ranges)
        s = sum(b - a for a, b in ranges)
        mask_logits = q[:, 3 * s:4 * s] if self.adaptive else None
        return q[:, 0:2 * s:2], q[:, 1:2 * s:2], q[:, 2 * s:3 * s], mask_logits

    def _keep_mask(self, mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard keep mask ``(B, S, H, W)`` and the score it thresholds (mask logit + logistic
        noise in training, the mask logit in eval)."""
        m = mask_logits.to(compute_dtype(mask_logits.dtype))
        score = m + self._noise(m) if self.training else m
        with torch.no_grad():
            keep = score > 0
            keep |= score == score.amax(dim=1, keepdim=True)  # at least one key per query
        return keep, score

    @staticmethod
    def _noise(m: torch.Tensor) -> torch.Tensor:
        """Logistic noise (a difference of two Gumbels) of ``m``'s shape and dtype, for the
        training keep decision ``score = m + noise > 0``."""
        u = batch_rand_like(m).clamp_(torch.finfo(m.dtype).tiny, 1.0 - torch.finfo(m.dtype).eps)
        return torch.logit(u)

    @staticmethod
    def resolve_sampler(sampler: str, device: torch.device) -> str:
        """The path a :attr:`sampler` value runs on ``device``: ``auto`` is ``fused`` on the CPU
        when the kernel builds (:func:`~search_spaces.operators.acla_fused.fused_available`), else
        ``sparse``; other values are returned as they are.

        Raises:
            ValueError: an unknown value (the message lists :data:`SAMPLERS`).
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"ACLA.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if sampler == "auto":
            return "fused" if device.type == "cpu" and fused_available() else "sparse"
        return sampler

    def _values(self, refs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The value projection ``Conv_refer`` of each reference as a matmul on its channels-last
        view: ``(B, H, W, C)`` each."""
        wgt = self.conv_refer.weight.flatten(1)
        return [F.linear(r.permute(0, 2, 3, 1), wgt, self.conv_refer.bias) for r in refs]

    def _attend_fused(self, x: torch.Tensor, refs: Sequence[torch.Tensor], active: Sequence[int],
                      ranges: list[tuple[int, int]], key_mask: torch.Tensor | None) -> ACLAOutput:
        """:meth:`attend` on the fused CPU kernel's whole core
        (:func:`~search_spaces.operators.acla_fused.attend`): the query conv, the value
        projection and the logistic noise stay PyTorch operators; the keep decision, the masked
        softmax (with its straight-through gradient) and the sampling run in one kernel call."""
        q = self._query_conv(x, ranges)
        vals = self._values(self.select_refs(refs, active))
        values = vals[0].unsqueeze(0) if len(vals) == 1 else torch.stack(vals)
        noise, st = self._keep_inputs(x, sum(active), key_mask, q.requires_grad)
        out, weights, keep = fused_attend(q, values, [k for k in active if k > 0],
                                          adaptive=self.adaptive, noise=noise, key_mask=key_mask,
                                          tau=self.tau, st=st, st_log_clamp=ST_LOG_CLAMP)
        return ACLAOutput(out.permute(0, 3, 1, 2).to(x.dtype), weights, keep)

    def _keep_inputs(self, x: torch.Tensor, s: int, key_mask: torch.Tensor | None,
                     wants_grad: bool) -> tuple[torch.Tensor | None, bool]:
        """What the fused core's keep decision takes besides the query conv: the logistic noise
        ``(B, s, H, W)`` in ``compute_dtype`` (training with the learned mask, else ``None``) and
        whether the keep logits get the straight-through gradient (grad mode on and
        ``wants_grad``: the query conv's output needs a gradient)."""
        learned = self.adaptive and key_mask is None
        b, _, h, w = x.shape
        noise = None
        if learned and self.training:
            noise = self._noise(x.new_empty((b, s, h, w), dtype=compute_dtype(x.dtype)))
        return noise, learned and torch.is_grad_enabled() and wants_grad

    def _block_ok(self, x: torch.Tensor, refs: Sequence[torch.Tensor]) -> bool:
        """Whether :meth:`forward` runs as one :func:`~search_spaces.operators.acla_fused.block`:
        the fused path, with ``x``, the references and the weights in one dtype, float32 or
        float64, outside CPU autocast (else the composite of :meth:`attend` and the
        projection)."""
        if self.resolve_sampler(self.sampler, x.device) != "fused" or torch.is_autocast_enabled("cpu"):
            return False
        dt = x.dtype
        return dt in (torch.float32, torch.float64) and self.proj.weight.dtype == dt and all(
            r.dtype == dt for r in refs)

    def _forward_fused(self, x: torch.Tensor, refs: Sequence[torch.Tensor], active: Sequence[int],
                       ranges: list[tuple[int, int]], key_mask: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward` as one :func:`~search_spaces.operators.acla_fused.block` call (the
        query conv, value projection, core, output projection and residual; same function as
        :meth:`attend` plus the projection, without their layout copies)."""
        q_weight, q_bias = self._query_weights(ranges)
        noise, st = self._keep_inputs(x, sum(active), key_mask,
                                      x.requires_grad or q_weight.requires_grad)
        return fused_block(x, self.select_refs(refs, active), q_weight.flatten(1), q_bias,
                           self.conv_refer.weight.flatten(1), self.conv_refer.bias,
                           self.proj.weight.flatten(1), self.proj.bias, [k for k in active if k > 0],
                           adaptive=self.adaptive, noise=noise, key_mask=key_mask, tau=self.tau,
                           st=st, st_log_clamp=ST_LOG_CLAMP)

    def _aggregate(self, refs: Sequence[torch.Tensor], active: Sequence[int], dx: torch.Tensor,
                   dy: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor | None,
                   probe: bool) -> torch.Tensor:
        """``Σ_{l,k} a_lk · Bilinear(Conv_refer(F_l), p + Δ_lk)`` as ``(B, C, H, W)`` (a view of a
        channels-last result): the value projection as a matmul on the channels-last view of
        each used reference, then one gather-and-reduce over the kept (query, slot) pairs whose
        footprint overlaps the map - :func:`bilinear_gather` on zero-bordered maps (the sparse
        path) - or the ``grid_sample`` path, per :attr:`sampler` (``probe``: weight gradient of
        dropped pairs, for the straight-through estimator). The fused path does not come here
        (:meth:`_attend_fused`).

        Raises:
            ValueError: an unknown :attr:`sampler`."""
        if self.resolve_sampler(self.sampler, dx.device) == "grid_sample":
            return self._aggregate_grid_sample(refs, active, dx, dy, weights)
        used = [(r, k) for r, k in zip(refs, active) if k > 0]
        vals = self._values([r for r, _ in used])
        values = bordered(vals, compute_dtype(vals[0].dtype))

        def slot_last(t: torch.Tensor) -> torch.Tensor:  # (B, S, H, W) -> (B, H, W, S) copy
            return t.permute(0, 2, 3, 1).contiguous()

        base, fx, fy, inside = corner_plan(slot_last(dx), slot_last(dy), [k for _, k in used],
                                           weights.dtype)
        sampled = inside if keep is None else slot_last(keep) & inside
        out = bilinear_gather(values, base, fx, fy, slot_last(weights), sampled, probe)
        return out.permute(0, 3, 1, 2)

    def _aggregate_grid_sample(self, refs: Sequence[torch.Tensor], active: Sequence[int],
                               dx: torch.Tensor, dy: torch.Tensor,
                               weights: torch.Tensor) -> torch.Tensor:
        """The previous implementation (``ACLA.sampler = "grid_sample"``, kept for comparisons,
        e.g. on CUDA): per used reference one 1x1 projection, one ``F.grid_sample`` with a
        ``(B, H·W, k_l, 2)`` grid giving pixel-major samples ``(B, C, H·W, k_l)``, and one batched
        matrix-vector product with the slot weights (``bmm``, batch ``B·H·W``); the references
        are summed. Every slot is sampled, kept or not. Returns ``(B, C, H, W)``."""
        b, s, h, w = weights.shape
        gdt = compute_dtype(dx.dtype)
        cols = torch.arange(w, device=dx.device, dtype=gdt)
        rows = torch.arange(h, device=dx.device, dtype=gdt)[:, None]
        gx = (2.0 * (dx.to(gdt) + cols) + 1.0) / w - 1.0  # align_corners=False
        gy = (2.0 * (dy.to(gdt) + rows) + 1.0) / h - 1.0
        grid = torch.stack([gx, gy], dim=-1).view(b, s, h * w, 2).transpose(1, 2)  # (B, N, S, 2)
        wp = weights.to(gdt).flatten(2).transpose(1, 2).unsqueeze(-1)  # (B, N, S, 1)
        agg = None
        start = 0
        for ref, k in zip(refs, active):
            if k == 0:
                continue
            v = self.conv_refer(ref).to(gdt)
            g = grid[:, :, start:start + k].contiguous()
            samples = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)                  # (B, C, N, k)
            part = torch.matmul(samples.transpose(1, 2), wp[:, :, start:start + k])  # bmm
            agg = part if agg is None else agg + part                     # (B, N, C, 1)
            start += k
        return agg.squeeze(-1).transpose(1, 2).reshape(b, -1, h, w)

    def _checked(self, x: torch.Tensor, refs: Sequence[torch.Tensor], active_keys: Sequence[int] | None,
                 key_mask: torch.Tensor | None) -> tuple[list[torch.Tensor], tuple[int, ...], list]:
        """The checks of :meth:`attend` (its ``ValueError`` s); returns ``(refs, active, ranges)``."""
        refs = list(refs)
        self.check_inputs(x, refs)
        active = self.check_active_keys(active_keys)
        ranges = self._slot_ranges(active)
        b, _, h, w = x.shape
        s = sum(active)
        if key_mask is not None and ranges:
            if key_mask.shape != (b, s, h, w) or key_mask.dtype != torch.bool:
                raise ValueError(f"key_mask must be a bool tensor of shape {(b, s, h, w)}, got "
                                 f"{key_mask.dtype} {tuple(key_mask.shape)}")
            if not bool(key_mask.any(dim=1).all()):
                raise ValueError("key_mask must keep at least one slot for every query")
        return refs, active, ranges

    def attend(
        self,
        x: torch.Tensor,
        refs: Sequence[torch.Tensor] = (),
        active_keys: Sequence[int] | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> ACLAOutput:
        """The attention result and weights, without the output projection.

        Args:
            x: ``(B, C, H, W)`` queries.
            refs: ``num_refs`` reference maps, each ``(B, C, H, W)``.
            active_keys: use only the first ``k_l`` slots of reference ``l`` (``None`` = all).
            key_mask: optional fixed bool keep mask ``(B, S, H, W)`` over the active slots
                (``S = Σ active_keys``) that replaces the learned one (tests, analysis); every
                query must keep at least one slot.

        Returns:
            :class:`ACLAOutput` ``(agg, weights, keep)``.

        Raises:
            ValueError: bad ``x``/``refs`` shapes or count, bad ``active_keys``, or a ``key_mask``
                of the wrong shape/dtype or with a query that keeps no slot; an unknown
                :attr:`sampler`.
            RuntimeError: :attr:`sampler` ``"fused"`` off the CPU or without the kernel built.
        """
        refs, active, ranges = self._checked(x, refs, active_keys, key_mask)
        if not ranges:
            return ACLAOutput(None, None, None)
        return self._attend(x, refs, active, ranges, key_mask)

    def _attend(self, x: torch.Tensor, refs: list[torch.Tensor], active: tuple[int, ...],
                ranges: list, key_mask: torch.Tensor | None) -> ACLAOutput:
        """:meth:`attend` after its checks (``ranges`` not empty)."""
        if self.resolve_sampler(self.sampler, x.device) == "fused":
            return self._attend_fused(x, refs, active, ranges, key_mask)
        dx, dy, logits, mask_logits = self._query(x, ranges)
        score = None
        if key_mask is not None:
            keep = key_mask
        elif mask_logits is not None:
            keep, score = self._keep_mask(mask_logits)
        else:
            keep = None
        logits = logits.to(compute_dtype(logits.dtype))
        probe = score is not None and torch.is_grad_enabled() and score.requires_grad
        if probe:
            weights = _MaskedSoftmaxST.apply(logits, keep, score, self.tau)
        else:
            masked = logits if keep is None else logits.masked_fill(~keep, float("-inf"))
            weights = torch.softmax(masked, dim=1)  # one softmax over all kept (l, k)
        agg = self._aggregate(refs, active, dx, dy, weights, keep, probe)
        return ACLAOutput(agg.to(x.dtype), weights, keep)

    def forward(
        self,
        x: torch.Tensor,
        refs: Sequence[torch.Tensor] = (),
        ctx: dict | None = None,
        active_keys: Sequence[int] | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x + Proj(attention)``; see :meth:`attend` for the arguments and errors.

        Args:
            x: ``(B, C, H, W)`` queries.
            refs: ``num_refs`` reference maps, each ``(B, C, H, W)``.
            ctx: unused (accepted for the common operator contract).
            active_keys: first-``k`` slot selection per reference (0 skips a reference; all 0
                returns ``x`` unchanged at zero cost).
            key_mask: optional fixed keep mask, see :meth:`attend`.

        Returns:
            ``(B, C, H, W)``.
        """
        refs, active, ranges = self._checked(x, refs, active_keys, key_mask)
        if not ranges:
            return x
        if self._block_ok(x, refs):
            return self._forward_fused(x, refs, active, ranges, key_mask)
        agg = self._attend(x, refs, active, ranges, key_mask).agg
        # Proj as a matmul on the channels-last view (agg is stored channels-last): no layout
        # copy of agg in the forward nor of its gradient in the backward
        y = F.linear(agg.permute(0, 2, 3, 1), self.proj.weight.flatten(1), self.proj.bias)
        return x + y.permute(0, 3, 1, 2)

    # ----------------------------------------------------------------------------- cost
    @classmethod
    def flops(cls, channels: int, height: int, width: int, config: dict[str, Any]) -> int:
        """Forward FLOPs (= 2 x MACs) per image, per the rule of :mod:`nas.engine.flops`.

        With ``N = H·W``, ``S = Σ_l k_l`` active slots, ``L'`` references with ``k_l > 0`` and
        ``a = 1`` if adaptive else 0::

            query convs   2·N·C·(2S + S + a·S)      offsets, logits, mask logits
            refer conv    2·N·C²·L'
            grid_sample   8·N·C·S
            softmax       3·N·S
            weighted sum  2·N·C·S                  (bmm)
            projection    2·N·C²

        and 0 when ``S = 0`` (the module returns ``x``). The sampling and weighted-sum terms are
        charged for every active slot on both paths: on the sparse path (default) they are the
        count registered for ``acla_nas::bilinear_gather``, which samples only the kept slots
        inside the map; on the ``grid_sample`` path they are ``grid_sampler_2d`` and ``bmm``.

        Args:
            channels: C.
            height, width: H, W of the feature map.
            config: constructor keywords; ``keys`` may contain 0 (reference skipped, as with
                ``active_keys``); ``keys=None`` means 9 per reference of ``config["num_refs"]``.

        Raises:
            ValueError: bad ``keys``/``num_refs``/sizes.
        """
        c = require_int("channels", channels)
        n = require_int("height", height) * require_int("width", width)
        keys = config.get("keys")
        if keys is None or isinstance(keys, int):
            num_refs = require_int("num_refs", config.get("num_refs", 1), 1)
        else:
            num_refs = len(keys)
        active = _check_keys(keys, num_refs, "keys", 0)
        s = sum(active)
        if s == 0:
            return 0
        used = sum(1 for k in active if k > 0)
        a = 1 if config.get("adaptive", True) else 0
        return (2 * n * c * (3 + a) * s + 2 * n * c * c * used + 8 * n * c * s + 3 * n * s
                + 2 * n * c * s + 2 * n * c * c)
