"""FLOPs: the counting rule, measurement with ``FlopCounterMode``, and the analytic table of a
search space with its differentiable expectation E[F].

Counting rule used everywhere in acla-nas (analytic tables and measurements alike):

* FLOPs = 2 x MACs, per image, at a stated input size.
* Convolutions and matrix products (``conv``, ``mm``, ``bmm``, ``addmm``, ``baddbmm``) are counted
  by PyTorch's own formulas: ``2 * prod(out) * C_in/groups * kh * kw`` for a convolution,
  ``2 * M * N * K`` for a matmul; biases are not counted.
* ``grid_sample`` (bilinear, 2-D): 4 MACs per output value, i.e. ``8 * N * C * H_out * W_out``
  FLOPs (the weighted sum of the four neighbours). Coordinate arithmetic is not counted.
* ACLA's sparse sampling op ``acla_nas::bilinear_gather`` (:mod:`search_spaces.operators.acla_sampling`):
  the ``grid_sample`` + ``bmm`` it replaces, ``2 * (4 + 1) * B * H * W * S * C`` FLOPs for all
  ``S`` slots (whether or not a slot is kept: counts do not depend on data). Its fused CPU
  kernel ``acla_nas::deform_gather`` (:mod:`search_spaces.operators.acla_fused`) counts the same.
* ``softmax`` / ``log_softmax``: 3 FLOPs per element (exp, accumulate, divide).
* Scaled-dot-product attention on the CPU kernel: its two matmuls, ``4 * B * heads * L * S * E``
  (the same rule PyTorch applies to its CUDA flash/efficient kernels), so CPU and CUDA agree.
* Element-wise arithmetic (add, mul, ReLU, normalisation), indexing, gather/scatter, sorting and
  top-k are not counted; they are memory-bound and PyTorch's counter ignores them too.

Expected FLOPs of a supernet (``docs/design.md``, "Gates and the objective")::

    E[F] = F_fixed + sum_i sum_op p_i(op) * F_i(op)

with, for an operator reading references (ACLA), a per-reference decomposition

    F_i(acla) = F_base * (1 - prod_r q_ir(0)) + sum_r sum_k q_ir(k) * f(k)

(``F_base`` - the output projection - is paid only if at least one reference is read; ACLA with
all key counts 0 is the identity), and for LCoA with collaborative attention the first LCoA
module of the network pays the full cost and later ones the shared cost:

    F_i(lcoa) = F_full * P(no LCoA before i) + F_shared * (1 - P(no LCoA before i)),
    P(no LCoA before i) = prod_{j < i} (1 - p_j(lcoa)).

p and q are ``softmax(alpha)`` (probabilities, not samples), so E[F] is differentiable in every
alpha; for a one-hot alpha it equals the FLOPs of the exported network (tested against
``FlopCounterMode``).

Public API: :data:`EXTRA_FLOP_FORMULAS`, :func:`measure_flops`, :func:`measure_network_flops`,
:func:`default_lr_size`, :class:`CostModel`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.restoration.task import Task
from search_spaces.operators import OPERATORS
from search_spaces.operators.acla_fused import deform_gather_flop
from search_spaces.operators.acla_sampling import bilinear_gather_flop, gather_flops
from search_spaces.space import SKIP, SearchSpace

aten = torch.ops.aten

GRID_SAMPLE_MACS_PER_VALUE = 4
SOFTMAX_FLOPS_PER_ELEMENT = 3


def _grid_sampler_2d_flop(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    n, c = input_shape[0], input_shape[1]
    h_out, w_out = grid_shape[1], grid_shape[2]
    return 2 * GRID_SAMPLE_MACS_PER_VALUE * n * c * h_out * w_out


def _softmax_flop(input_shape, *args, out_shape=None, **kwargs) -> int:
    return SOFTMAX_FLOPS_PER_ELEMENT * math.prod(input_shape)


def _acla_attend_flop(q_shape, values_shape, noise_shape, key_mask_shape, adaptive, keys, *args,
                      out_shape=None, **kwargs) -> int:
    """``acla_nas::attend`` (ACLA's fused core): its masked softmax over ``B·S·H·W`` logits, as
    ``aten._softmax`` counts it, plus its sampling and weighted sum of every slot, as every
    gather kernel counts them (:func:`~search_spaces.operators.acla_sampling.gather_flops`)."""
    _, b, h, w, c = values_shape
    s = sum(keys)
    return SOFTMAX_FLOPS_PER_ELEMENT * b * s * h * w + gather_flops(b, h, w, s, c)


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, seq_q, e = query_shape
    seq_k = key_shape[-2]
    e_v = value_shape[-1]
    return 2 * b * h * seq_q * seq_k * e + 2 * b * h * seq_q * seq_k * e_v


EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    aten.grid_sampler_2d: _grid_sampler_2d_flop,
    aten._softmax: _softmax_flop,
    aten._log_softmax: _softmax_flop,
    aten._safe_softmax: _softmax_flop,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    torch.ops.acla_nas.bilinear_gather: bilinear_gather_flop,
    torch.ops.acla_nas.deform_gather: deform_gather_flop,
    torch.ops.acla_nas.attend: _acla_attend_flop,
    torch.ops.acla_nas_cpu.attend_forward: _acla_attend_flop,  # what acla_fused.block calls
}


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` with :data:`EXTRA_FLOP_FORMULAS` registered."""
    return FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS))


