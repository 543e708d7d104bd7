"""Deriving an architecture from the gate probabilities, optionally within a FLOPs budget.

The gates define a distribution over architectures: at point ``i`` an operator with probability
``p_i(op)`` and, for operators reading references, key counts with probabilities ``q_ir(k)``
(independent across labels). Several label settings give the same network - an operator that
reads no key is the identity, i.e. ``skip`` - so the probability of a *network option* at a point
marginalises over them::

    P_i(skip)            = p_i(skip) + sum_{op reads refs} p_i(op) * prod_r q_ir(0)
    P_i(op, k_1..k_R)    = p_i(op) * prod_r q_ir(k_r)        (some k_r > 0)
    P_i(op)              = p_i(op)                            (operators without references)

:func:`derive` returns the most probable architecture, ``argmax prod_i P_i(option_i)``, and with
a budget the most probable one whose exact FLOPs (the same table as
:class:`nas.engine.flops.CostModel`) stay within it: a multiple-choice knapsack solved exactly
by dynamic programming over the points with Pareto-pruned (FLOPs, log-probability) partial
solutions (LCoA's collaborative discount, which depends on an earlier LCoA, is part of the
state). :func:`derive_top` returns the ``k`` most probable ones, in order, by keeping every
partial solution that fewer than ``k`` others beat in both FLOPs and log-probability.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping

from nas.engine.flops import CostModel
from nas.engine.network import canonical_arch
from search_spaces.space import SKIP, PointSpec, SearchSpace


@dataclass(frozen=True)
class PointOption:
    """One distinct network option at an insertion point.

    Attributes:
        op: operator name or ``skip``.
        keys: key counts per reference (operators reading references), else ``()``.
        log_prob: ``log P_i(option)`` (natural log).
    """

    op: str
    keys: tuple[int, ...]
    log_prob: float


def point_options(space: SearchSpace, p: PointSpec,
                  probs: Mapping[str, Mapping[Any, float]]) -> list[PointOption]:
    """Every distinct network option of point ``p`` with its marginal log-probability.

    Args:
        space: the search space.
        p: the point.
        probs: ``{label: {value: probability}}`` (values as in the space; missing labels of
            single-valued choices count as probability 1).

    Returns:
        The options, ``skip`` first.
    """
    def prob(label: str, value: Any) -> float:
        if label not in probs:
            return 1.0
        d = probs[label]
        return float(d.get(value, d.get(str(value), 0.0)))

    skip = prob(p.op_label(), SKIP) if SKIP in p.ops else 0.0
    out: list[tuple[str, tuple[int, ...], float]] = []
    for op in p.ops:
        if op == SKIP:
            continue
        p_op = prob(p.op_label(), op)
        if not space.uses_refs(op):
            out.append((op, (), p_op))
            continue
        labels = [p.key_label(r) for r in p.refs]
        values = [p.keys if lab in probs else (p.keys[-1],) for lab in labels]
        for combo in itertools.product(*values):
            pr = p_op * math.prod(prob(lab, k) for lab, k in zip(labels, combo))
            if sum(combo) == 0:
                skip += pr
            else:
                out.append((op, tuple(int(k) for k in combo), pr))
    opts = [PointOption(SKIP, (), math.log(skip) if skip > 0 else -math.inf)]
    opts += [PointOption(op, keys, math.log(pr) if pr > 0 else -math.inf) for op, keys, pr in out]
    return opts


def option_flops(cost: CostModel, op: str, keys: tuple[int, ...], shared: bool) -> int:
    """Exact FLOPs one option adds at a point (``shared``: an earlier collaborative module of the
    same operator exists, so this one pays the shared cost)."""
    if op == SKIP:
        return 0
    if op in cost.ref_base:
        return cost.ref_base[op] + sum(cost.ref_key[op][k] for k in keys)
    if shared and op in cost.shared:
        return cost.shared[op]
    return cost.const[op]


def _pareto(cands: list[tuple[int, float, tuple]]) -> list[tuple[int, float, tuple]]:
    """Keep the partial solutions no other one beats in both FLOPs (lower) and log-prob."""
    cands.sort(key=lambda c: (c[0], -c[1]))
    out, best = [], -math.inf
    for c in cands:
        if c[1] > best:
            out.append(c)
            best = c[1]
    return out


def _pareto_k(cands: list[tuple[int, float, tuple]], k: int) -> list[tuple[int, float, tuple]]:
    """Keep the partial solutions that fewer than ``k`` kept ones beat in both FLOPs and
    log-prob: any completion of a dropped one is beaten by ``k`` completions of kept ones, so
    the ``k`` most probable complete solutions survive (``k = 1`` is :func:`_pareto`)."""
    if k == 1:
        return _pareto(cands)
    cands.sort(key=lambda c: (c[0], -c[1]))
    out: list[tuple[int, float, tuple]] = []
    for c in cands:
        if sum(1 for o in out if o[1] >= c[1]) < k:
            out.append(c)
    return out


def derive(space: SearchSpace, probs: Mapping[str, Mapping[Any, float]], cost: CostModel,
           budget_flops: float | None = None) -> dict[str, Any]:
    """The most probable architecture, within ``budget_flops`` when given.

    Args:
        space: the search space.
        probs: ``{label: {value: probability}}`` (e.g. :meth:`Supernet.probs_dict`).
        cost: the FLOPs table.
        budget_flops: upper bound of the network's FLOPs (FLOPs = 2 x MACs, per image, at
            ``cost.lr_size``); ``None``: no bound. A budget below the cheapest architecture gives
            the cheapest one.

    Returns:
        The canonical architecture ``{label: value}``; its exact FLOPs are ``cost.exact(arch)``.
    """
    return derive_top(space, probs, cost, budget_flops, 1)[0]


def derive_top(space: SearchSpace, probs: Mapping[str, Mapping[Any, float]], cost: CostModel,
               budget_flops: float | None = None, k: int = 1) -> list[dict[str, Any]]:
    """The ``k`` most probable architectures (within ``budget_flops`` when given), most probable
    first; fewer when the space (or the budget) has fewer. Same arguments as :func:`derive`.

    Raises:
        ValueError: ``k < 1``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    shared_ops = sorted(cost.shared)
    # state: frozenset of collaborative ops already placed -> [(flops, log_prob, choices)]
    states: dict[frozenset, list[tuple[int, float, tuple]]] = {frozenset(): [(0, 0.0, ())]}
    for p in space:
        opts = point_options(space, p, probs)
        nxt: dict[frozenset, list[tuple[int, float, tuple]]] = {}
        for seen, partials in states.items():
            for o in opts:
                if o.log_prob == -math.inf and budget_flops is not None:
                    continue
                f = option_flops(cost, o.op, o.keys, o.op in seen)
                key = seen | {o.op} if o.op in shared_ops else seen
                bucket = nxt.setdefault(key, [])
                for flops, lp, choices in partials:
                    bucket.append((flops + f, lp + o.log_prob, choices + ((p.name, o),)))
        states = {s: _pareto_k(v, k) for s, v in nxt.items()}
    finals = [c for v in states.values() for c in v]
    if budget_flops is not None:
        room = budget_flops - cost.fixed
        within = [c for c in finals if c[0] <= room]
        finals = within or [min(finals, key=lambda c: (c[0], -c[1]))]
    finals.sort(key=lambda c: (-c[1], c[0]))
    labels = {c.label for c in space.choices()}
    out: list[dict[str, Any]] = []
    for _, _, choices in finals[:k]:
        arch: dict[str, Any] = {}
        for name, o in choices:
            pt = space.points[name]
            arch[pt.op_label()] = o.op
            if o.keys:
                for r, kr in zip(pt.refs, o.keys):
                    arch[pt.key_label(r)] = kr
        out.append(canonical_arch(space, {a: v for a, v in arch.items() if a in labels}))
    return out


def flops_range(space: SearchSpace, cost: CostModel) -> tuple[int, int]:
    """Exact FLOPs of the cheapest and the most expensive architecture of the space."""
    uniform = {c.label: {v: 1.0 / len(c.values) for v in c.values} for c in space.choices()}
    lo = cost.exact(derive(space, uniform, cost, budget_flops=0))
    hi_states = []
    for p in space:
        best = max(point_options(space, p, uniform),
                   key=lambda o: option_flops(cost, o.op, o.keys, False))
        hi_states.append((p, best))
    arch: dict[str, Any] = {}
    for pt, o in hi_states:
        arch[pt.op_label()] = o.op
        for r, k in zip(pt.refs, o.keys):
            arch[pt.key_label(r)] = k
    labels = {c.label for c in space.choices()}
    hi = cost.exact(canonical_arch(space, {k: v for k, v in arch.items() if k in labels}))
    return lo, hi
