"""Sparse bilinear sampling + weighted sum for ACLA (arXiv 2203.03619) as one custom operator.

ACLA's attention result for query pixel ``p`` is ``Σ_s a_s(p) · Bilinear(V_{l(s)}, p + Δ_s(p))``:
``S`` key slots, each reading one of ``L`` value maps at a predicted sub-pixel point. A slot touches
the 4 pixels around its point, so the whole step is one sparse x dense matrix product ``A @ V``:
``A`` has one row per query pixel and 4 non-zeros per sampled slot (attention weight x bilinear
corner weight), ``V`` holds the value maps channels-last, one row per pixel.
:func:`bilinear_gather` builds ``A`` in CSR form and multiplies (MKL on the CPU, cuSPARSE on
CUDA); its backward is two more sparse products::

    dL/dV   = Aᵀ @ G                 (CSR of Aᵀ from one sort of the top-left corners)
    D[e]    = G[row e] · V[col e]    (sampled dense-dense product, one dot per non-zero)

and the gradients of the weights and of the fractional positions follow from ``D`` by the chain
rule through the bilinear corner weights. This replaces ``F.grid_sample`` (one call per
reference) followed by a batched ``(C x k) @ (k x 1)`` product, whose CPU backward
(``grid_sampler_2d_backward``) and tiny-matrix ``bmm`` dominated ACLA's time.

Layout: every value map carries a one-pixel zero border (:func:`bordered`), so a point whose 2x2
footprint overlaps the map reads its out-of-map corners as zeros with no bounds test; a point
whose footprint misses the map entirely is not sampled at all (it reads zero, like
``F.grid_sample(..., padding_mode="zeros")``). Only the kept ``(query, slot)`` pairs enter ``A``,
so the forward work and ``dL/dV`` follow the keys actually used (see ``keep`` and ``probe`` of
:func:`bilinear_gather` for the gradient of dropped pairs).

The operator is registered as ``torch.ops.acla_nas.bilinear_gather`` with a fake (meta) kernel
and an autograd formula, so it runs on the meta device and ``FlopCounterMode`` sees it as one op;
:func:`bilinear_gather_flop` (registered in :data:`nas.engine.flops.EXTRA_FLOP_FORMULAS`) counts it as
the ``grid_sample`` + ``bmm`` it replaces, for all ``S`` slots (a data-independent count).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["bordered", "corner_plan", "bilinear_gather", "bilinear_gather_flop", "plan_stats",
           "count_entries", "gather_dtype", "gather_flops"]

#: MACs per sampled value and slot charged by :func:`bilinear_gather_flop`: 4 for the bilinear
#: interpolation (as for ``grid_sample``), 1 for the weighted sum over slots (as for ``bmm``).
SAMPLE_MACS_PER_VALUE = 4
SUM_MACS_PER_VALUE = 1

#: entries gathered since the last :func:`plan_stats` reset (a test/debug hook):
#: ``forward`` = non-zeros of ``A`` in forward passes (4 per sampled pair), ``probe`` = dot
#: products for dropped pairs in backward passes (4 per pair). The fused kernel counts the same
#: (its probe: dropped pairs whose footprint is on the map).
_STATS = {"forward": 0, "probe": 0}


def plan_stats(reset: bool = False) -> dict[str, int]:
    """The entry counters of :func:`bilinear_gather` (a copy); ``reset`` zeroes them after
    reading. Debug/test helper, not thread-safe."""
    out = dict(_STATS)
    if reset:
        for k in _STATS:
            _STATS[k] = 0
    return out


def count_entries(forward: int = 0, probe: int = 0) -> None:
    """Add to the :func:`plan_stats` counters (for other sampling kernels that report the same
    quantities, e.g. :mod:`search_spaces.operators.acla_fused`)."""
    _STATS["forward"] += int(forward)
    _STATS["probe"] += int(probe)


# --------------------------------------------------------------------------------- bordering
class _Border(torch.autograd.Function):
    """Stack maps into a zero-bordered buffer; the backward returns views of the interior."""

    @staticmethod
    def forward(ctx, dtype, *maps):
        b, h, w, c = maps[0].shape
        out = maps[0].new_empty((len(maps), b, h + 2, w + 2, c), dtype=dtype)
        out[:, :, 0].zero_()
        out[:, :, h + 1].zero_()
        out[:, :, 1:h + 1, 0].zero_()
        out[:, :, 1:h + 1, w + 1].zero_()
        for i, mp in enumerate(maps):
            out[i, :, 1:h + 1, 1:w + 1] = mp
        ctx.dtypes = [mp.dtype for mp in maps]
        return out

    @staticmethod
    def backward(ctx, grad):
        h, w = grad.shape[2] - 2, grad.shape[3] - 2
        inner = grad[:, :, 1:h + 1, 1:w + 1]
        return (None, *(inner[i].to(dt) for i, dt in enumerate(ctx.dtypes)))


def bordered(maps: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """Stack channels-last maps into the zero-bordered layout :func:`bilinear_gather` reads.

    Args:
        maps: ``L`` tensors ``(B, H, W, C)`` (any strides, same shape).
        dtype: dtype of the result (default: that of ``maps[0]``).

    Returns:
        ``(L, B, H + 2, W + 2, C)`` with zeros on the one-pixel border; differentiable w.r.t.
        ``maps`` (the backward returns views, no copy).
    """
    return _Border.apply(dtype or maps[0].dtype, *maps)


# --------------------------------------------------------------------------------- planning
def corner_plan(dx: Tensor, dy: Tensor, keys: Sequence[int], dtype: torch.dtype | None = None):
    """Top-left corners and fractional positions of ACLA's sample points in the bordered layout.

    The sample point of slot ``s`` of query pixel ``(i, j)`` is ``(j + dx, i + dy)`` in pixels
    (pixel centres at integers); slot ``s`` reads value map ``l(s)`` (the first ``keys[0]``
    slots map 0, the next ``keys[1]`` map 1, ...).

    Args:
        dx, dy: ``(B, H, W, S)`` offsets in pixels (slot-last), ``S = sum(keys)``.
        keys: slot count per value map (each >= 1).
        dtype: floating dtype of ``fx``/``fy`` (default: ``promote_types(dx.dtype, float32)``).

    Returns:
        ``(base, fx, fy, inside)``, each ``(B, H, W, S)``: ``base`` (int32; int64 beyond 2**31
        rows) the row of the flattened bordered values (:func:`bordered`,
        ``(L·B·(H+2)·(W+2), C)``) holding the top-left corner; ``fx``, ``fy`` the position minus
        its floor (differentiable w.r.t. ``dx``/``dy`` with derivative 1: the one-sided
        convention of ``F.grid_sample``); ``inside`` (bool) whether the 2x2 footprint overlaps
        the map. A point whose footprint misses the map (or with a non-finite offset) gets
        ``base`` = the top-left border pixel of its map and ``fx = fy = 0``: it reads exactly 0
        with zero gradient, sampled or not.

    Raises:
        ValueError: ``dx``/``dy`` shapes differ or are not 4-D, or ``keys`` does not sum to S.
    """
    if dx.dim() != 4 or dx.shape != dy.shape:
        raise ValueError(f"dx, dy must be (B, H, W, S), got {tuple(dx.shape)}, {tuple(dy.shape)}")
    b, h, w, s = dx.shape
    if sum(keys) != s or any(k < 1 for k in keys):
        raise ValueError(f"keys must be counts >= 1 summing to S={s}, got {list(keys)}")
    dt = dtype or gather_dtype(dx)
    dx, dy = dx.to(dt), dy.to(dt)
    dev = dx.device
    plane = (h + 2) * (w + 2)
    itype = _index_dtype(len(keys) * b * plane)
    with torch.no_grad():
        fl_x, fl_y = torch.floor(dx), torch.floor(dy)
        # top-left corner in bordered coordinates: column j + 1 + floor(dx), row i + 1 + floor(dy)
        x0 = fl_x + torch.arange(1, w + 1, device=dev, dtype=dt)[:, None]
        y0 = fl_y + torch.arange(1, h + 1, device=dev, dtype=dt)[:, None, None]
        outside = ~((x0 >= 0) & (x0 <= w) & (y0 >= 0) & (y0 <= h))
        rel = torch.add(x0, y0, alpha=w + 2).masked_fill_(outside, 0).to(itype)
        slot_ref = torch.repeat_interleave(
            torch.arange(len(keys), device=dev, dtype=itype),
            torch.tensor(list(keys), device=dev), output_size=s)
        first = slot_ref * (b * plane) + (torch.arange(b, device=dev, dtype=itype) * plane)[:, None]
        base = rel.add_(first[:, None, None, :])
    fx = (dx - fl_x).masked_fill(outside, 0.0)
    fy = (dy - fl_y).masked_fill(outside, 0.0)
    return base, fx, fy, ~outside


# ---------------------------------------------------------------------------------- kernels
_CSR_WARNED = False


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix (columns need not be sorted within a row; duplicates add up)."""
    global _CSR_WARNED
    if not _CSR_WARNED:  # PyTorch warns once per process that CSR support is in beta
        _CSR_WARNED = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _index_dtype(*sizes: int) -> torch.dtype:
    return torch.int32 if max(sizes) < 2**31 - 1 else torch.int64


