"""The common contract of every attention operator the search can place.

Calling convention (all operators):

* ``forward(x, refs, ctx=None) -> y`` with ``x`` the query feature map ``(B, C, H, W)``, ``refs``
  a list of reference feature maps from earlier layers, each ``(B, C, H, W)`` with the same
  spatial size (operators that only use the query ignore them), and ``ctx`` an optional ``dict``
  shared by all operators of one network forward pass (used by LCoA's collaborative attention to
  hand its sort order and attention weights to later modules). Returns ``(B, C, H, W)``.
* The output is ``x + proj(attention(x, refs))`` with ``proj`` a zero-initialised 1x1 conv, so a
  freshly inserted module is exactly the identity.
* ``flops(C, H, W, config) -> int``: the forward FLOPs (= 2 x MACs) of one module on one image of
  ``H x W`` with ``C`` channels, built with constructor keywords ``config``, following the counting
  rule of :mod:`nas.engine.flops`. Equal to :func:`nas.engine.flops.measure_flops` on the module (tested).
* Constructor: ``Op(channels, num_refs=0, **config)``; bad arguments raise ``ValueError`` naming
  the argument.
* What the engine calls besides ``forward`` and ``flops`` (declared on :class:`AttentionOp`, with
  defaults for operators that need nothing special): :meth:`AttentionOp.set_temperature` (the
  supernet anneals an operator's own Gumbel relaxation with its gates) and
  :meth:`AttentionOp.sliced_state_dict` (the weights of the stand-alone module a key-count
  choice selects, used when a derived network inherits the supernet's weights).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from nas.registry import Registry

OPERATORS = Registry("operator")


class AttentionOp(nn.Module):
    """Base class of registered attention operators (see the module docstring for the contract).

    Args:
        channels: C, feature channels of queries and references.
        num_refs: how many reference layers ``forward`` receives.
    """

    #: whether the operator reads ``refs`` (cross-layer) or only the query.
    uses_refs: bool = False

    def __init__(self, channels: int, num_refs: int = 0) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not isinstance(num_refs, int) or num_refs < 0:
            raise ValueError(f"num_refs must be a non-negative int, got {num_refs!r}")
        self.channels = channels
        self.num_refs = num_refs

    @staticmethod
    def zero_proj(channels: int) -> nn.Conv2d:
        """A 1x1 output projection initialised to zero (weights and bias)."""
        conv = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return conv

    def check_inputs(self, x: torch.Tensor, refs: list[torch.Tensor]) -> None:
        """Validate shapes of ``x`` and ``refs``.

        Raises:
            ValueError: ``x`` not 4-D with ``channels`` channels, wrong number of refs, or a
                reference with a different channel count or spatial size (names ``refs[i]``).
        """
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"x must be (B, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        if not self.uses_refs:
            return
        if len(refs) != self.num_refs:
            raise ValueError(f"refs: expected {self.num_refs} reference maps, got {len(refs)}")
        for i, r in enumerate(refs):
            if r.shape != x.shape:
                raise ValueError(
                    f"refs[{i}] has shape {tuple(r.shape)}, expected the query's {tuple(x.shape)}"
                )

    def set_temperature(self, tau: float) -> None:
        """Set the temperature of the operator's own straight-through Gumbel relaxation, if it
        has one (ACLA's key mask). The default does nothing.

        Args:
            tau: temperature > 0.
        """

    def sliced_state_dict(self, active_keys: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Weights of the stand-alone module equal to this one restricted to ``active_keys``
        (operators with key slots override this); the default is a detached copy of the state
        dict.

        Args:
            active_keys: key counts per reference (ignored by operators without key slots).
        """
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def flops(cls, channels: int, height: int, width: int, config: dict[str, Any]) -> int:
        """Forward FLOPs (= 2 x MACs) of one module on one ``height x width`` image.

        Raises:
            NotImplementedError: an operator that does not define its formula.
        """
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Small helpers shared by the operator implementations (added with the operators).


def require_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` (not ``bool``) ``>= minimum``.

    Args:
        name: the argument's name, used in the error message.
        value: the value to check.
        minimum: the smallest allowed value.

    Raises:
        ValueError: ``value`` is not an int or is smaller than ``minimum`` (names ``name``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype numerically delicate parts run in: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def batch_rand_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.rand_like(t)`` for a batch ``(B, ...)`` that may be one rank's shard of a global
    batch: under ``torch.distributed`` with ``W`` processes the noise of the whole ``(W*B, ...)``
    batch is drawn (every rank alike, from the same RNG state) and this rank's rows are returned,
    so N processes draw exactly the noise one process draws for the whole batch."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return torch.rand_like(t)
    w, r, b = dist.get_world_size(), dist.get_rank(), t.shape[0]
    full = torch.rand((w * b, *t.shape[1:]), dtype=t.dtype, device=t.device)
    return full[r * b:(r + 1) * b]
