"""Full softmax non-local attention (Wang et al., CVPR 2018, "embedded Gaussian"): the quadratic
baseline the efficient operators are compared with (``docs/operators.md``, NLA)::

    θ, φ, g = Conv1x1_{C→d}(X) (three of them; d = C / reduction)
    A       = Softmax_j(θ_iᵀ φ_j)                 N x N over all N = H·W positions, no scaling
    Y       = X + Proj_{d→C}(A g)                 Proj: zero-initialised 1x1 conv

Computed with explicit ``matmul`` + ``softmax`` (not ``scaled_dot_product_attention``), so the
``N x N`` matrix is materialised: time and memory are quadratic in ``H·W``, and the FLOP count
does not depend on which fused kernel a device would pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from search_spaces.operators.base import OPERATORS, AttentionOp, require_int


@OPERATORS.register("nla")
class NLA(AttentionOp):
    """Non-local (full softmax) attention over all positions of the query map.

    Args:
        channels: C.
        num_refs: accepted for the common contract; NLA ignores ``refs``.
        reduction: embedding reduction, ``d = C / reduction`` (default 2, as in the non-local
            block); must divide ``channels``.

    Raises:
        ValueError: ``reduction`` is not an int >= 1 dividing ``channels``.

    Shapes:
        ``forward(x (B, C, H, W)) -> (B, C, H, W)``; memory ``O((H·W)²)``.
    """

    uses_refs = False

    def __init__(self, channels: int, num_refs: int = 0, reduction: int = 2) -> None:
        super().__init__(channels, num_refs)
        self.reduction = _check_reduction(channels, reduction)
        self.dim = channels // reduction
        c, d = channels, self.dim
        self.embed = nn.Conv2d(c, 3 * d, 1)  # θ, φ, g stacked
        self.proj = nn.Conv2d(d, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim={self.dim}"

    def forward(
        self, x: torch.Tensor, refs: Sequence[torch.Tensor] = (), ctx: dict | None = None
    ) -> torch.Tensor:
        """``x + Proj(Softmax(θᵀφ) g)``.

        Args:
            x: ``(B, C, H, W)``.
            refs: ignored.
            ctx: ignored.

        Returns:
            ``(B, C, H, W)``.

        Raises:
            ValueError: ``x`` is not ``(B, C, H, W)``.
        """
        self.check_inputs(x, list(refs))
        b, _, h, w = x.shape
        theta, phi, g = self.embed(x).flatten(2).chunk(3, dim=1)      # (B, d, N) each
        scores = torch.matmul(theta.transpose(1, 2), phi)              # (B, N, N)
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn.to(g.dtype), g.transpose(1, 2))        # (B, N, d)
        return x + self.proj(out.transpose(1, 2).reshape(b, self.dim, h, w))

    @classmethod
    def flops(cls, channels: int, height: int, width: int, config: dict[str, Any]) -> int:
        """Forward FLOPs (= 2 x MACs) per image, per :mod:`nas.engine.flops`.

        With ``N = H·W`` and ``d = C / reduction``::

            θ, φ, g convs   2·N·C·3d
            θᵀφ             2·N²·d     (bmm)
            softmax         3·N²
            A g             2·N²·d     (bmm)
            projection      2·N·d·C

        Raises:
            ValueError: bad ``reduction`` or sizes.
        """
        c = require_int("channels", channels)
        n = require_int("height", height) * require_int("width", width)
        d = c // _check_reduction(c, config.get("reduction", 2))
        return 2 * n * c * 3 * d + 4 * n * n * d + 3 * n * n + 2 * n * d * c


def _check_reduction(channels: int, reduction: Any) -> int:
    require_int("reduction", reduction)
    if channels % reduction:
        raise ValueError(f"reduction={reduction} must divide channels={channels}")
    return reduction