def _crow(counts: Tensor, itype: torch.dtype) -> Tensor:
    """Compressed row pointers of rows holding ``counts[r]`` entries."""
    crow = torch.zeros(counts.numel() + 1, dtype=itype, device=counts.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


def _coefs(fx: Tensor, fy: Tensor, a: Tensor) -> list[Tensor]:
    """Corner coefficients ``a · bilinear weight``, corners in the order of :func:`_shifts`."""
    a1 = a * fy
    a0 = a - a1
    c1 = a0 * fx
    c3 = a1 * fx
    return [a0 - c1, c1, a1 - c3, c3]


def _shifts(width: int) -> tuple[int, int, int, int]:
    """Row offsets of the 4 corners from the top-left one (bordered width W + 2)."""
    return 0, 1, width + 2, width + 3


class _Pairs:
    """The sampled (query, slot) pairs, in ``(b, i, j, s)`` order, i.e. grouped by query (the
    rows of ``A``): corner row ``base`` and ``fx``, ``fy``, weight ``a``, each ``(P,)``."""

    def __init__(self, base: Tensor, fx: Tensor, fy: Tensor, weights: Tensor,
                 keep: Tensor | None, dt: torch.dtype) -> None:
        b, h, w, s = weights.shape
        self.q, self.s = b * h * w, s
        flat = [base.reshape(-1), fx.reshape(-1).to(dt), fy.reshape(-1).to(dt),
                weights.reshape(-1).to(dt)]
        if keep is None:
            self.index = None
            self.counts = torch.full((self.q,), s, dtype=base.dtype, device=base.device)
        else:
            self.index = keep.reshape(-1).nonzero().squeeze(1)
            self.counts = keep.sum(-1, dtype=base.dtype).view(-1)
            flat = [t.index_select(0, self.index) for t in flat]
        self.base, self.fx, self.fy, self.a = flat

    def __len__(self) -> int:
        return self.base.numel()

    def row(self) -> Tensor:
        """Query row of each pair."""
        if self.index is None:
            return torch.arange(self.q, device=self.base.device).repeat_interleave(self.s)
        return torch.div(self.index, self.s, rounding_mode="floor")

    def matrices(self, coefs: Sequence[Tensor], num_cols: int) -> list[Tensor]:
        """One CSR matrix per corner (``Q x num_cols``, one entry per pair at column ``base``);
        corner ``k`` multiplies the values shifted by ``_shifts(W)[k]`` rows."""
        crow = _crow(self.counts, self.base.dtype)
        return [_csr(crow, self.base, c, (self.q, num_cols)) for c in coefs]


def _check(values: Tensor, base: Tensor, fx: Tensor, fy: Tensor, weights: Tensor,
           keep: Tensor | None) -> None:
    if values.dim() != 5 or weights.dim() != 4:
        raise ValueError(f"values must be (L, B, H+2, W+2, C) and weights (B, H, W, S), got "
                         f"{tuple(values.shape)} and {tuple(weights.shape)}")
    b, h, w, _ = weights.shape
    if tuple(values.shape[1:4]) != (b, h + 2, w + 2):
        raise ValueError(f"values must be (L, {b}, {h + 2}, {w + 2}, C) for weights "
                         f"{tuple(weights.shape)}, got {tuple(values.shape)}")
    for name, t in (("base", base), ("fx", fx), ("fy", fy)):
        if t.shape != weights.shape:
            raise ValueError(f"{name} must have the shape of weights {tuple(weights.shape)}, "
                             f"got {tuple(t.shape)}")
    if base.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"base must be an int32/int64 tensor, got {base.dtype}")
    if keep is not None and (keep.dtype != torch.bool or keep.shape != weights.shape):
        raise ValueError(f"keep must be a bool tensor of shape {tuple(weights.shape)}, got "
                         f"{keep.dtype} {tuple(keep.shape)}")


