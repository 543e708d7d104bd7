"""ACLA's sampling and weighted sum (arXiv 2203.03619) as one fused CPU kernel.

For query pixel ``(i, j)`` of batch item ``b``::

    out[b, i, j, :] = Σ_s keep[b, s, i, j] · w[b, s, i, j] · Bilinear(V[l(s), b], (j + dx, i + dy))

with ``dx = dx[b, s, i, j]``, ``dy`` likewise (pixels, pixel centres at integers), zero padding
outside the map (``F.grid_sample(..., align_corners=False, padding_mode="zeros")``) and slot ``s``
reading value map ``l(s)`` (the first ``keys[0]`` slots map 0, the next ``keys[1]`` map 1, ...).

The kernel (``csrc/acla_gather.cpp``) walks the queries once: per kept slot it computes the
bilinear footprint and adds the 4 weighted corner rows of channels-last ``V`` into the output row,
so a dropped key costs one mask read and nothing else. Its backward walks them again: 4 dot
products ``G · V[corner]`` per slot give ``dL/dw``, ``dL/ddx`` and ``dL/ddy`` through the bilinear
weights, and ``dL/dV`` is scattered back with the same coefficients (parallel over the batch, so
no two threads write one map). It replaces, on the CPU, the sparse-matrix path of
:mod:`search_spaces.operators.acla_sampling` (about 20 PyTorch operators per call, whose fixed
costs dominate at restoration-patch sizes); both compute the same function.

The C++ source is compiled on first use with ``torch.utils.cpp_extension.load`` (a C++ compiler
and ninja are needed; about 15 s, cached in ``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``, one build per source, torch version and CPU model, since it is
built with ``-march=native``). If the build fails, :func:`fused_available` is False, one warning
says why and ACLA uses the sparse path. ``ACLA_NAS_KERNEL=sparse`` skips the build.

The operator is registered as ``torch.ops.acla_nas.deform_gather`` with a fake (meta) kernel and
an autograd formula; :func:`deform_gather_flop` (in :data:`nas.engine.flops.EXTRA_FLOP_FORMULAS`)
counts it as the ``grid_sample`` + ``bmm`` it replaces, for every slot (data-independent).
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

__all__ = ["deform_gather", "deform_gather_flop", "fused_available", "SOURCE"]

#: the C++ source of the kernel (shipped as package data).
SOURCE = Path(__file__).with_name("csrc") / "acla_gather.cpp"
#: environment variable: ``sparse`` never builds the kernel (ACLA then uses the sparse path).
ENV = "ACLA_NAS_KERNEL"
_FLAGS = (["-O3", "-march=native", "-fopenmp"], ["-O3"])  # tried in this order
_STATE: dict[str, object] = {}


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


def deform_gather_flop(values_shape, dx_shape, dy_shape, weights_shape, *args, out_shape=None,
                       **kwargs) -> int:
    """FLOPs (= 2 x MACs) charged for :func:`deform_gather`, for all ``S`` slots: the count of
    the sparse op, :func:`search_spaces.operators.acla_sampling.gather_flops`
    (``2·(4 + 1)·B·S·H·W·C``). Called by ``FlopCounterMode`` with shapes."""
    b, s, h, w = weights_shape
    return gather_flops(b, h, w, s, values_shape[-1])
