"""Restoration backbones with exposed insertion points (registry :data:`BACKBONES`)."""

from backbones.edsr import BACKBONES, EDSR, PRESETS, EDSRConfig, ResBlock, count_params

__all__ = ["BACKBONES", "EDSR", "EDSRConfig", "PRESETS", "ResBlock", "count_params"]
