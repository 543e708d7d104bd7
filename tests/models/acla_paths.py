"""Helpers shared by the tests of ACLA's fused kernels (not a test module)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from search_spaces.operators.acla_sampling import bilinear_gather, bordered, corner_plan


def sparse_gather(maps: Sequence[Tensor], dx: Tensor, dy: Tensor, w: Tensor, keep: Tensor | None,
                  keys: Sequence[int], probe: bool) -> Tensor:
    """ACLA's weighted sum of bilinear samples by the sparse path (corner_plan + bilinear_gather
    on slot-last tensors): maps ``L x (B, H, W, C)``; dx, dy, w, keep ``(B, S, H, W)``; returns
    ``(B, H, W, C)``."""
    def slot_last(t):
        return t.permute(0, 2, 3, 1)

    base, fx, fy, inside = corner_plan(slot_last(dx), slot_last(dy), list(keys), dx.dtype)
    sampled = inside if keep is None else slot_last(keep) & inside
    return bilinear_gather(bordered(list(maps)), base, fx, fy, slot_last(w).contiguous(), sampled,
                           probe)
