"""Straight-through Gumbel-softmax and temperature schedules (nas.engine.gates)."""

from __future__ import annotations

import pytest
import torch

from nas.engine.gates import TemperatureSchedule, gumbel_softmax_st
from nas.errors import UsageError


def test_hard_gumbel_is_one_hot_with_soft_gradient():
    a = torch.zeros(4, requires_grad=True)
    w = gumbel_softmax_st(a, tau=1.0)
    assert sorted(w.detach().tolist()) == [0.0, 0.0, 0.0, 1.0]
    (w * torch.arange(4.0)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_temperature_schedules():
    e = TemperatureSchedule(5.0, 0.5, 100, "exponential")
    lin = TemperatureSchedule(5.0, 0.5, 100, "linear")
    assert e(0) == pytest.approx(5.0) and e(100) == pytest.approx(0.5) and e(500) == e(100)
    assert e(50) == pytest.approx((5.0 * 0.5) ** 0.5)
    assert lin(50) == pytest.approx(2.75)
    with pytest.raises(UsageError):
        TemperatureSchedule(0.0, 0.5, 10)
