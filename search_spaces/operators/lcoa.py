"""Learnable Collaborative Attention (LCoA), arXiv 2404.04922 (formulas: ``docs/operators.md``).

Learnable sparse pattern (LSP) + collaborative attention (CoA), as in the public
``kmeans_attention.py`` of LCoAN (one clustering round, R = 1)::

    Q   = Conv3x3_{C→d}(X)          d = C / reduction;  tokens i = 0..N-1 in row-major order
    V   = Conv1x1_{C→C}(X)
    c_i = argmax_m <Q_i / |Q_i|, μ_m>                  μ: M unit centroids (buffer, no gradient)
    sort tokens by c (stable); pad to a multiple of the chunk length w' = min(window, N)
    chunk j attends to chunks {j-1, j, j+1} (mod number of chunks, each chunk once)
    a_ij = softmax_j(Q_i · K̂_j),  K̂ = Q / |Q|          shared-QK, queries not normalised
    O_i  = Σ_j a_ij V_j;  unsort;  Y = X + Proj(O)     Proj: zero-initialised 1x1 conv

Padded positions never act as keys (their logits are ``-inf``) and their query outputs are
discarded; with fewer than 3 chunks each chunk appears once among the keys (the released code
repeats the last tokens as padding and, with 1 or 2 chunks, counts some keys twice).

Centroids: ``means`` starts as random unit vectors; the first forward in training mode runs
``kmeans_iters`` k-means iterations on the batch's normalised queries (random tokens as seeds),
and every training forward then applies the EMA ``μ ← normalise(decay·μ + (1-decay)·μ_batch)``
(clusters with no token keep their value). The released code computes but never writes the EMA
back; here it is applied. Eval mode never changes ``means``.

Collaborative attention — the ``ctx`` protocol: ``ctx`` is a dict the network passes to every
operator of one forward pass. A module that computes its own attention map stores it as
``ctx["lcoa"]`` (an :class:`LCoAMap`) if that key is absent, so the first LCoA module of a
forward publishes its map. A module built with ``collaborative=True`` reuses ``ctx["lcoa"]`` when
present (it then only computes its own ``V``, the gather and the weighted sum; gradients flow
back into the publishing module's ``conv_match``); when absent it computes and publishes its own.
``module.last_shared`` records which path the last forward took.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.operators.base import (
    OPERATORS,
    AttentionOp,
    require_int,
)

#: key of the shared attention map in the network's ``ctx`` dict.
CTX_KEY = "lcoa"


class LCoAMap(NamedTuple):
    """A sparse attention pattern and its weights, shareable through ``ctx["lcoa"]``.

    Attributes:
        order: ``(B, N_pad)`` int64 token indices in sorted (then padded) order.
        attn: ``(B, n_chunks, w', nb·w')`` softmax weights of each sorted query over the keys
            of its neighbouring chunks (padded keys have weight 0).
        height, width: spatial size of the map it was computed on (``N = H·W``).
        chunk: ``w' = min(window, N)``.
        neighbours: ``nb = min(3, n_chunks)`` chunks attended by each chunk.
    """

    order: torch.Tensor
    attn: torch.Tensor
    height: int
    width: int
    chunk: int
    neighbours: int


def chunk_geometry(num_tokens: int, window: int) -> tuple[int, int, int, int]:
    """Chunking of ``num_tokens`` sorted tokens.

    Args:
        num_tokens: N >= 1.
        window: requested chunk length >= 1.

    Returns:
        ``(w', n_chunks, N_pad, nb)`` with ``w' = min(window, N)``, ``n_chunks = ceil(N / w')``,
        ``N_pad = n_chunks·w'`` and ``nb = min(3, n_chunks)``.

    Raises:
        ValueError: ``num_tokens`` or ``window`` is not an int >= 1.
    """
    require_int("num_tokens", num_tokens)
    require_int("window", window)
    w = min(window, num_tokens)
    nc = math.ceil(num_tokens / w)
    return w, nc, nc * w, min(3, nc)


def look_around(t: torch.Tensor, dim: int, neighbours: int) -> torch.Tensor:
    """Concatenate each chunk with its neighbours (circular).

    Args:
        t: a tensor whose dimension ``dim`` indexes chunks and ``dim + 1`` positions in a chunk.
        dim: the chunk dimension.
        neighbours: 1 (itself), 2 (itself, next) or 3 (previous, itself, next).

    Returns:
        ``t`` with dimension ``dim + 1`` grown ``neighbours`` times.
    """
    if neighbours == 1:
        return t
    parts = [t, t.roll(-1, dim)] if neighbours == 2 else [t.roll(1, dim), t, t.roll(-1, dim)]
    return torch.cat(parts, dim=dim + 1)


@OPERATORS.register("lcoa")
class LCoA(AttentionOp):
    """Learnable collaborative attention (LCoAN ``RecurrentNonLocalKmeansAttention``, R = 1).

    Args:
        channels: C.
        num_refs: accepted for the common contract; LCoA ignores ``refs``.
        reduction: embedding reduction, ``d = C / reduction`` (must divide C; default 4 as in
            NLSA — LCoAN's README trains with 1).
        n_clusters: M >= 1 centroids (default 128).
        window: chunk length w >= 1 (default 384); chunks are ``min(window, H·W)`` long.
        ema_decay: centroid EMA decay in ``[0, 1)`` (default 0.999).
        kmeans_iters: k-means iterations of the initialisation (default 10, >= 0).
        collaborative: reuse ``ctx["lcoa"]`` when present (see the module docstring).

    Raises:
        ValueError: a bad ``reduction`` (not an int >= 1 dividing ``channels``),
            ``n_clusters``, ``window``, ``ema_decay`` or ``kmeans_iters``.

    Shapes:
        ``forward(x (B, C, H, W), refs ignored, ctx dict | None) -> (B, C, H, W)``; cost
        ``O(N·3w'·(d + C))``.
    """

    uses_refs = False

    def __init__(
        self,
        channels: int,
        num_refs: int = 0,
        reduction: int = 4,
        n_clusters: int = 128,
        window: int = 384,
        ema_decay: float = 0.999,
        kmeans_iters: int = 10,
        collaborative: bool = False,
    ) -> None:
        super().__init__(channels, num_refs)
        self.dim = channels // _check_reduction(channels, reduction)
        self.reduction = reduction
        self.n_clusters = require_int("n_clusters", n_clusters)
        self.window = require_int("window", window)
        self.kmeans_iters = require_int("kmeans_iters", kmeans_iters, 0)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not (
            0 <= ema_decay < 1
        ):
            raise ValueError(f"ema_decay must be a number in [0, 1), got {ema_decay!r}")
        self.ema_decay = float(ema_decay)
        self.collaborative = bool(collaborative)
        c = channels
        self.conv_match = nn.Conv2d(c, self.dim, 3, padding=1)
        self.conv_assembly = nn.Conv2d(c, c, 1)
        self.proj = self.zero_proj(c)
        self.register_buffer("means", F.normalize(torch.randn(self.n_clusters, self.dim), dim=-1))
        self.register_buffer("initialized", torch.tensor(False))
        self.last_shared = False

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, dim={self.dim}, n_clusters={self.n_clusters}, "
                f"window={self.window}, ema_decay={self.ema_decay}, "
                f"collaborative={self.collaborative}")

    # ----------------------------------------------------------------------------- centroids
    @torch.no_grad()
    def _cluster_sums(self, flat: torch.Tensor, codes: torch.Tensor, means: torch.Tensor):
        sums = torch.zeros_like(means).index_add_(0, codes, flat.to(means.dtype))
        counts = torch.bincount(codes, minlength=means.shape[0])
        return sums, counts

    @torch.no_grad()
    def kmeans_init(self, qn: torch.Tensor) -> None:
        """Initialise ``means`` by spherical k-means (LCoAN ``init``): seeds are ``M`` random
        vectors of ``qn`` (with replacement when there are fewer), each of ``kmeans_iters``
        iterations assigns by maximum cosine similarity and sets each centroid to the normalised
        sum of its vectors (empty clusters keep their value). Sets ``initialized``.

        Args:
            qn: ``(..., d)`` unit-norm query vectors (the batch's tokens).
        """
        flat = qn.reshape(-1, self.dim).to(self.means.dtype)
        t = flat.shape[0]
        if t >= self.n_clusters:
            idx = torch.randperm(t, device=flat.device)[: self.n_clusters]
        else:
            idx = torch.randint(t, (self.n_clusters,), device=flat.device)
        means = flat[idx].clone()
        for _ in range(self.kmeans_iters):
            codes = (flat @ means.t()).argmax(dim=-1)
            sums, counts = self._cluster_sums(flat, codes, means)
            means = torch.where(counts[:, None] > 0, F.normalize(sums, dim=-1), means)
        self.means.copy_(means)
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, qn: torch.Tensor, codes: torch.Tensor) -> None:
        """Apply the centroid EMA in place:
        ``μ_m ← normalise(decay·μ_m + (1 - decay)·normalise(Σ_{i: c_i = m} qn_i))`` for every
        cluster with at least one token (others unchanged).

        Args:
            qn: ``(B, N, d)`` unit-norm queries.
            codes: ``(B, N)`` int64 cluster ids of ``qn``.
        """
        flat = qn.reshape(-1, self.dim)
        sums, counts = self._cluster_sums(flat, codes.reshape(-1), self.means)
        batch = F.normalize(sums, dim=-1)
        new = self.ema_decay * self.means + (1.0 - self.ema_decay) * batch
        self.means.copy_(torch.where(counts[:, None] > 0, F.normalize(new, dim=-1), self.means))

    # ----------------------------------------------------------------------------- attention
    def attention_map(self, x: torch.Tensor) -> LCoAMap:
        """Cluster, sort, chunk and compute the attention weights (the LSP part).

        In training mode this also initialises (first call) and EMA-updates ``means``.

        Args:
            x: ``(B, C, H, W)``.

        Returns:
            The :class:`LCoAMap` of ``x``.
        """
        b, _, h, w = x.shape
        n = h * w
        q = self.conv_match(x).flatten(2).transpose(1, 2)                # (B, N, d)
        qn = F.normalize(q, dim=-1)
        with torch.no_grad():
            if self.training and not bool(self.initialized):
                self.kmeans_init(qn)
            codes = torch.matmul(qn.detach(), self.means.t().to(qn.dtype)).argmax(dim=-1)
            if self.training:
                self.ema_update(qn.detach(), codes)
            order = torch.sort(codes, dim=-1, stable=True).indices       # (B, N)
        cw, nc, npad, nb = chunk_geometry(n, self.window)
        if npad > n:
            order = torch.cat([order, order[:, : npad - n]], dim=1)      # (B, N_pad)
        idx = order.unsqueeze(-1).expand(-1, -1, self.dim)
        qs = q.gather(1, idx).view(b, nc, cw, self.dim)
        ks = look_around(qn.gather(1, idx).view(b, nc, cw, self.dim), 1, nb)
        if npad > n:  # padded keys get -inf, as the matmul's added term (no pass over the scores)
            valid = torch.arange(npad, device=x.device).view(nc, cw) < n
            valid = look_around(valid, 0, nb)                            # (nc, nb·w')
            pad = torch.zeros(valid.shape, dtype=qs.dtype, device=x.device)
            pad = pad.masked_fill_(~valid, float("-inf")).unsqueeze(1).expand(b, -1, -1, -1)
            scores = torch.baddbmm(pad.reshape(b * nc, 1, -1), qs.reshape(b * nc, cw, -1),
                                   ks.reshape(b * nc, ks.shape[2], -1).transpose(1, 2))
            scores = scores.view(b, nc, cw, -1)                          # (B, nc, w', nb·w')
        else:
            scores = torch.matmul(qs, ks.transpose(-1, -2))              # (B, nc, w', nb·w')
        attn = torch.softmax(scores, dim=-1)
        return LCoAMap(order, attn, h, w, cw, nb)

    def aggregate(self, v: torch.Tensor, amap: LCoAMap) -> torch.Tensor:
        """Weighted sum of ``v`` with a (possibly shared) attention map (the CoA part).

        Args:
            v: ``(B, C, H, W)`` values.
            amap: the map to use.

        Returns:
            ``(B, C, H, W)``.
        """
        b, c, h, w = v.shape
        n = h * w
        order = amap.order
        nc = order.shape[1] // amap.chunk
        vs = v.flatten(2).transpose(1, 2)                                 # (B, N, C)
        vs = vs.gather(1, order.unsqueeze(-1).expand(-1, -1, c)).view(b, nc, amap.chunk, c)
        vwin = look_around(vs, 1, amap.neighbours)
        out = torch.matmul(amap.attn.to(vwin.dtype), vwin)               # (B, nc, w', C)
        out = out.reshape(b, -1, c)[:, :n]
        unsorted = torch.zeros_like(out).scatter(1, order[:, :n, None].expand(-1, -1, c), out)
        return unsorted.transpose(1, 2).reshape(b, c, h, w)

    def forward(
        self, x: torch.Tensor, refs: Sequence[torch.Tensor] = (), ctx: dict | None = None
    ) -> torch.Tensor:
        """``x + Proj(LCoA(x))``, sharing the attention map through ``ctx``.

        Args:
            x: ``(B, C, H, W)``.
            refs: ignored.
            ctx: the per-forward dict of the network (or ``None``): read/written under
                ``ctx["lcoa"]`` as described in the module docstring.

        Returns:
            ``(B, C, H, W)``.

        Raises:
            ValueError: ``x`` not ``(B, C, H, W)``, or a shared map computed for a different
                batch size or spatial size.
        """
        self.check_inputs(x, list(refs))
        shared = ctx.get(CTX_KEY) if (self.collaborative and ctx is not None) else None
        if shared is not None:
            b, _, h, w = x.shape
            if (shared.order.shape[0], shared.height, shared.width) != (b, h, w):
                raise ValueError(
                    f"ctx['{CTX_KEY}'] holds a map for batch {shared.order.shape[0]} and size "
                    f"{shared.height}x{shared.width}, but x is {tuple(x.shape)}"
                )
            amap = shared
        else:
            amap = self.attention_map(x)
            if ctx is not None and CTX_KEY not in ctx:
                ctx[CTX_KEY] = amap
        self.last_shared = shared is not None
        return x + self.proj(self.aggregate(self.conv_assembly(x), amap))

    @classmethod
    def flops(cls, channels: int, height: int, width: int, config: dict[str, Any]) -> int:
        """Forward FLOPs (= 2 x MACs) per image, per :mod:`nas.engine.flops`.

        With ``N = H·W``, ``d = C / reduction``, ``(w', n_chunks, N_pad, nb)`` from
        :func:`chunk_geometry` and ``T = N_pad·nb·w'`` query-key pairs::

            conv_match 3x3      2·N·C·d·9          (not on the shared path)
            cluster assignment  2·N·d·M            (matmul; not on the shared path)
            scores              2·T·d              (bmm; not on the shared path)
            softmax             3·T                (not on the shared path)
            conv_assembly       2·N·C²
            weighted sum        2·T·C              (bmm)
            projection          2·N·C²

        Args:
            config: constructor keywords plus ``shared`` (bool, default False): True counts the
                path that reuses ``ctx["lcoa"]``.

        Raises:
            ValueError: bad sizes or config values.
        """
        c = require_int("channels", channels)
        n = require_int("height", height) * require_int("width", width)
        d = c // _check_reduction(c, config.get("reduction", 4))
        m = require_int("n_clusters", config.get("n_clusters", 128))
        cw, _, npad, nb = chunk_geometry(n, require_int("window", config.get("window", 384)))
        t = npad * nb * cw
        total = 2 * n * c * c + 2 * t * c + 2 * n * c * c
        if not config.get("shared", False):
            total += 2 * n * c * d * 9 + 2 * n * d * m + 2 * t * d + 3 * t
        return total


def _check_reduction(channels: int, reduction: Any) -> int:
    require_int("reduction", reduction)
    if channels % reduction:
        raise ValueError(f"reduction={reduction} must divide channels={channels}")
    return reduction
