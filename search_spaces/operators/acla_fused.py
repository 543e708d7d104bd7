"""ACLA's attention core (arXiv 2203.03619) as one fused CPU kernel.

For query pixel ``(i, j)`` of batch item ``b``::

    out[b, i, j, :] = Σ_s keep[b, s, i, j] · w[b, s, i, j] · Bilinear(V[l(s), b], (j + dx, i + dy))

with ``dx = dx[b, s, i, j]``, ``dy`` likewise (pixels, pixel centres at integers), zero padding
outside the map (``F.grid_sample(..., align_corners=False, padding_mode="zeros")``) and slot ``s``
reading value map ``l(s)`` (the first ``keys[0]`` slots map 0, the next ``keys[1]`` map 1, ...).

Two operators share the kernel's loops (``csrc/acla_gather.cpp``):

* :func:`attend` - what ``ACLA`` runs on the CPU: from the query convolution's output it takes
  the keep decision, the softmax over the kept slots and the weighted sum in one call, and its
  backward returns the gradient of that output in one tensor (the softmax's own gradient and the
  straight-through gradient of the keep logits included). Per row of queries the keep decision
  and the softmax are vectorised across the row (a polynomial ``exp`` in float32); per query the
  gather follows.
* :func:`deform_gather` - the sampling and weighted sum alone, for given weights and keep mask
  (the building block; ``experiments/bench/acla_breakdown.py`` times it).

The gather walks the queries once: per kept slot it computes the bilinear footprint and adds the
4 weighted corner rows of channels-last ``V`` into the output row, so a dropped key costs one mask
read and nothing else. Its backward walks them again: 4 dot products ``G · V[corner]`` per slot
give ``dL/dw``, ``dL/ddx`` and ``dL/ddy`` through the bilinear weights, and ``dL/dV`` is scattered
back with the same coefficients (parallel over the batch, so no two threads write one map). It
replaces, on the CPU, the path of :mod:`search_spaces.operators.acla_sampling` plus the keep and
softmax operators (about 20 PyTorch operators for the gather and about 10 more for the keep
decision and the softmax, whose fixed costs dominate at restoration-patch sizes); both compute
the same function.

The C++ source is compiled on first use with ``torch.utils.cpp_extension.load`` (a C++ compiler
and ninja are needed; about 15 s, cached in ``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``, one build per source, torch version and CPU model, since it is
built with ``-march=native``). If the build fails, :func:`fused_available` is False, one warning
says why and ACLA uses the sparse path. ``ACLA_NAS_KERNEL=sparse`` skips the build.

The operators are registered as ``torch.ops.acla_nas.attend`` and ``torch.ops.acla_nas.deform_gather``
with fake (meta) kernels and autograd formulas. :data:`nas.engine.flops.EXTRA_FLOP_FORMULAS` counts
them as the operators they replace, for every slot (data-independent): ``deform_gather`` as
``grid_sample`` + ``bmm`` (:func:`deform_gather_flop`), ``attend`` as that plus ``softmax``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from search_spaces.operators.acla_sampling import count_entries, gather_dtype, gather_flops

__all__ = ["attend", "block", "deform_gather", "deform_gather_flop", "fused_available", "SOURCE"]

#: the C++ source of the kernel (shipped as package data).
SOURCE = Path(__file__).with_name("csrc") / "acla_gather.cpp"
#: environment variable: ``sparse`` never builds the kernel (ACLA then uses the sparse path).
ENV = "ACLA_NAS_KERNEL"
# tried in this order; -fno-trapping-math -fno-math-errno let GCC vectorise the core's softmax
# rows (if-conversion of the exp's selects), without changing any IEEE result
_FLAGS = (["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"], ["-O3"])
_STATE: dict[str, object] = {}

# The kernel's forward, declared before the build so that the op exists for the FLOP counter
# (nas.engine.flops keys a formula on it); the compiled source registers its CPU kernel. block()
# calls it directly: through the acla_nas::attend wrapper a call cost about 0.2 ms more.
ATTEND_FORWARD_SCHEMA = ("attend_forward(Tensor q, Tensor values, Tensor? noise, Tensor? key_mask, "
                         "bool adaptive, int[] keys) -> (Tensor, Tensor, Tensor, int)")
_LIB = torch.library.Library("acla_nas_cpu", "FRAGMENT")
_LIB.define(ATTEND_FORWARD_SCHEMA)


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _build_dir(name: str) -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / name


def _build() -> str | None:
    """Compile and load the kernel; ``None`` on success, else why not (one line)."""
    from torch.utils.cpp_extension import load

    try:
        src = SOURCE.read_bytes()
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    reason = None
    for flags in _FLAGS:
        key = hashlib.sha256(src + torch.__version__.encode() + " ".join(flags).encode()
                             + _cpu_identity().encode()).hexdigest()[:12]
        name = f"acla_nas_cpu_{key}"
        where = _build_dir(name)
        try:
            where.mkdir(parents=True, exist_ok=True)
            if not (where / f"{name}.so").exists():
                print(f"acla-nas: building ACLA's CPU kernel in {where} (once, about 15 s)",
                      file=sys.stderr, flush=True)
            ld = ["-fopenmp"] if "-fopenmp" in flags else []
            load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=ld,
                 build_directory=str(where), is_python_module=False, verbose=False)
            torch.ops.acla_nas_cpu.deform_gather_forward  # noqa: B018 - raises if not registered
            return None
        except Exception as err:  # noqa: BLE001 - any build/load failure means: fall back
            msg = str(err).strip().splitlines()
            reason = f"{type(err).__name__}: {msg[-1] if msg else ''}"[:300]
    return reason


def fused_available() -> bool:
    """Whether the fused CPU kernel is built and loaded (builds it on the first call, see the
    module docstring; ``False`` with one warning if that fails, or when ``ACLA_NAS_KERNEL`` is
    ``sparse``)."""
    if "ok" not in _STATE:
        if os.environ.get(ENV, "").strip().lower() == "sparse":
            _STATE["ok"] = False
        else:
            reason = _build()
            _STATE["ok"] = reason is None
            if reason is not None:
                warnings.warn(f"ACLA's fused CPU kernel could not be built ({reason}); ACLA "
                              f"uses the slower sparse path (set {ENV}=sparse to skip the build)",
                              RuntimeWarning, stacklevel=2)
    return bool(_STATE["ok"])


def _check(values: Tensor, dx: Tensor, dy: Tensor, weights: Tensor, keep: Tensor | None,
           keys: Sequence[int]) -> None:
    if values.dim() != 5 or weights.dim() != 4:
        raise ValueError(f"values must be (L, B, H, W, C) and weights (B, S, H, W), got "
                         f"{tuple(values.shape)} and {tuple(weights.shape)}")
    num_refs, b, h, w, _ = values.shape
    if (weights.shape[0], weights.shape[2], weights.shape[3]) != (b, h, w):
        raise ValueError(f"weights (B, S, H, W) {tuple(weights.shape)} do not match values "
                         f"(L, B, H, W, C) {tuple(values.shape)}")
    for name, t in (("dx", dx), ("dy", dy)):
        if t.shape != weights.shape:
            raise ValueError(f"{name} must have the shape of weights {tuple(weights.shape)}, "
                             f"got {tuple(t.shape)}")
    if keep is not None and (keep.dtype != torch.bool or keep.shape != weights.shape):
        raise ValueError(f"keep must be a bool tensor of shape {tuple(weights.shape)}, got "
                         f"{keep.dtype} {tuple(keep.shape)}")
    if len(keys) != num_refs or any(k < 1 for k in keys) or sum(keys) != weights.shape[1]:
        raise ValueError(f"keys must be {num_refs} counts >= 1 summing to S={weights.shape[1]}, "
                         f"got {list(keys)}")


def _slots(t: Tensor, dt: torch.dtype) -> Tensor:
    """``t`` in dtype ``dt`` with its last three dimensions contiguous (the kernel's layout)."""
    t = t.to(dt)
    _, s, h, w = t.shape
    if t.stride(3) != 1 or t.stride(2) != w or t.stride(1) != h * w:
        t = t.contiguous()
    return t


def _keep(keep: Tensor | None) -> Tensor | None:
    return None if keep is None else _slots(keep, torch.bool)


@torch.library.custom_op("acla_nas::deform_gather", mutates_args=())
def _deform_gather(values: Tensor, dx: Tensor, dy: Tensor, weights: Tensor, keep: Tensor | None,
                   keys: list[int], probe: bool) -> Tensor:
    _check(values, dx, dy, weights, keep, keys)
    if values.device.type != "cpu" or not fused_available():
        raise RuntimeError("acla_nas::deform_gather runs on the CPU with the fused kernel built "
                           "(fused_available()); use the sparse path otherwise")
    with torch.autocast("cpu", enabled=False):
        dt = gather_dtype(values, dx, weights)
        out, sampled = torch.ops.acla_nas_cpu.deform_gather_forward(
            values.to(dt).contiguous(), _slots(dx, dt), _slots(dy, dt), _slots(weights, dt),
            _keep(keep), list(keys))
    count_entries(forward=4 * sampled)
    return out


@_deform_gather.register_fake
def _(values, dx, dy, weights, keep, keys, probe):
    _check(values, dx, dy, weights, keep, keys)
    _, b, h, w, c = values.shape
    return values.new_empty((b, h, w, c),
                            dtype=gather_dtype(values, dx, weights))


def _setup_context(ctx, inputs, output) -> None:
    values, dx, dy, weights, keep, keys, probe = inputs
    ctx.save_for_backward(values, dx, dy, weights, keep)
    ctx.keys, ctx.probe = list(keys), probe


def _backward(ctx, grad: Tensor):
    values, dx, dy, weights, keep = ctx.saved_tensors
    need_v, need_x, need_y, need_w = ctx.needs_input_grad[:4]
    with torch.autocast("cpu", enabled=False):
        dt = gather_dtype(values, dx, weights)
        (g_v, g_x, g_y, g_w), probed = torch.ops.acla_nas_cpu.deform_gather_backward(
            grad.to(dt).contiguous(), values.to(dt).contiguous(), _slots(dx, dt), _slots(dy, dt),
            _slots(weights, dt), _keep(keep), ctx.keys, ctx.probe, need_v, need_x, need_y,
            need_w)
    count_entries(probe=4 * probed)
    out = []
    for need, g, t in ((need_v, g_v, values), (need_x, g_x, dx), (need_y, g_y, dy),
                       (need_w, g_w, weights)):
        out.append(g.to(t.dtype) if need else None)
    return (*out, None, None, None)


_deform_gather.register_autograd(_backward, setup_context=_setup_context)


def deform_gather(values: Tensor, dx: Tensor, dy: Tensor, weights: Tensor,
                  keep: Tensor | None, keys: Sequence[int], probe: bool = False) -> Tensor:
    """ACLA's weighted sum of bilinear samples (module docstring) by the fused CPU kernel.

    Only the slots with ``keep`` True are sampled (``None``: all). Dropped slots contribute
    nothing to the output, ``dL/dvalues``, ``dL/ddx`` or ``dL/ddy``; their ``dL/dweights`` is the
    exact ``G · sample`` when ``probe`` is True (ACLA's straight-through estimator of its
    keep/drop logits needs it) and 0 otherwise. A point whose 2x2 footprint misses the map, or
    with a non-finite offset, reads 0 with zero gradient.

    Args:
        values: ``(L, B, H, W, C)`` value maps, channels last (float).
        dx, dy: ``(B, S, H, W)`` offsets in pixels, ``S = sum(keys)`` (float, any batch stride).
        weights: ``(B, S, H, W)`` attention weights (float).
        keep: optional ``(B, S, H, W)`` bool: the slots to sample.
        keys: slot count per value map (each >= 1, one per map).
        probe: compute ``dL/dweights`` of dropped slots (see above).

    Returns:
        ``(B, H, W, C)`` in ``promote_types(dtype, float32)`` of the float inputs; differentiable
        w.r.t. ``values``, ``dx``, ``dy`` and ``weights`` (``d fx / d dx = 1``, the one-sided
        convention of ``F.grid_sample`` at integer positions).

    Raises:
        ValueError: inconsistent shapes or ``keys``, ``keep`` not bool.
        RuntimeError: not on the CPU, or the kernel is not available (:func:`fused_available`).
    """
    return _deform_gather(values, dx, dy, weights, keep, [int(k) for k in keys], bool(probe))


# ------------------------------------------------------------------------ the attention core
def _opt(t: Tensor | None, dt: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dt).contiguous()


@torch.library.custom_op("acla_nas::attend", mutates_args=())
def _attend(q: Tensor, values: Tensor, noise: Tensor | None, key_mask: Tensor | None,
            adaptive: bool, keys: list[int], tau: float, st: bool,
            st_log_clamp: float) -> tuple[Tensor, Tensor, Tensor]:
    if values.device.type != "cpu" or not fused_available():
        raise RuntimeError("acla_nas::attend runs on the CPU with the fused kernel built "
                           "(fused_available()); use the sparse path otherwise")
    with torch.autocast("cpu", enabled=False):
        dt = gather_dtype(values, q)
        out, weights, keep, sampled = torch.ops.acla_nas_cpu.attend_forward(
            _slots(q, dt), values.to(dt).contiguous(), _opt(noise, dt), _opt(key_mask, torch.bool),
            adaptive, list(keys))
    count_entries(forward=4 * sampled)
    return out, weights, keep


@_attend.register_fake
def _(q, values, noise, key_mask, adaptive, keys, tau, st, st_log_clamp):
    _, b, h, w, c = values.shape
    s = sum(keys)
    dt = gather_dtype(values, q)
    keep = (b, s, h, w) if adaptive or key_mask is not None else (0,)
    return (values.new_empty((b, h, w, c), dtype=dt), values.new_empty((b, s, h, w), dtype=dt),
            values.new_empty(keep, dtype=torch.bool))


@torch.library.register_fake("acla_nas_cpu::attend_forward", lib=_LIB)
def _(q, values, noise, key_mask, adaptive, keys):
    return (*_attend(q, values, noise, key_mask, adaptive, keys, 1.0, False, 0.0), 0)  # 0 pairs counted


def _attend_setup(ctx, inputs, output) -> None:
    q, values, noise, key_mask, adaptive, keys, tau, st, st_log_clamp = inputs
    _, weights, keep = output
    ctx.save_for_backward(q, values, noise, weights, keep)
    ctx.adaptive, ctx.keys, ctx.tau, ctx.st, ctx.clamp = adaptive, list(keys), tau, st, st_log_clamp
    ctx.mark_non_differentiable(keep)
    ctx.set_materialize_grads(False)


def _attend_backward(ctx, grad: Tensor | None, grad_weights: Tensor | None, _grad_keep):
    q, values, noise, weights, keep = ctx.saved_tensors
    need_q, need_v = ctx.needs_input_grad[:2]
    with torch.autocast("cpu", enabled=False):
        dt = weights.dtype
        b, h, w, c = values.shape[1:]
        grad = weights.new_zeros((b, h, w, c)) if grad is None else grad.to(dt).contiguous()
        g_q, g_v, probed = torch.ops.acla_nas_cpu.attend_backward(
            grad, _opt(grad_weights, dt), _slots(q, dt), values.to(dt).contiguous(),
            _opt(noise, dt), weights, keep, ctx.adaptive, ctx.keys, ctx.st and need_q, ctx.tau,
            ctx.clamp, need_v)
    count_entries(probe=4 * probed)
    return (g_q.to(q.dtype) if need_q else None, g_v.to(values.dtype) if need_v else None,
            None, None, None, None, None, None, None)


_attend.register_autograd(_attend_backward, setup_context=_attend_setup)


def attend(q: Tensor, values: Tensor, keys: Sequence[int], *, adaptive: bool,
           noise: Tensor | None = None, key_mask: Tensor | None = None, tau: float = 1.0,
           st: bool = False, st_log_clamp: float = 10.0) -> tuple[Tensor, Tensor, Tensor | None]:
    """ACLA's attention core in one fused CPU kernel: the keep decision, the softmax over the kept
    slots and the weighted sum of bilinear samples (:func:`deform_gather`), from the query
    convolution's output.

    With ``S = sum(keys)``, per query: ``score = m + noise`` (``noise`` ``None``: ``m``); ``keep``
    is ``key_mask`` if given, else for an adaptive module ``score > 0`` or ``score`` equal to the
    query's largest (at least one key), else every slot; ``w = softmax`` of the logits over the
    kept slots (dropped slots weigh exactly 0); ``out = Σ_s w_s · Bilinear(V[l(s)], p + (dx_s,
    dy_s))`` over the kept slots. The backward is that of ``ACLA``'s composite on its other
    paths: the softmax's own gradient for the logits and, when ``st``, the straight-through
    gradient of the keep logits (see ``ACLA``; it needs ``G · sample`` of dropped slots, which the
    backward probes); without ``st`` the keep logits get 0.

    Args:
        q: the query convolution's output, ``(B, 3S, H, W)`` - channels ``2s, 2s + 1`` the offsets
            ``dx``, ``dy`` of slot ``s`` in pixels, then the ``S`` logits - or, ``adaptive``,
            ``(B, 4S, H, W)`` with the ``S`` keep logits ``m`` last; float.
        values: ``(L, B, H, W, C)`` value maps, channels last.
        keys: slot count per value map (each >= 1).
        adaptive: whether ``q`` carries keep logits.
        noise: ``(B, S, H, W)`` logistic noise added to ``m`` (training), or ``None``.
        key_mask: ``(B, S, H, W)`` bool fixed keep mask (every query keeps a slot), or ``None``.
        tau: temperature τ of the straight-through estimator.
        st: give the keep logits the straight-through gradient (else 0).
        st_log_clamp: the clamp of ``log r_s`` in that gradient (``ACLA``'s ``ST_LOG_CLAMP``).

    Returns:
        ``(out, weights, keep)``: ``(B, H, W, C)``, ``(B, S, H, W)`` (both in
        ``promote_types(dtype, float32)``) and the ``(B, S, H, W)`` bool keep mask, ``None`` for a
        non-adaptive module without ``key_mask``. ``out`` and ``weights`` are differentiable
        w.r.t. ``q`` and ``values``.

    Raises:
        RuntimeError: not on the CPU, the kernel is not available (:func:`fused_available`), or
            shapes that do not fit (the kernel's message).
    """
    out, weights, keep = _attend(q, values, noise, key_mask, bool(adaptive),
                                 [int(k) for k in keys], float(tau), bool(st), float(st_log_clamp))
    return out, weights, (keep if adaptive or key_mask is not None else None)


# ------------------------------------------------------------------------ the whole module
class _Block(torch.autograd.Function):
    """``x + Proj(attend(Conv_q(x), Conv_refer(refs)))`` with every 1x1 convolution as a batched
    matmul on the layout its neighbours use (see :func:`block`)."""

    @staticmethod
    def forward(ctx, x, q_weight, q_bias, v_weight, v_bias, p_weight, p_bias, noise, key_mask,
                cfg, *refs):
        adaptive, keys, tau, st, clamp = cfg
        b, c, h, w = x.shape
        hw = h * w
        xf = x.reshape(b, c, hw)
        # queries (B, Qc, HW) = W_q x + b_q: the core reads them in this (NCHW) layout
        q = torch.baddbmm(q_bias.unsqueeze(1), q_weight.expand(b, -1, -1), xf).view(b, -1, h, w)
        # values (L, B, HW, C) = r^T W_v^T + b_v: channels last, written in place, no stack
        values = x.new_empty((len(refs), b, hw, c))
        wvt = v_weight.t().expand(b, c, c)
        for v, r in zip(values, refs):
            torch.baddbmm(v_bias, r.reshape(b, c, hw).mT, wvt, out=v)
        values = values.view(len(refs), b, h, w, c)
        out, weights, keep, sampled = torch.ops.acla_nas_cpu.attend_forward(
            q, values, noise, None if key_mask is None else key_mask.contiguous(), adaptive, keys)
        count_entries(forward=4 * sampled)
        # y (B, C, HW) = x + W_p out^T + b_p: NCHW again, the residual added by the matmul
        y = torch.baddbmm(xf, p_weight.expand(b, c, c), out.view(b, hw, c).mT)
        y += p_bias.view(1, c, 1)
        ctx.save_for_backward(x, q, values, noise, out, weights, keep, q_weight, v_weight, p_weight,
                              *refs)
        ctx.cfg = cfg
        return y.view(b, c, h, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, q, values, noise, out, weights, keep, q_weight, v_weight, p_weight, *refs = ctx.saved_tensors
        adaptive, keys, tau, st, clamp = ctx.cfg
        need = ctx.needs_input_grad
        b, c, h, w = x.shape
        hw = h * w
        g = grad.contiguous().view(b, c, hw)
        grads: list[Tensor | None] = [None] * 10
        if need[5]:
            grads[5] = torch.bmm(g, out.view(b, hw, c)).sum(0)
        if need[6]:
            grads[6] = g.sum((0, 2))
        g_out = torch.bmm(g.mT, p_weight.expand(b, c, c))  # (B, HW, C), the core's grad layout
        need_v = any(need[10:]) or need[3] or need[4]
        g_q, g_v, probed = torch.ops.acla_nas_cpu.attend_backward(
            g_out.view(b, h, w, c), None, q, values, noise, weights, keep, adaptive, keys,
            st, tau, clamp, need_v)
        count_entries(probe=4 * probed)
        # each gradient is released as soon as it is used and dL/dx takes g_out's storage (the
        # saved tensors stay until the backward returns: it may run again, retain_graph=True)
        g_q = g_q.view(b, -1, hw)
        if need[0]:
            g_x = torch.baddbmm(g, q_weight.t().expand(b, -1, -1), g_q, out=g_out.view(b, c, hw))
            grads[0] = g_x.view(b, c, h, w)
        del g_out
        if need[1]:
            grads[1] = torch.bmm(g_q, x.reshape(b, c, hw).mT).sum(0)
        if need[2]:
            grads[2] = g_q.sum((0, 2))
        del g_q
        g_refs: list[Tensor | None] = [None] * len(refs)
        if need_v:
            g_v = g_v.view(len(refs), b, hw, c)
            wv = v_weight.t().expand(b, c, c)
            g_refs = [torch.bmm(wv, gv.mT).view(b, c, h, w) if n else None
                      for gv, n in zip(g_v, need[10:])]
            if need[3]:
                grads[3] = sum(torch.bmm(r.reshape(b, c, hw), gv).sum(0) for r, gv in zip(refs, g_v)).t()
            if need[4]:
                grads[4] = g_v.sum((0, 1, 2))
        return (*grads, *g_refs)


def block(x: Tensor, refs: Sequence[Tensor], q_weight: Tensor, q_bias: Tensor, v_weight: Tensor,
          v_bias: Tensor, p_weight: Tensor, p_bias: Tensor, keys: Sequence[int], *, adaptive: bool,
          noise: Tensor | None = None, key_mask: Tensor | None = None, tau: float = 1.0,
          st: bool = False, st_log_clamp: float = 10.0) -> Tensor:
    """ACLA's whole forward on the fused core: ``x + Proj(attend(q, V))`` with the queries
    ``q = Conv_q(x)``, the values ``V_l = Conv_refer(refs[l])`` and :func:`attend` in between.

    The three 1x1 convolutions run as batched matmuls (``baddbmm``/``bmm``) that read and write
    the layouts their neighbours use: ``x``, the references, ``q`` and the output stay ``(B, C,
    H·W)`` (NCHW), the values and the core's output gradient are channels last, and every
    transpose is a BLAS flag rather than a copy; the residual is the matmul's added term. The
    backward skips the weight gradients the caller does not need (the alpha step of a search).
    The same function as ``ACLA``'s composite of ``F.conv2d``, :func:`attend`, ``F.linear`` and
    the residual addition (the module tests compare them); ``FlopCounterMode`` counts the matmuls
    as the convolutions (``2·B·H·W·C_in·C_out`` each) and :func:`attend` as before.

    Args:
        x: ``(B, C, H, W)`` queries, float32 or float64, CPU.
        refs: ``L`` reference maps ``(B, C, H, W)``, one per entry of ``keys``, of ``x``'s dtype.
        q_weight, q_bias: ``(Qc, C)`` and ``(Qc,)``: the query convolution (rows as
            :func:`attend`'s ``q`` channels, ``Qc = 3S`` or ``4S``).
        v_weight, v_bias: ``(C, C)`` and ``(C,)``: the value projection ``Conv_refer``.
        p_weight, p_bias: ``(C, C)`` and ``(C,)``: the output projection ``Proj``.
        keys, adaptive, noise, key_mask, tau, st, st_log_clamp: as :func:`attend`.

    Returns:
        ``(B, C, H, W)`` contiguous.

    Raises:
        RuntimeError: as :func:`attend`.
    """
    cfg = (bool(adaptive), [int(k) for k in keys], float(tau), bool(st), float(st_log_clamp))
    return _Block.apply(x, q_weight, q_bias, v_weight, v_bias, p_weight, p_bias, noise, key_mask,
                        cfg, *refs)


def deform_gather_flop(values_shape, dx_shape, dy_shape, weights_shape, *args, out_shape=None,
                       **kwargs) -> int:
    """FLOPs (= 2 x MACs) charged for :func:`deform_gather`, for all ``S`` slots: the count of
    the sparse op, :func:`search_spaces.operators.acla_sampling.gather_flops`
    (``2·(4 + 1)·B·S·H·W·C``). Called by ``FlopCounterMode`` with shapes."""
    b, s, h, w = weights_shape
    return gather_flops(b, h, w, s, values_shape[-1])

