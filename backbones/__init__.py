"""Restoration backbones with exposed insertion points (registry :data:`BACKBONES`).

A backbone block of a config or an ArchSpec (``{"preset": "edsr-small"}``,
``{"type": "edsr", "num_feat": 64, "num_block": 16}``) is resolved by :func:`build_backbone`.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from backbones.edsr import BACKBONES, EDSR, PRESETS, EDSRConfig, ResBlock, count_params
from nas.errors import UsageError, did_you_mean

#: constructor arguments fixed by the task, never taken from a backbone block
TASK_ARGS = ("scale", "tail")


def backbone_kwargs(block: Mapping[str, Any]) -> tuple[str, dict]:
    """``(registry name, keywords)`` of a backbone block (``preset`` or ``type``, default edsr)."""
    b = dict(block)
    if "preset" in b:
        name = b.pop("preset")
        b.pop("type", None)
    else:
        name = b.pop("type", "edsr")
    return str(name), b


def build_backbone(block: Mapping[str, Any], scale: int, tail: str, where: str = "space.backbone"):
    """Build the backbone a block describes.

    Args:
        block: ``{"preset": name, **overrides}`` or ``{"type": name, **keywords}``.
        scale: upscaling factor (SR) or 1.
        tail: ``"upsample"`` (SR) or ``"conv"`` (same-size tasks).
        where: the block's dotted name, for messages.

    Returns:
        The backbone module (e.g. :class:`EDSR`).

    Raises:
        UsageError: unknown backbone (with a did-you-mean), a keyword the constructor does not
            take (with a did-you-mean), or a value it refuses (names ``where.<key>``).
    """
    name, kw = backbone_kwargs(block)
    try:
        factory = BACKBONES.get(name)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    cls = EDSR if name in PRESETS else factory
    accepted = [p for p in inspect.signature(cls).parameters if p not in TASK_ARGS]
    for key in kw:
        if key not in accepted:
            raise UsageError(f"{where}.{key}: unknown keyword of backbone {name!r}"
                             f"{did_you_mean(key, accepted)}; known: {', '.join(accepted)}")
    try:
        return factory(scale=scale, tail=tail, **kw)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None


__all__ = ["BACKBONES", "EDSR", "EDSRConfig", "PRESETS", "ResBlock", "TASK_ARGS",
           "backbone_kwargs", "build_backbone", "count_params"]