@torch.no_grad()
def measure_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Run ``fn(*args, **kwargs)`` once under the FLOP counter and return the total forward FLOPs.

    ``fn`` is usually an ``nn.Module``; it runs under ``torch.no_grad()``. The count follows the
    rule in this module's docstring (FLOPs = 2 x MACs) and scales with the batch size of the
    inputs, so pass a batch of one to compare with per-image analytic tables.

    Returns:
        Total FLOPs as a Python int.
    """
    counter = flop_counter()
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def measure_network_flops(net: torch.nn.Module, lr_size: tuple[int, int]) -> int:
    """FLOPs of one forward pass of ``net`` on one ``(1, 3, H, W)`` image of ``lr_size``.

    Measured on the meta device (a deep copy of ``net``; no memory, no arithmetic), with
    :func:`measure_flops`.
    """
    import copy

    meta = copy.deepcopy(net).to("meta")
    return measure_flops(meta, torch.empty(1, 3, *lr_size, device="meta"))


# -------------------------------------------------------------------------- analytic table
#: reference output size (H, W) at which costs are stated: 720p, as SR papers report
REFERENCE_OUTPUT = (720, 1280)


def default_lr_size(task: Task) -> tuple[int, int]:
    """Reference input size ``(H, W)`` for an output of about 1280x720 (W x H): ``(360, 640)`` at
    x2, ``(240, 426)`` at x3 (output 1278x720), ``(180, 320)`` at x4; ``(720, 1280)`` at x1."""
    return REFERENCE_OUTPUT[0] // task.scale, REFERENCE_OUTPUT[1] // task.scale


class CostModel:
    """Analytic cost of every choice of a search space at one input size.

    Args:
        space: the search space.
        task: the task (fixes the backbone tail).
        lr_size: ``(H, W)`` of the network input; default :func:`default_lr_size`.

    Raises:
        RuntimeError: an operator's FLOPs formula is not additive over references (a bug).
    """

    def __init__(self, space: SearchSpace, task: Task,
                 lr_size: tuple[int, int] | None = None) -> None:
        from nas.engine.network import build_backbone

        self.space = space
        self.lr_size = tuple(lr_size or default_lr_size(task))
        backbone = build_backbone(space.config, task)
        self.channels = backbone.num_feat
        self.fixed = measure_network_flops(backbone, self.lr_size)
        h, w = self.lr_size
        c = self.channels
        self.const: dict[str, int] = {}  # op -> FLOPs of ops not reading references
        self.ref_base: dict[str, int] = {}  # op -> base of reference-reading ops
        self.ref_key: dict[str, dict[int, int]] = {}  # op -> {k: per-reference FLOPs}
        self.shared: dict[str, int] = {}  # op -> cost of the collaborative (reuse) path
        ops = {op for p in space for op in p.ops if op != SKIP}
        keys = sorted({k for p in space for k in p.keys})
        for op in sorted(ops):
            cls = OPERATORS.get(op)
            cfg = space.op_config(op)
            if space.uses_refs(op):
                kmax = max(keys)
                one = cls.flops(c, h, w, {**cfg, "num_refs": 1, "keys": [kmax]})
                two = cls.flops(c, h, w, {**cfg, "num_refs": 2, "keys": [kmax, kmax]})
                base = 2 * one - two
                self.ref_base[op] = base
                self.ref_key[op] = {
                    k: (cls.flops(c, h, w, {**cfg, "num_refs": 1, "keys": [k]}) - base if k else 0)
                    for k in keys
                }
                probe = [k for k in keys if k][:3]
                exact = cls.flops(c, h, w, {**cfg, "num_refs": len(probe), "keys": probe})
                if exact != base + sum(self.ref_key[op][k] for k in probe):
                    raise RuntimeError(f"{op}.flops is not additive over references")
            else:
                self.const[op] = cls.flops(c, h, w, cfg)
                if cfg.get("collaborative"):
                    self.shared[op] = cls.flops(c, h, w, {**cfg, "shared": True})

    # -- expected ------------------------------------------------------------------------
    def expected(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """E[F] in FLOPs, a scalar tensor differentiable in the logits behind ``probs``.

        Args:
            probs: ``{label: softmax(alpha)}`` for every label of the space (values in the
                order of :meth:`SearchSpace.choices`).
        """
        space = self.space
        any_p = next(iter(probs.values()))
        total = any_p.new_tensor(float(self.fixed), dtype=torch.float64)
        none_before: dict[str, torch.Tensor] = {op: total.new_tensor(1.0) for op in self.shared}
        for p in space:
            p_op = probs[p.op_label()].double()
            for j, op in enumerate(p.ops):
                if op == SKIP:
                    continue
                if op in self.ref_base:
                    f = self._expected_ref_cost(op, p, probs, total)
                elif op in self.shared:
                    nb = none_before[op]
                    f = self.const[op] * nb + self.shared[op] * (1 - nb)
                    none_before[op] = nb * (1 - p_op[j])
                else:
                    f = total.new_tensor(float(self.const[op]))
                total = total + p_op[j] * f
        return total

    def _expected_ref_cost(self, op, p, probs, like) -> torch.Tensor:
        table = self.ref_key[op]
        all_zero = like.new_tensor(1.0)
        f = like.new_tensor(0.0)
        for r in p.refs:
            label = p.key_label(r)
            if label in probs:
                q = probs[label].double()
                kv = like.new_tensor([float(table[k]) for k in p.keys])
                f = f + (q * kv).sum()
                if 0 in p.keys:
                    all_zero = all_zero * q[p.keys.index(0)]
                else:
                    all_zero = all_zero * 0
            else:  # a single key value is offered: not a choice
                f = f + table[p.keys[-1]]
                all_zero = all_zero * (1.0 if p.keys[-1] == 0 else 0.0)
        return f + self.ref_base[op] * (1 - all_zero)

    def one_hot_probs(self, arch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Probabilities putting all mass on ``arch`` (for tests and reports)."""
        out = {}
        for c in self.space.choices():
            t = torch.zeros(len(c.values), dtype=torch.float64)
            if c.label in arch:
                t[c.index(arch[c.label])] = 1.0
            else:
                t[-1] = 1.0
            out[c.label] = t
        return out

    # -- exact ---------------------------------------------------------------------------
    def exact(self, arch: Mapping[str, Any]) -> int:
        """FLOPs of the fixed network of ``arch``, from the operators' formulas (an int)."""
        from nas.engine.network import canonical_arch

        arch = canonical_arch(self.space, self.space.validate(arch))
        h, w = self.lr_size
        total = self.fixed
        seen: set[str] = set()
        for p in self.space:
            op = arch[p.op_label()]
            if op == SKIP:
                continue
            cfg = self.space.op_config(op)
            cls = OPERATORS.get(op)
            if self.space.uses_refs(op):
                keys = [k for k in self.space.active_keys(arch, p.name) if k > 0]
                total += cls.flops(self.channels, h, w, {**cfg, "num_refs": len(keys),
                                                         "keys": keys})
            else:
                shared = op in self.shared and op in seen
                total += cls.flops(self.channels, h, w, {**cfg, "shared": shared} if shared
                                   else cfg)
            seen.add(op)
        return int(total)
