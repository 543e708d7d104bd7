"""The supernet: every candidate at every insertion point, labelled Gumbel gates, E[FLOPs].

Example:
    >>> from nas.restoration.task import Task
    >>> from nas.engine.supernet import Supernet
    >>> from search_spaces.space import SpaceConfig
    >>> net = Supernet(SpaceConfig(backbone={"preset": "edsr-tiny"}), Task("sr", scale=2))
    >>> arch, decisions = net.sample(tau=1.0)
    >>> y = net(torch.rand(1, 3, 16, 16), decisions)          # (1, 3, 32, 32)
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from nas.engine.flops import CostModel
from nas.engine.gates import Gates
from nas.engine.network import (
    AttentionNet,
    Decision,
    InsertionPoint,
    build_backbone,
    build_fixed,
    canonical_arch,
    inherit_weights,
    supernet_op_kwargs,
)
from nas.restoration.task import Task
from search_spaces.operators import AttentionOp
from search_spaces.space import SKIP, SearchSpace, SpaceConfig


class Supernet(nn.Module):
    """Backbone + all candidates + architecture logits.

    Args:
        space_cfg: the ``space`` block.
        task: the task (backbone tail, reference size).
        lr_size: input size ``(H, W)`` of the FLOPs table (default: a 1280x720 output).

    Attributes:
        net: the :class:`AttentionNet` holding backbone and candidates (the weights w).
        gates: :class:`Gates` holding the logits alpha (never in the weight optimiser).
        cost: :class:`CostModel` for E[F].
    """

    def __init__(self, space_cfg: SpaceConfig, task: Task,
                 lr_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        backbone = build_backbone(space_cfg, task)
        self.space = SearchSpace(space_cfg, backbone.config.num_block)
        self.task = task
        points = {
            p.name: InsertionPoint(p.refs, backbone.num_feat, supernet_op_kwargs(self.space, p))
            for p in self.space
        }
        self.net = AttentionNet(backbone, points, self.space)
        self.choices = {c.label: c for c in self.space.choices()}
        self.gates = Gates({label: len(c.values) for label, c in self.choices.items()})
        self.cost = CostModel(self.space, task, lr_size)
        #: the architecture a frozen supernet always runs (see :meth:`freeze`), else ``None``
        self.frozen_arch: dict[str, Any] | None = None

    # -- parameters ------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The logits alpha."""
        return list(self.gates.parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        """Network weights w (backbone and operators), without alpha."""
        return list(self.net.parameters())

    def set_tau(self, tau: float) -> None:
        """Anneal the operators' own Gumbel temperature (ACLA's key mask) with the gates'
        (:meth:`AttentionOp.set_temperature` of every operator)."""
        for m in self.net.modules():
            if isinstance(m, AttentionOp):
                m.set_temperature(tau)

    def freeze(self, arch: Mapping[str, Any] | None) -> None:
        """Run only ``arch`` from now on (``None``: unfreeze).

        A frozen supernet's :meth:`sample` always returns ``arch`` with plain decisions (no gate
        weights, no Gumbel draw), :meth:`probs` and :meth:`expected_flops` are those of ``arch``
        (one-hot) and :meth:`derive` returns it; alpha receives no gradient. Training it trains the
        fixed network of ``arch`` inside the supernet (reference architectures of a study).

        Raises:
            UsageError: ``arch`` does not fit the search space.
        """
        self.frozen_arch = None if arch is None else canonical_arch(self.space, self.space.validate(arch))

    # -- sampling --------------------------------------------------------------------------
    def sample(self, tau: float, all_candidates: bool = False
               ) -> tuple[dict[str, Any], dict[str, Decision]]:
        """Draw an architecture with straight-through Gumbel-softmax (the global torch RNG).

        Args:
            tau: Gumbel temperature (> 0).
            all_candidates: also compute, at every point, the operators that were not drawn,
                with zero-valued straight-through weights (:attr:`Decision.others`): the forward
                value is the drawn architecture's, and every operator logit receives the
                first-order effect of its candidate on the loss on every step, not only when it
                is drawn.

        Returns:
            ``(arch, decisions)``: the sampled ``{label: value}`` and per-point decisions whose
            weight is the product of the sampled one-hot entries of every gate the point used.
        """
        if self.frozen_arch is not None:
            return dict(self.frozen_arch), self.net.decisions_for(self.frozen_arch)
        s = self.gates.sample(tau)
        arch = {label: self.choices[label].values[idx] for label, (idx, _) in s.items()}
        decisions = {}
        for p in self.space:
            idx, w = s[p.op_label()]
            keys_w = None
            keys = self.space.active_keys(arch, p.name)
            for r in p.refs:
                label = p.key_label(r)
                if label in s:
                    kidx, kw = s[label]
                    keys_w = kw[kidx] if keys_w is None else keys_w * kw[kidx]

            def decision(j: int) -> Decision:
                op = p.ops[j]
                weight = w[j]
                if self.space.uses_refs(op):
                    if keys_w is not None:
                        weight = weight * keys_w
                    return Decision(op, keys, weight)
                return Decision(op, None, weight)

            primary = decision(idx)
            if all_candidates:
                primary.others = tuple(decision(j) for j, op in enumerate(p.ops)
                                       if j != idx and op != SKIP)
            decisions[p.name] = primary
        return arch, decisions

    def sample_uniform(self) -> dict[str, Any]:
        """An architecture drawn uniformly, independently of alpha (every label's values equally
        likely; the global torch RNG): the weight paths of single-path one-shot training (SPOS,
        Guo et al. 2020)."""
        out = {}
        for label, c in self.choices.items():
            out[label] = c.values[int(torch.randint(len(c.values), ()))]
        return canonical_arch(self.space, out)

    def largest_arch(self) -> dict[str, Any]:
        """The most expensive architecture: at every point the costliest operator, reading the
        largest key count from every reference (what a warm-up on the full path trains)."""
        arch: dict[str, Any] = {}
        fixed = self.cost.fixed
        for p in self.space:
            best, best_f = SKIP, -1
            for op in p.ops:
                if op == SKIP:
                    continue
                trial = {p.op_label(): op, **{p.key_label(r): max(p.keys) for r in p.refs}}
                full = {q.op_label(): SKIP for q in self.space}
                full.update(trial)
                labels = {c.label for c in self.space.choices()}
                f = self.cost.exact({k: v for k, v in full.items() if k in labels}) - fixed
                if f > best_f:
                    best, best_f = op, f
            arch[p.op_label()] = best
            if self.space.uses_refs(best):
                arch.update({p.key_label(r): max(p.keys) for r in p.refs})
        labels = {c.label for c in self.space.choices()}
        return canonical_arch(self.space, {k: v for k, v in arch.items() if k in labels})

    def decisions(self, arch: Mapping[str, Any]) -> dict[str, Decision]:
        """Decisions running a given (frozen) architecture, without gate weights."""
        return self.net.decisions_for(self.space.validate(arch))

    def forward(self, x: torch.Tensor, decisions: Mapping[str, Decision]) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, 3, sH, sW)`` under the given decisions."""
        return self.net(x, decisions)

    # -- cost and derivation -----------------------------------------------------------------
    def probs(self) -> dict[str, torch.Tensor]:
        """``{label: (n,) probabilities}``: ``softmax(alpha)``, differentiable in alpha (one-hot
        and constant when :meth:`freeze` d)."""
        if self.frozen_arch is not None:
            return {k: v.to(self.gates.alpha[k].device, torch.float32)
                    for k, v in self.cost.one_hot_probs(self.frozen_arch).items()}
        return self.gates.probs()

    def expected_flops(self) -> torch.Tensor:
        """E[F] (FLOPs, float64 scalar), differentiable in alpha."""
        return self.cost.expected(self.probs())

    def probs_dict(self) -> dict[str, dict[str, float]]:
        """``{label: {value: probability}}`` (JSON-ready, deterministic softmax(alpha))."""
        return {
            label: {str(v): round(float(p), 6)
                    for v, p in zip(self.choices[label].values, pr.detach())}
            for label, pr in self.probs().items()
        }

    def derive(self) -> dict[str, Any]:
        """The argmax architecture, canonical (ACLA reading no key is written as skip)."""
        if self.frozen_arch is not None:
            return dict(self.frozen_arch)
        arch = {label: self.choices[label].values[int(p.argmax())]
                for label, p in self.probs().items()}
        return canonical_arch(self.space, arch)

    def fixed_network(self, arch: Mapping[str, Any], inherit: bool = True) -> AttentionNet:
        """Build the fixed network of ``arch``; ``inherit`` copies the supernet's weights."""
        fixed = build_fixed(self.space, self.task, arch)
        if inherit:
            inherit_weights(self.net, fixed)
        return fixed.to(next(self.parameters()).device)
