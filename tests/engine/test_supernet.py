"""The supernet: alpha outside the weights, every alpha gets a gradient, alpha learns
(nas.engine.supernet)."""

from __future__ import annotations

import torch

from nas.engine.supernet import Supernet
from nas.restoration.task import Task
from search_spaces.space import SpaceConfig
from tests.conftest import LR, all_ops_space, perturb


def test_alpha_out_of_weight_parameters():
    net = Supernet(SpaceConfig(backbone={"preset": "edsr-tiny"}), Task("sr", scale=2), LR)
    w_ids = {id(p) for p in net.weight_parameters()}
    a_ids = {id(p) for p in net.arch_parameters()}
    assert a_ids and not (w_ids & a_ids)
    assert len(w_ids) + len(a_ids) == len(list(net.parameters()))
    assert set(net.gates.labels()) == {c.label for c in net.space.choices()}


def test_every_alpha_receives_a_gradient():
    torch.manual_seed(0)
    net = Supernet(all_ops_space(), Task("sr", scale=2), LR)
    perturb(net.net)
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    for _ in range(40):
        _, dec = net.sample(tau=1.0)
        torch.nn.functional.l1_loss(net(x, dec), y).backward()
    for label, a in net.gates.alpha.items():
        assert a.grad is not None and a.grad.abs().sum() > 0, label


def test_alpha_moves_towards_the_better_choice():
    """A point whose attention output is poisoned (huge bias) must learn to skip."""
    torch.manual_seed(0)
    cfg = SpaceConfig(backbone={"preset": "edsr-tiny"}, points=["b01"], ops=["skip", "rela"])
    net = Supernet(cfg, Task("sr", scale=2), LR)
    with torch.no_grad():
        net.net.points["b01"].ops["rela"].proj.bias.fill_(5.0)  # rela now destroys the features
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.05)
    x = torch.rand(2, 3, 8, 8)
    y = torch.nn.functional.interpolate(x, scale_factor=2)
    for _ in range(60):
        _, dec = net.sample(tau=1.0)
        opt.zero_grad()
        torch.nn.functional.l1_loss(net(x, dec), y).backward()
        opt.step()
    assert net.probs()["b01/op"][0] > 0.8
