"""Architecture logits and straight-through Gumbel-softmax sampling.

Estimator (GDAS, Dong & Yang 2019; Jang et al. 2017 straight-through Gumbel-softmax): for a
choice with logits alpha and temperature tau,

    y = softmax((alpha + g) / tau),  g ~ Gumbel(0, 1)        (soft sample)
    h = one_hot(argmax y)                                   (hard sample)
    w = h - stopgrad(y) + y                                 (value h, gradient of y)

Only the sampled candidate j* is computed, and the gate scales what it adds to its input:
``out = x + w[j*] * (op_j*(x) - x)`` (value ``op_j*(x)`` in the forward pass). The loss gradient
reaches every alpha through dy[j*]/dalpha,
``dL/dalpha_i = <dL/dout, op_j*(x) - x> * y_j* (delta_ij* - y_i) / tau``: the sign says whether
the attention residual lowers the loss (the marginal value of the module), and ``skip`` (whose
residual is 0) is learned through the softmax coupling. Key-count gates of a point multiply into
the same weight. The expected-FLOPs term uses
the deterministic probabilities ``p = softmax(alpha)`` instead (no noise, see :mod:`nas.engine.cost`).

Logits live in :class:`Gates` as ``nn.Parameter`` s keyed by label; they are never part of the
weight optimiser (see :meth:`nas.engine.supernet.Supernet.weight_parameters`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from nas.errors import UsageError


class Gates(nn.Module):
    """One logit vector per labelled choice.

    Args:
        choices: ``{label: number of values}``.
        init_std: logits start at ``N(0, init_std^2)`` (DARTS uses 1e-3), i.e. near-uniform.
    """

    def __init__(self, choices: Mapping[str, int], init_std: float = 1e-3) -> None:
        super().__init__()
        self.init_std = init_std
        self.alpha = nn.ParameterDict(
            {label: nn.Parameter(torch.randn(n) * init_std) for label, n in choices.items()}
        )

    def reset_parameters(self) -> None:
        """Draw the logits again from ``N(0, init_std^2)`` (the global torch RNG)."""
        with torch.no_grad():
            for a in self.alpha.values():
                a.copy_(torch.randn(a.shape) * self.init_std)

    def labels(self) -> list[str]:
        """The choice labels, in construction order."""
        return list(self.alpha.keys())

    def probs(self) -> dict[str, torch.Tensor]:
        """``{label: softmax(alpha)}``, differentiable."""
        return {k: torch.softmax(a, dim=0) for k, a in self.alpha.items()}

    def sample(self, tau: float, hard: bool = True) -> dict[str, tuple[int, torch.Tensor]]:
        """Straight-through Gumbel-softmax sample of every choice.

        Returns:
            ``{label: (index, w)}`` with ``w`` the ``(n,)`` sample (one-hot values with the soft
            sample's gradient when ``hard``).
        """
        out = {}
        for k, a in self.alpha.items():
            w = gumbel_softmax_st(a, tau, hard=hard)
            out[k] = (int(w.detach().argmax()), w)
        return out


def gumbel_softmax_st(logits: torch.Tensor, tau: float, hard: bool = True) -> torch.Tensor:
    """Gumbel-softmax over the last dim; ``hard`` gives the straight-through one-hot.

    Uses the global torch RNG (checkpointed, so resumed runs draw the same samples).

    Raises:
        ValueError: ``tau <= 0``.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
    g = -torch.log(-torch.log(u))
    y = torch.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return y
    h = torch.zeros_like(y).scatter_(-1, y.argmax(dim=-1, keepdim=True), 1.0)
    return h - y.detach() + y


@dataclass
class TemperatureSchedule:
    """tau annealed from ``start`` to ``end`` over ``steps`` steps.

    ``exponential``: tau_t = start * (end / start) ** (t / steps);
    ``linear``: tau_t = start + (end - start) * t / steps; constant after ``steps``.

    Raises:
        UsageError: non-positive temperatures or steps, unknown kind.
    """

    start: float = 5.0
    end: float = 0.5
    steps: int = 1000
    kind: str = "exponential"

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.end > 0):
            raise UsageError(f"search.tau: start and end must be > 0, got {self.start}, {self.end}")
        if self.kind not in ("exponential", "linear"):
            raise UsageError(f"search.tau.kind: 'exponential' or 'linear', got {self.kind!r}")
        if self.steps < 1:
            raise UsageError(f"search.tau.steps: must be >= 1, got {self.steps}")

    def __call__(self, step: int) -> float:
        t = min(max(step, 0), self.steps) / self.steps
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        return self.start * math.exp(t * math.log(self.end / self.start))
