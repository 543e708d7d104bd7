"""Naive reference implementations of the operators, for tests only.

Written independently of the fast code: plain Python loops over pixels, explicit per-pixel
matrix-vector products and explicit dense attention matrices; no ``F.conv2d``, ``grid_sample``,
``gather``/``scatter`` or batched matmuls. Each function reads the module's weights from a
``state_dict`` and its constructor config, never calls the module, and is meant for tiny inputs
(e.g. 8 channels, 6x5 pixels) in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def conv2d_ref(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int = 1) -> Tensor:
    """Stride-1 'same' convolution (zero padding ``k // 2``) by loops over pixels and taps.

    Args:
        x: ``(B, Cin, H, W)``.
        weight: ``(Cout, Cin / groups, k, k)`` with odd ``k``.
        bias: ``(Cout,)`` or ``None``.
        groups: channel groups (``groups == Cin`` is a depthwise conv).

    Returns:
        ``(B, Cout, H, W)``.
    """
    b, cin, h, w = x.shape
    cout, cg, k, _ = weight.shape
    og = cout // groups
    p = k // 2
    out = torch.zeros(b, cout, h, w, dtype=x.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                acc = torch.zeros(cout, dtype=x.dtype) if bias is None else bias.clone()
                for ky in range(k):
                    for kx in range(k):
                        ii, jj = i + ky - p, j + kx - p
                        if not (0 <= ii < h and 0 <= jj < w):
                            continue
                        for gi in range(groups):
                            xin = x[n, gi * cg:(gi + 1) * cg, ii, jj]
                            wk = weight[gi * og:(gi + 1) * og, :, ky, kx]
                            acc[gi * og:(gi + 1) * og] += wk @ xin
                out[n, :, i, j] = acc
    return out


def bilinear_ref(v: Tensor, py: float, px: float) -> Tensor:
    """Bilinear value of ``v`` ``(C, H, W)`` at pixel-centre coordinates ``(py, px)``; corners
    outside the map contribute zero.

    Returns:
        ``(C,)``.
    """
    _, h, w = v.shape
    y0, x0 = math.floor(py), math.floor(px)
    fy, fx = py - y0, px - x0
    out = torch.zeros(v.shape[0], dtype=v.dtype)
    for yy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * v[:, yy, xx]
    return out


def _linear(sd: dict[str, Tensor], name: str, vec: Tensor) -> Tensor:
    """A 1x1 conv ``name`` applied to one pixel's vector."""
    return sd[f"{name}.weight"][:, :, 0, 0] @ vec + sd[f"{name}.bias"]


def acla_ref(
    sd: dict[str, Tensor],
    config: dict[str, Any],
    x: Tensor,
    refs: Sequence[Tensor],
    active_keys: Sequence[int] | None = None,
    key_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """ACLA in eval mode (deterministic keep rule ``mask logit > 0``, plus the best slot).

    Args:
        sd: the module's ``state_dict``.
        config: constructor keywords (``keys``, ``adaptive``).
        x: ``(B, C, H, W)``; refs: L maps of the same shape.
        active_keys: first-``k`` slots per reference (default: all).
        key_mask: optional fixed bool keep mask ``(B, S_active, H, W)``.

    Returns:
        ``(y (B, C, H, W), weights (B, S_active, H, W))``.
    """
    keys = list(config["keys"])
    active = list(keys if active_keys is None else active_keys)
    adaptive = config.get("adaptive", True)
    b, c, h, w = x.shape
    starts = [sum(keys[:i]) for i in range(len(keys))]
    slots = [(r, starts[r] + k) for r in range(len(keys)) for k in range(active[r])]
    projected = {
        r: conv2d_ref(refs[r], sd["conv_refer.weight"], sd["conv_refer.bias"])
        for r in range(len(keys)) if active[r] > 0
    }
    y = x.clone()
    weights = torch.zeros(b, len(slots), h, w, dtype=x.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                q = x[n, :, i, j]
                off = _linear(sd, "conv_offset", q)
                logit = _linear(sd, "conv_logit", q)
                if key_mask is not None:
                    keep = [bool(key_mask[n, t, i, j]) for t in range(len(slots))]
                elif adaptive:
                    ml = _linear(sd, "conv_mask", q)
                    vals = [float(ml[s]) for _, s in slots]
                    best = max(vals)
                    keep = [v > 0 or v == best for v in vals]
                else:
                    keep = [True] * len(slots)
                kept_logits = [float(logit[s]) for t, (_, s) in enumerate(slots) if keep[t]]
                mx = max(kept_logits)
                z = sum(math.exp(v - mx) for v in kept_logits)
                agg = torch.zeros(c, dtype=x.dtype)
                for t, (r, s) in enumerate(slots):
                    if not keep[t]:
                        continue
                    a = math.exp(float(logit[s]) - mx) / z
                    weights[n, t, i, j] = a
                    dx, dy = float(off[2 * s]), float(off[2 * s + 1])
                    agg += a * bilinear_ref(projected[r][n], i + dy, j + dx)
                y[n, :, i, j] += _linear(sd, "proj", agg)
    return y, weights


def _phi(t: Tensor, kind: str) -> Tensor:
    return torch.where(t > 0, t + 1.0, torch.exp(t)) if kind == "elu" else t.clamp(min=0)


def rela_ref(sd: dict[str, Tensor], config: dict[str, Any], x: Tensor) -> Tensor:
    """RELA with an explicit ``N x N`` (unnormalised) kernel matrix per head.

    ``out_i = Σ_j (φq_i·φk_j) v_j / (Σ_j φq_i·φk_j + N·eps) + DWConv(V)_i``.

    Returns:
        ``(B, C, H, W)``.
    """
    heads = config.get("heads", 4)
    kind = config.get("feature_map", "elu")
    eps = config.get("eps", 1e-6)
    b, c, h, w = x.shape
    n, d = h * w, c // heads
    qkv = conv2d_ref(x, sd["qkv.weight"], sd["qkv.bias"])
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    dw = conv2d_ref(v, sd["dwconv.weight"], sd["dwconv.bias"], groups=c)
    y = x.clone()
    for bb in range(b):
        tokens = [(i, j) for i in range(h) for j in range(w)]
        r = dw[bb].clone()
        for hd in range(heads):
            ch = slice(hd * d, (hd + 1) * d)
            fq = [_phi(q[bb, ch, i, j], kind) for i, j in tokens]
            fk = [_phi(k[bb, ch, i, j], kind) for i, j in tokens]
            vv = [v[bb, ch, i, j] for i, j in tokens]
            a = torch.zeros(n, n, dtype=x.dtype)
            for s in range(n):
                for t in range(n):
                    a[s, t] = fq[s] @ fk[t]
            for s, (i, j) in enumerate(tokens):
                num = sum(a[s, t] * vv[t] for t in range(n))
                r[ch, i, j] += num / (a[s].sum() + n * eps)
        for i in range(h):
            for j in range(w):
                y[bb, :, i, j] += _linear(sd, "proj", r[:, i, j])
    return y


def nla_ref(sd: dict[str, Tensor], config: dict[str, Any], x: Tensor) -> Tensor:
    """Non-local attention with an explicit ``N x N`` softmax matrix.

    Returns:
        ``(B, C, H, W)``.
    """
    b, c, h, w = x.shape
    d = c // config.get("reduction", 2)
    y = x.clone()
    tokens = [(i, j) for i in range(h) for j in range(w)]
    for bb in range(b):
        e = [_linear(sd, "embed", x[bb, :, i, j]) for i, j in tokens]
        theta, phi, g = [t[:d] for t in e], [t[d:2 * d] for t in e], [t[2 * d:] for t in e]
        for s, (i, j) in enumerate(tokens):
            logits = [float(theta[s] @ phi[t]) for t in range(len(tokens))]
            mx = max(logits)
            ex = [math.exp(v - mx) for v in logits]
            z = sum(ex)
            o = sum((ex[t] / z) * g[t] for t in range(len(tokens)))
            y[bb, :, i, j] += _linear(sd, "proj", o)
    return y


def lcoa_ref(sd: dict[str, Tensor], config: dict[str, Any], x: Tensor) -> Tensor:
    """LCoA in eval mode with the module's current centroids ``sd["means"]``.

    Tokens (row-major) are stably sorted by cluster id; sorted position ``p`` (chunk ``p // w'``)
    attends to every real token whose sorted position lies in chunks ``{c-1, c, c+1} mod
    n_chunks``; logits ``q_i · q_j / |q_j|``.

    Returns:
        ``(B, C, H, W)``.
    """
    b, c, h, w = x.shape
    window = config.get("window", 384)
    means = sd["means"].to(x.dtype)
    q = conv2d_ref(x, sd["conv_match.weight"], sd["conv_match.bias"])
    v = conv2d_ref(x, sd["conv_assembly.weight"], sd["conv_assembly.bias"])
    n = h * w
    cw = min(window, n)
    nc = -(-n // cw)
    tokens = [(i, j) for i in range(h) for j in range(w)]
    y = x.clone()
    for bb in range(b):
        qt = [q[bb, :, i, j] for i, j in tokens]
        kt = [t / max(float(t.norm()), 1e-12) for t in qt]
        codes = [int(torch.argmax(torch.stack([kt[t] @ mu for mu in means]))) for t in range(n)]
        order = sorted(range(n), key=lambda t: codes[t])
        for p in range(n):
            ch = p // cw
            chunks = {(ch + o) % nc for o in (-1, 0, 1)}
            keys = [pp for cc in sorted(chunks) for pp in range(cc * cw, (cc + 1) * cw) if pp < n]
            qi = qt[order[p]]
            logits = [float(qi @ kt[order[pp]]) for pp in keys]
            mx = max(logits)
            ex = [math.exp(val - mx) for val in logits]
            z = sum(ex)
            o = sum((ex[t] / z) * v[bb, :, tokens[order[pp]][0], tokens[order[pp]][1]]
                    for t, pp in enumerate(keys))
            i, j = tokens[order[p]]
            y[bb, :, i, j] += _linear(sd, "proj", o)
    return y