def gather_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a gather kernel (this one, or the fused one of
    :mod:`search_spaces.operators.acla_fused`) computes and returns in: the promotion of the float
    inputs' dtypes and float32 (bfloat16/half compute in float32, float64 stays float64)."""
    out = torch.float32
    for t in tensors:
        out = torch.promote_types(out, t.dtype)
    return out


def gather_flops(b: int, h: int, w: int, s: int, c: int) -> int:
    """FLOPs (= 2 x MACs) charged for gathering ``S`` slots of ``C`` channels at ``B·H·W``
    queries, whatever the kernel: ``2·(4 + 1)·B·H·W·S·C``, the ``grid_sample`` (4 MACs per
    sampled value) and the ``bmm`` (1 MAC per sampled value and slot) the gather replaces."""
    return 2 * (SAMPLE_MACS_PER_VALUE + SUM_MACS_PER_VALUE) * b * h * w * s * c


@torch.library.custom_op("acla_nas::bilinear_gather", mutates_args=())
def _bilinear_gather(values: Tensor, base: Tensor, fx: Tensor, fy: Tensor, weights: Tensor,
                     keep: Tensor | None, probe: bool) -> Tensor:
    _check(values, base, fx, fy, weights, keep)
    with torch.autocast(values.device.type, enabled=False):  # the kernel picks its own dtype
        dt = gather_dtype(values, fx, weights)
        num_refs, b, hp, wp, c = values.shape
        vals = values.to(dt).reshape(-1, c)
        mc = vals.shape[0] - (wp + 1)  # top-left corners lie in rows [0, M - W - 3)
        pairs = _Pairs(base, fx, fy, weights, keep, dt)
        _STATS["forward"] += 4 * len(pairs)
        out = None
        for mat, d in zip(pairs.matrices(_coefs(pairs.fx, pairs.fy, pairs.a), mc),
                          _shifts(wp - 2)):
            if out is None:
                out = mat @ vals[d:d + mc]
            else:
                out.addmm_(mat, vals[d:d + mc])
        return out.view(b, hp - 2, wp - 2, c)


