"""Measured FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` plus the formulas it lacks.

Counting rule used everywhere in acla-nas (analytic tables and measurements alike):

* FLOPs = 2 x MACs.
* Convolutions and matrix products (``conv``, ``mm``, ``bmm``, ``addmm``, ``baddbmm``) are counted
  by PyTorch's own formulas: ``2 * prod(out) * C_in/groups * kh * kw`` for a convolution,
  ``2 * M * N * K`` for a matmul; biases are not counted.
* ``grid_sample`` (bilinear, 2-D): 4 MACs per output value, i.e. ``8 * N * C * H_out * W_out``
  FLOPs (the weighted sum of the four neighbours). Coordinate arithmetic is not counted.
* ACLA's sparse sampling op ``acla_nas::bilinear_gather`` (:mod:`search_spaces.operators.acla_sampling`):
  the ``grid_sample`` + ``bmm`` it replaces, ``2 * (4 + 1) * B * H * W * S * C`` FLOPs for all
  ``S`` slots (whether or not a slot is kept: counts do not depend on data).
* ``softmax`` / ``log_softmax``: 3 FLOPs per element (exp, accumulate, divide).
* Scaled-dot-product attention on the CPU kernel: its two matmuls, ``4 * B * heads * L * S * E``
  (the same rule PyTorch applies to its CUDA flash/efficient kernels), so CPU and CUDA agree.
* Element-wise arithmetic (add, mul, ReLU, normalisation), indexing, gather/scatter, sorting and
  top-k are not counted; they are memory-bound and PyTorch's counter ignores them too.

Public API: :data:`EXTRA_FLOP_FORMULAS`, :func:`measure_flops`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.operators.acla_sampling import bilinear_gather_flop

aten = torch.ops.aten

GRID_SAMPLE_MACS_PER_VALUE = 4
SOFTMAX_FLOPS_PER_ELEMENT = 3


def _grid_sampler_2d_flop(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    n, c = input_shape[0], input_shape[1]
    h_out, w_out = grid_shape[1], grid_shape[2]
    return 2 * GRID_SAMPLE_MACS_PER_VALUE * n * c * h_out * w_out


def _softmax_flop(input_shape, *args, out_shape=None, **kwargs) -> int:
    return SOFTMAX_FLOPS_PER_ELEMENT * math.prod(input_shape)


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
