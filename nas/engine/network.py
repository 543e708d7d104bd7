"""Backbone + attention at insertion points: one class for the supernet and the fixed network.

:class:`AttentionNet` holds a backbone and, per insertion point, an :class:`InsertionPoint` with
its candidate operators. The supernet holds every candidate (ACLA built with the largest key
count per reference, smaller counts use its first slots); the fixed network derived from an
ArchSpec holds only the chosen operator, built with exactly the chosen key counts - by the same
constructors (:data:`search_spaces.operators.OPERATORS`), so the two cannot drift.

A forward pass takes per-point :class:`Decision` s: which operator, which key counts, and an
optional gate weight (the straight-through Gumbel sample, value 1 in the forward pass) that
scales what the point adds to its input, ``feat + w * (op(feat) - feat)``, so the architecture
logits receive a gradient (GDAS estimator, see :mod:`nas.engine.gates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from backbones import EDSR
from backbones import build_backbone as _build_backbone_block
from nas.restoration.task import Task
from search_spaces.operators import OPERATORS
from search_spaces.space import SKIP, PointSpec, SearchSpace, SpaceConfig


@dataclass
class Decision:
    """What one insertion point computes in a forward pass.

    Attributes:
        op: operator name or ``"skip"``.
        active_keys: key counts per reference (ACLA in the supernet), ``None`` = as built.
        weight: scalar tensor scaling the point's residual ``op(feat) - feat`` (straight-through
            gate product, value 1); ``None`` for a plain forward.
        others: candidates that are computed only for their gradient: each adds
            ``w * (op(feat) - feat)`` with a straight-through weight ``w`` whose *value* is 0, so
            the forward value is unchanged while the gate logits receive ``<dL/dout, op(feat) -
            feat>`` for the candidates that were not drawn (see :mod:`nas.engine.gates`).
    """

    op: str = SKIP
    active_keys: tuple[int, ...] | None = None
    weight: torch.Tensor | None = None
    others: tuple["Decision", ...] = ()


class InsertionPoint(nn.Module):
    """Candidate operators at one insertion point.

    Args:
        refs: tap labels this point reads (``"head"``, ``"b00"``, ...), in order.
        channels: C.
        op_kwargs: constructor keywords per candidate operator (``skip`` has no module).
    """

    def __init__(self, refs: Sequence[str], channels: int, op_kwargs: Mapping[str, dict]) -> None:
        super().__init__()
        self.refs = tuple(refs)
        self.ops = nn.ModuleDict(
            {op: OPERATORS.get(op)(channels, **kw) for op, kw in op_kwargs.items() if op != SKIP}
        )

    def forward(self, feat: torch.Tensor, taps: Mapping[str, torch.Tensor], d: Decision,
                ctx: dict) -> torch.Tensor:
        """``feat (B, C, H, W) -> (B, C, H, W)`` under decision ``d`` (and its zero-valued
        ``others``)."""
        out = self._run(feat, taps, d, ctx)
        if d.weight is not None:
            # residual form: the gate scales what the point adds to its input (its value is 1);
            # lerp = feat + w * (out - feat) in one op, without a saved difference tensor
            out = torch.lerp(feat, out, d.weight.to(out.dtype))
        for o in d.others:
            # value exactly 0 (w is 0 in value): only the gate gradient of the other candidate
            out = out + o.weight.to(out.dtype) * (self._run(feat, taps, o, ctx) - feat)
        return out

    def _run(self, feat: torch.Tensor, taps: Mapping[str, torch.Tensor], d: Decision,
             ctx: dict) -> torch.Tensor:
        if d.op == SKIP:
            return feat
        mod = self.ops[d.op]
        refs = [taps[r] for r in self.refs] if mod.uses_refs else []
        if d.active_keys is not None:
            return mod(feat, refs, ctx=ctx, active_keys=d.active_keys)
        return mod(feat, refs, ctx=ctx)


class AttentionNet(nn.Module):
    """A backbone with attention hooked in at its insertion points.

    Args:
        backbone: an :class:`backbones.EDSR`.
        points: ``{point name: InsertionPoint}``.
        arch: the fixed architecture (``{label: value}``) used when ``forward`` gets no decisions.
        space: the search space the labels refer to.

    Shapes:
        ``forward``: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, sH, sW)``.
    """

    def __init__(self, backbone: EDSR, points: Mapping[str, InsertionPoint],
                 space: SearchSpace, arch: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.points = nn.ModuleDict(dict(points))
        self.space = space
        self.arch = dict(arch) if arch is not None else None

    def decisions_for(self, arch: Mapping[str, Any]) -> dict[str, Decision]:
        """Decisions that run architecture ``arch`` in this (super)network: per point its
        operator and, for operators reading references, the key counts (the first ``k`` slots of
        the shared module); no gate weights."""
        out = {}
        for p in self.space:
            op = arch[p.op_label()]
            keys = self.space.active_keys(arch, p.name) if self.space.uses_refs(op) else None
            out[p.name] = Decision(op, keys)
        return out

    def forward(self, x: torch.Tensor,
                decisions: Mapping[str, Decision] | None = None) -> torch.Tensor:
        """Restore ``x`` under per-point decisions.

        Args:
            x: ``(B, 3, H, W)`` in [0, 1].
            decisions: ``{point: Decision}``; ``None`` runs the fixed architecture.

        Returns:
            ``(B, 3, sH, sW)`` (not clamped).

        Raises:
            ValueError: no decisions for a supernet (no fixed architecture).
        """
        if decisions is None:
            if self.arch is None:
                raise ValueError("decisions: required for a supernet (no fixed architecture)")
            decisions = self._fixed_decisions()
        ctx: dict = {}

        def insert(label, feat, taps):
            d = decisions.get(label)
            if d is None or label not in self.points:
                return feat
            return self.points[label](feat, taps, d, ctx)

        return self.backbone(x, insert=insert)

    def _fixed_decisions(self) -> dict[str, Decision]:
        return {p.name: Decision(self.arch[p.op_label()]) for p in self.space}


# ------------------------------------------------------------------------------ construction
def build_backbone(space_cfg: SpaceConfig, task: Task) -> EDSR:
    """The backbone of a ``space`` block for a task (pixel-shuffle tail for SR, a conv otherwise).

    Raises:
        UsageError: unknown backbone or keyword (see :func:`backbones.build_backbone`).
    """
    tail = "upsample" if task.name == "sr" else "conv"
    return _build_backbone_block(space_cfg.backbone, task.scale, tail)


def supernet_op_kwargs(space: SearchSpace, p: PointSpec) -> dict[str, dict]:
    """Constructor keywords of every candidate at ``p`` in the supernet."""
    out = {}
    for op in p.ops:
        if op == SKIP:
            continue
        kw = space.op_config(op)
        if space.uses_refs(op):
            kw.update(num_refs=len(p.refs), keys=[max(p.keys)] * len(p.refs))
        out[op] = kw
    return out


def fixed_insertion_point(space: SearchSpace, p: PointSpec, arch: Mapping[str, Any],
                channels: int) -> InsertionPoint | None:
    """The :class:`InsertionPoint` of the fixed network at ``p`` (``None`` for skip)."""
    op = arch[p.op_label()]
    if op == SKIP:
        return None
    kw = space.op_config(op)
    refs: tuple[str, ...] = ()
    if space.uses_refs(op):
        keys = space.active_keys(arch, p.name)
        if sum(keys) == 0:  # ACLA reading no key is the identity: the same network as skip
            return None
        refs = tuple(r for r, k in zip(p.refs, keys) if k > 0)
        kw.update(num_refs=len(refs), keys=[k for k in keys if k > 0])
    return InsertionPoint(refs, channels, {op: kw})


def canonical_arch(space: SearchSpace, arch: Mapping[str, Any]) -> dict[str, Any]:
    """``arch`` with ACLA-without-keys written as ``skip`` and unused key labels dropped."""
    out: dict[str, Any] = {}
    labels = {c.label for c in space.choices()}
    for p in space:
        op = arch[p.op_label()]
        keys = space.active_keys(arch, p.name) if space.uses_refs(op) else ()
        if space.uses_refs(op) and sum(keys) == 0:
            op = SKIP
        out[p.op_label()] = op
        if space.uses_refs(op):
            out.update({p.key_label(r): k for r, k in zip(p.refs, keys)
                        if p.key_label(r) in labels})
    return out


def build_fixed(space: SearchSpace, task: Task, arch: Mapping[str, Any]) -> AttentionNet:
    """The fixed network of architecture ``arch`` (validated against ``space``)."""
    arch = canonical_arch(space, space.validate(arch))
    backbone = build_backbone(space.config, task)
    points = {}
    for p in space:
        ip = fixed_insertion_point(space, p, arch, backbone.num_feat)
        if ip is not None:
            points[p.name] = ip
    return AttentionNet(backbone, points, space, arch)


def inherit_weights(supernet_net: AttentionNet, fixed: AttentionNet) -> None:
    """Copy the supernet's weights into ``fixed`` (operators reading references: the first ``k``
    slots per reference, through :meth:`AttentionOp.sliced_state_dict`)."""
    fixed.backbone.load_state_dict(supernet_net.backbone.state_dict())
    space = fixed.space
    for name, ip in fixed.points.items():
        op = fixed.arch[f"{name}/op"]
        keys = space.active_keys(fixed.arch, name) if space.uses_refs(op) else None
        ip.ops[op].load_state_dict(supernet_net.points[name].ops[op].sliced_state_dict(keys))