@_bilinear_gather.register_fake
def _(values, base, fx, fy, weights, keep, probe):
    _check(values, base, fx, fy, weights, keep)
    _, b, hp, wp, c = values.shape
    return values.new_empty((b, hp - 2, wp - 2, c), dtype=gather_dtype(values, fx, weights))


def _setup_context(ctx, inputs, output) -> None:
    values, base, fx, fy, weights, keep, probe = inputs
    ctx.save_for_backward(values, base, fx, fy, weights, keep)
    ctx.probe = probe


def _backward(ctx, grad_out: Tensor):
    with torch.autocast(grad_out.device.type, enabled=False):
        return _backward_impl(ctx, grad_out)


def _backward_impl(ctx, grad_out: Tensor):
    values, base, fx, fy, weights, keep = ctx.saved_tensors
    need_v, _, need_fx, need_fy, need_w = ctx.needs_input_grad[:5]
    num_refs, b, hp, wp, c = values.shape
    shifts = _shifts(wp - 2)
    dt = gather_dtype(values, fx, weights)
    g = grad_out.to(dt).reshape(-1, c).contiguous()
    vals = values.to(dt).reshape(-1, c)
    m = vals.shape[0]
    mc = m - (wp + 1)
    pairs = _Pairs(base, fx, fy, weights, keep, dt)
    grad_v = grad_fx = grad_fy = grad_w = None
    if need_v:
        # dL/dV = Aᵀ G, corner by corner: sorting the pairs by top-left corner once gives the
        # CSR of Aᵀ for every corner (corner k lands shifts[k] rows further).
        base_sorted, order = torch.sort(pairs.base)
        crow_t = _crow(torch.bincount(base_sorted, minlength=mc).to(base.dtype), base.dtype)
        col_t = pairs.row().to(base.dtype).index_select(0, order)
        coef_t = torch.stack(_coefs(pairs.fx, pairs.fy, pairs.a)).index_select(1, order)
        gv = torch.zeros(m, c, dtype=dt, device=g.device)
        for k, d in enumerate(shifts):
            gv[d:d + mc].addmm_(_csr(crow_t, col_t, coef_t[k], (mc, pairs.q)), g)
        grad_v = gv.view(values.shape).to(values.dtype)
    if need_fx or need_fy or need_w:
        # D_k[e] = G[row e] · V[base e + shifts[k]]: with ``probe`` for every pair (dropped ones
        # included, their weight gradient is needed), otherwise for the sampled pairs only.
        dense = keep is None or ctx.probe
        src = _Pairs(base, fx, fy, weights, None, dt) if dense else pairs
        if dense and keep is not None:
            _STATS["probe"] += 4 * (len(src) - len(pairs))
        # in place (out = the pattern itself; sampled_addmm otherwise clones its input), on
        # zeros: beta = 0 still multiplies the old values (0 * NaN = NaN)
        dots = src.matrices(torch.zeros(len(shifts), len(src), dtype=dt, device=g.device), mc)
        for mat, d in zip(dots, shifts):
            torch.sparse.sampled_addmm(mat, g, vals[d:d + mc].t(), beta=0.0, out=mat)
        d0, d1, d2, d3 = (mat.values() for mat in dots)
        # sample = lerp(lerp(V0, V1, fx), lerp(V2, V3, fx), fy): differentiate the lerps
        top, bottom = torch.lerp(d0, d1, src.fx), torch.lerp(d2, d3, src.fx)
        grads = {}
        if need_w:
            grads["w"] = torch.lerp(top, bottom, src.fy)
        if need_fy:
            grads["fy"] = src.a * (bottom - top)
        if need_fx:
            grads["fx"] = src.a * torch.lerp(d1 - d0, d3 - d2, src.fy)
        for name, t in grads.items():
            if not dense:
                t = torch.zeros(weights.numel(), dtype=dt, device=g.device).index_copy_(
                    0, pairs.index, t)
            grads[name] = t.view(weights.shape)
        if need_w:
            grad_w = grads["w"].to(weights.dtype)
        if need_fx:
            grad_fx = grads["fx"].to(fx.dtype)
        if need_fy:
            grad_fy = grads["fy"].to(fy.dtype)
    return grad_v, None, grad_fx, grad_fy, grad_w, None, None


