"""Expected FLOPs E[F] against FlopCounterMode, and its gradient (nas.engine.flops)."""

from __future__ import annotations

import random

import torch

from nas.engine.flops import measure_flops
from nas.engine.supernet import Supernet
from nas.restoration.task import Task
from search_spaces.space import SpaceConfig
from tests.conftest import LR, all_ops_space, random_arch


def test_expected_flops_equals_measured_for_one_hot():
    torch.manual_seed(0)
    net = Supernet(all_ops_space(), Task("sr", scale=2), LR)
    rng = random.Random(0)
    archs = [random_arch(net.space, rng) for _ in range(10)]
    archs.append({c.label: c.values[0] for c in net.space.choices()})  # all skip
    archs.append({c.label: (c.values[1] if c.label.endswith("/op") else 0)
                  for c in net.space.choices()})  # ACLA reading no key == skip
    x = torch.rand(1, 3, *LR)
    for arch in archs:
        fixed = net.fixed_network(arch).eval()
        measured = measure_flops(fixed, x)
        e = float(net.cost.expected(net.cost.one_hot_probs(arch)))
        assert e == measured == net.cost.exact(arch), arch


def test_expected_flops_gradient_signs():
    """dE[F]/dalpha_j = p_j (F_j - E_point[F]): positive exactly for the costlier-than-average
    choices; with {skip, acla} the insert logit's gradient is positive."""
    net = Supernet(all_ops_space(), Task("sr", scale=2), LR)
    net.expected_flops().backward()
    cm = net.cost
    for p in net.space:
        g = net.gates.alpha[p.op_label()].grad
        pr = net.probs()[p.op_label()].detach().double()
        costs = []
        for op in p.ops:  # expected cost of each op under the current key probabilities
            arch_p = {k: v.detach() for k, v in net.probs().items()}
            arch_p[p.op_label()] = torch.nn.functional.one_hot(
                torch.tensor(p.ops.index(op)), len(p.ops)).double()
            costs.append(float(cm.expected(arch_p)))
        mean = float((pr * torch.tensor(costs)).sum())
        for j, op in enumerate(p.ops):
            assert (g[j] > 0) == (costs[j] > mean), (p.name, op)
        assert g[p.ops.index("skip")] < 0
        for r in p.refs:
            gk = net.gates.alpha[p.key_label(r)].grad
            assert gk[0] < 0 and gk[-1] > 0 and torch.all(gk[1:] > gk[:-1])  # more keys, more
    two = Supernet(SpaceConfig(backbone={"preset": "edsr-tiny"}), Task("sr", scale=2), LR)
    two.expected_flops().backward()
    for p in two.space:
        assert two.gates.alpha[p.op_label()].grad[1] > 0  # dE[F]/dalpha(insert ACLA) > 0
