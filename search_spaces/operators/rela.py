"""Rank-Enhanced Linear Attention (RELA), arXiv 2505.16157 (formulas: ``docs/operators.md``).

The paper's exact equations were not reachable; this follows the reading in ``docs/operators.md`` (RELA),
consistent with the RALA code of the same group and the third-party ``LiteLA``::

    Q, K, V = Conv1x1_{C→3C}(X)                    split into h heads of d = C/h channels
    φ(t)    = ELU(t) + 1     (or ReLU(t))          positive kernel feature map
    O_head  = φ(Q)(φ(K)ᵀV / N) / (φ(Q)(φ(K)ᵀ1 / N) + eps)     linear attention, O(N·C·d)
    R       = O + DWConv_{k×k}(V)                  rank-enhancement branch on V
    Y       = X + Proj(R)                          Proj: zero-initialised 1x1 conv

Both sums over the N = H·W tokens are divided by N (a mean); the ratio is unchanged except that
``eps`` acts on the mean scale, and fp16 sums cannot overflow. The attention core runs in at
least float32 with autocast disabled (a standard precaution for linear attention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.operators.base import (
    OPERATORS,
    AttentionOp,
    compute_dtype,
    require_int,
)

FEATURE_MAPS = ("elu", "relu")


def feature_map(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The positive kernel feature map φ: ``"elu"`` → ``ELU(t) + 1``, ``"relu"`` → ``ReLU(t)``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "elu":
        return F.elu(t) + 1.0
    if kind == "relu":
        return F.relu(t)
    raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {kind!r}")


@OPERATORS.register("rela")
class RELA(AttentionOp):
    """Multi-head rank-enhanced linear attention (``docs/operators.md``, RELA); uses only the query.

    Args:
        channels: C.
        num_refs: accepted for the common contract; RELA ignores ``refs``.
        heads: h >= 1 with ``channels % heads == 0`` (default 4).
        dw_kernel: odd kernel size k >= 1 of the depthwise conv on V (default 5, as in RALA).
        feature_map: ``"elu"`` (φ = ELU + 1, default, as in RALA) or ``"relu"`` (as in LiteLA).
        eps: added to the normaliser (> 0, default 1e-6).

    Raises:
        ValueError: ``heads`` not an int >= 1 or not dividing ``channels``; ``dw_kernel`` not an
            odd int >= 1; unknown ``feature_map``; ``eps <= 0``.

    Shapes:
        ``forward(x (B, C, H, W)) -> (B, C, H, W)``; time and memory linear in ``H·W``.
    """

    uses_refs = False

    def __init__(
        self,
        channels: int,
        num_refs: int = 0,
        heads: int = 4,
        dw_kernel: int = 5,
        feature_map: str = "elu",
        eps: float = 1e-6,
    ) -> None:
        super().__init__(channels, num_refs)
        self.heads = _check_heads(channels, heads)
        self.dw_kernel = _check_kernel(dw_kernel)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        self.feature_map = feature_map
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        self.eps = float(eps)
        c = channels
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.dwconv = nn.Conv2d(c, c, self.dw_kernel, padding=self.dw_kernel // 2, groups=c)
        self.proj = self.zero_proj(c)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, heads={self.heads}, dw_kernel={self.dw_kernel}, "
                f"feature_map={self.feature_map!r}")

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Normalised linear attention.

        Args:
            q, k, v: ``(B, C, H, W)`` projections (before φ).

        Returns:
            ``(B, C, H, W)`` = per head ``φ(Q)(φ(K)ᵀV/N) / (φ(Q)(φ(K)ᵀ1/N) + eps)``, in ``v``'s
            dtype.
        """
        b, c, h, w = q.shape
        n, d = h * w, c // self.heads
        dt = compute_dtype(q.dtype)
        with _no_autocast(q.device.type):
            # (B, heads, N, d) layouts; matmuls below lower to bmm (counted).
            fq = feature_map(q.to(dt).reshape(b, self.heads, d, n), self.feature_map)
            fk = feature_map(k.to(dt).reshape(b, self.heads, d, n), self.feature_map)
            vv = v.to(dt).reshape(b, self.heads, d, n)
            fq = fq.transpose(-1, -2)                                   # (B, h, N, d)
            kv = torch.matmul(fk, vv.transpose(-1, -2)) / n             # (B, h, d, d)
            ksum = fk.mean(dim=-1, keepdim=True)                        # (B, h, d, 1)
            num = torch.matmul(fq, kv)                                  # (B, h, N, d)
            den = torch.matmul(fq, ksum)                                # (B, h, N, 1)
            out = num / (den + self.eps)
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        return out.to(v.dtype)

    def forward(
        self, x: torch.Tensor, refs: Sequence[torch.Tensor] = (), ctx: dict | None = None
    ) -> torch.Tensor:
        """``x + Proj(LinearAttention(Q, K, V) + DWConv(V))``.

        Args:
            x: ``(B, C, H, W)`` queries.
            refs: ignored (RELA only uses the query).
            ctx: ignored.

        Returns:
            ``(B, C, H, W)``.

        Raises:
            ValueError: ``x`` is not ``(B, C, H, W)``.
        """
        self.check_inputs(x, list(refs))
        q, k, v = self.qkv(x).chunk(3, dim=1)
        r = self.attention(q, k, v) + self.dwconv(v)
        return x + self.proj(r)

    @classmethod
    def flops(cls, channels: int, height: int, width: int, config: dict[str, Any]) -> int:
        """Forward FLOPs (= 2 x MACs) per image, per :mod:`nas.engine.flops`.

        With ``N = H·W``, ``d = C / heads``, ``k = dw_kernel``::

            qkv conv        2·N·C·3C
            φ(K)ᵀV          2·N·C·d       (bmm)
            φ(Q)(φ(K)ᵀV)    2·N·C·d       (bmm)
            φ(Q)(φ(K)ᵀ1)    2·N·C         (bmm; the sum over tokens is a reduction, uncounted)
            depthwise conv  2·N·C·k²
            projection      2·N·C²

        Raises:
            ValueError: bad ``heads``/``dw_kernel``/sizes.
        """
        c = require_int("channels", channels)
        n = require_int("height", height) * require_int("width", width)
        heads = _check_heads(c, config.get("heads", 4))
        k = _check_kernel(config.get("dw_kernel", 5))
        d = c // heads
        return 2 * n * c * 3 * c + 4 * n * c * d + 2 * n * c + 2 * n * c * k * k + 2 * n * c * c


def _no_autocast(device_type: str):
    """A context disabling autocast on ``device_type`` (a no-op where autocast does not exist,
    e.g. the ``meta`` device used for shape/FLOP tracing)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _check_heads(channels: int, heads: Any) -> int:
    require_int("heads", heads)
    if channels % heads:
        raise ValueError(f"heads={heads} must divide channels={channels}")
    return heads


def _check_kernel(k: Any) -> int:
    require_int("dw_kernel", k)
    if k % 2 == 0:
        raise ValueError(f"dw_kernel must be odd, got {k}")
    return k