_bilinear_gather.register_autograd(_backward, setup_context=_setup_context)


def bilinear_gather(values: Tensor, base: Tensor, fx: Tensor, fy: Tensor, weights: Tensor,
                    keep: Tensor | None = None, probe: bool = False) -> Tensor:
    """``out[b, i, j] = Σ_s weights[b, i, j, s] · sample[b, i, j, s]`` (bilinear samples).

    With ``V = values.reshape(-1, C)`` (rows of the bordered maps, :func:`bordered`), ``r =
    base[b, i, j, s]`` and ``(x, y) = (fx, fy)[b, i, j, s]``, the sample is
    ``(1-y)(1-x)·V[r] + (1-y)x·V[r+1] + y(1-x)·V[r+W+2] + yx·V[r+W+3]``: bilinear interpolation
    in the cell whose top-left corner is row ``r`` of a map of width ``W + 2``
    (:func:`corner_plan` computes ``base``/``fx``/``fy`` for ACLA's sample points).

    Only the pairs with ``keep`` True are sampled (``None``: all). Dropped pairs contribute
    nothing to the output, ``dL/dvalues``, ``dL/dfx`` or ``dL/dfy``. Their ``dL/dweights`` is
    the exact ``G · sample`` when ``probe`` is True (computed in the backward only, one dot
    product per corner; ACLA's straight-through estimator of its keep/drop logits needs it) and
    0 when ``probe`` is False (the caller's weights do not depend on it there, e.g. a fixed key
    mask, whose masked softmax has zero derivative at dropped slots).

    Args:
        values: ``(L, B, H + 2, W + 2, C)`` bordered value maps (float).
        base: ``(B, H, W, S)`` (slot-last, like every per-slot argument) int32/int64 row of the
            top-left corner, in ``[0, L·B·(H+2)·(W+2) - W - 3)`` (every entry, sampled or not).
        fx, fy: ``(B, H, W, S)`` fractional positions in ``[0, 1)`` (float).
        weights: ``(B, H, W, S)`` attention weights (float).
        keep: optional ``(B, H, W, S)`` bool: the pairs to sample.
        probe: compute ``dL/dweights`` of dropped pairs (see above).

    Returns:
        ``(B, H, W, C)`` in ``promote_types(dtype, float32)`` of the float inputs (bfloat16/half
        are computed in float32, float64 stays float64). Differentiable w.r.t. ``values``,
        ``fx``, ``fy`` and ``weights``.

    Raises:
        ValueError: inconsistent shapes, ``base`` not int32/int64 or ``keep`` not bool.
    """
    return _bilinear_gather(values, base, fx, fy, weights, keep, bool(probe))


def bilinear_gather_flop(values_shape, base_shape, fx_shape, fy_shape, weights_shape, *args,
                         out_shape=None, **kwargs) -> int:
    """FLOPs (= 2 x MACs) charged for :func:`bilinear_gather`, for all ``S`` slots
    (:func:`gather_flops`). Called by ``FlopCounterMode`` with shapes."""
    b, h, w, s = weights_shape
    return gather_flops(b, h, w, s, values_shape[-1])
