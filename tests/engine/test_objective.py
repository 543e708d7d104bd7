"""The alpha loss: FLOPs penalties (nas.engine.objective)."""

from __future__ import annotations

import math

import pytest
import torch

from nas.config import PenaltyConfig
from nas.engine.objective import alpha_loss
from nas.errors import UsageError


def test_penalties():
    l1 = torch.tensor(0.1)
    e = torch.tensor(2e9, dtype=torch.float64)
    assert float(alpha_loss(l1, e, PenaltyConfig("linear", 0.5), 4e9)) == pytest.approx(0.35)
    assert float(alpha_loss(l1, e, PenaltyConfig("hinge", 2.0, 1.0), 4e9)) == pytest.approx(2.1)
    assert float(alpha_loss(l1, e, PenaltyConfig("hinge", 2.0, 3.0), 4e9)) == pytest.approx(0.1)
    v = float(alpha_loss(l1, e, PenaltyConfig("log", 0.0, 1.0, beta=0.6), 4e9))
    assert v == pytest.approx(0.1 * (math.log(2e9) / math.log(1e9)) ** 0.6)
    with pytest.raises(UsageError, match="target_gflops"):
        alpha_loss(l1, e, PenaltyConfig("hinge", 1.0), 4e9)
