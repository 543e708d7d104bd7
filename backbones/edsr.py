"""EDSR-style residual backbone with an insertion point after every residual block.

Layout (Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW
2017; EDSR-PyTorch ``src/model/edsr.py``)::

    x ─ mean shift ─ head conv3x3 ─┬─ ResBlock b00 ─ [insert b00] ─ ... ─ ResBlock bNN ─ [insert bNN]
                                   │                                    ─ body conv3x3 ─(+)─ tail ─ mean shift
                                   └────────────────── global skip ──────────────────────┘

* ResBlock: conv3x3 ─ ReLU ─ conv3x3, scaled by ``res_scale`` and added to its input (no BN).
* Tail ``upsample`` (SR): pixel-shuffle upsampler (x2, x3, or x4 as two x2 stages) then conv3x3 to
  RGB. Tail ``conv`` (denoising, demosaicing, JPEG artifact removal): a conv3x3 to RGB added to the
  input image (global image residual), output size = input size.
* Mean shift: the DIV2K RGB mean ``(0.4488, 0.4371, 0.4040)`` is subtracted from the input and
  added back to the output as fixed buffers (no parameters).

Insertion points are exposed, so a supernet adds attention without subclassing:
:meth:`EDSR.forward` accepts ``insert(label, feat, taps) -> feat`` called after every block, with
``taps`` the dict of earlier features (``"head"``, ``"b00"``, ...; the pre-attention block outputs).

Images are RGB in ``[0, 1]``, tensors ``(B, 3, H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from nas.registry import Registry

BACKBONES = Registry("backbone")

#: insert(label, feat, taps) -> feat; feat (B, C, h, w); taps label -> (B, C, h, w)
InsertFn = Callable[[str, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3 with residual scaling; ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, num_feat: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + res_scale * conv(relu(conv(x)))``, ``(B, C, H, W) -> (B, C, H, W)``."""
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class Upsampler(nn.Sequential):
    """Pixel-shuffle upsampler: ``(B, C, H, W) -> (B, C, sH, sW)`` for s in {2, 3, 4}."""

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: list[nn.Module] = []
        if scale in (2, 4):
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, padding=1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, padding=1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale must be 2, 3 or 4 for the upsampling tail, got {scale}")
        super().__init__(*layers)


@dataclass(frozen=True)
class EDSRConfig:
    """Constructor arguments of :class:`EDSR` (also the ``backbone`` block of an ArchSpec)."""

    num_feat: int = 64
    num_block: int = 16
    res_scale: float = 1.0
    scale: int = 2
    tail: str = "upsample"  # "upsample" (SR) or "conv" (same-size restoration)
    num_in_ch: int = 3
    num_out_ch: int = 3


class EDSR(nn.Module):
    """EDSR-style restoration backbone.

    Args:
        num_feat: C, feature channels.
        num_block: N, residual blocks; insertion points ``b00`` ... ``b{N-1:02d}``.
        res_scale: residual scaling of every block (EDSR-baseline 1.0, EDSR-large 0.1).
        scale: upscaling factor for ``tail="upsample"`` (2, 3 or 4); must be 1 for ``tail="conv"``.
        tail: ``"upsample"`` for super-resolution, ``"conv"`` for same-size tasks.
        num_in_ch, num_out_ch: image channels (3 = RGB).

    Shapes:
        ``forward``: ``(B, num_in_ch, H, W)`` in [0, 1] -> ``(B, num_out_ch, sH, sW)``.

    Raises:
        ValueError: unknown tail, scale not in {2, 3, 4} for SR or not 1 for ``tail="conv"``,
            non-positive sizes.
    """

    def __init__(
        self,
        num_feat: int = 64,
        num_block: int = 16,
        res_scale: float = 1.0,
        scale: int = 2,
        tail: str = "upsample",
        num_in_ch: int = 3,
        num_out_ch: int = 3,
    ) -> None:
        super().__init__()
        for name, v in (("num_feat", num_feat), ("num_block", num_block), ("scale", scale),
                        ("num_in_ch", num_in_ch), ("num_out_ch", num_out_ch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(res_scale, bool) or not isinstance(res_scale, (int, float)) \
                or not 0 < res_scale < float("inf"):
            raise ValueError(f"res_scale must be a positive number, got {res_scale!r}")
        if tail == "upsample" and scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4 for tail='upsample', got {scale}")
        if tail == "conv" and scale != 1:
            raise ValueError(f"scale must be 1 for tail='conv', got {scale}")
        if tail not in ("upsample", "conv"):
            raise ValueError(f"tail must be 'upsample' or 'conv', got {tail!r}")
        self.config = EDSRConfig(num_feat, num_block, res_scale, scale, tail, num_in_ch, num_out_ch)
        mean = torch.tensor(DIV2K_RGB_MEAN if num_in_ch == 3 else (0.5,) * num_in_ch)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.head = nn.Conv2d(num_in_ch, num_feat, 3, padding=1)
        self.body = nn.ModuleList(ResBlock(num_feat, res_scale) for _ in range(num_block))
        self.body_conv = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        if tail == "upsample":
            self.tail = nn.Sequential(
                Upsampler(scale, num_feat), nn.Conv2d(num_feat, num_out_ch, 3, padding=1)
            )
        else:
            self.tail = nn.Conv2d(num_feat, num_out_ch, 3, padding=1)

    @property
    def num_feat(self) -> int:
        """C, feature channels."""
        return self.config.num_feat

    @property
    def scale(self) -> int:
        """Upscaling factor (1 for same-size tasks)."""
        return self.config.scale

    def insertion_points(self) -> list[str]:
        """Labels of the insertion points, one after each residual block: ``["b00", ...]``."""
        return [f"b{i:02d}" for i in range(len(self.body))]

    #: keys of this backbone's ArchSpec ``backbone`` block (besides ``type``)
    ARCHSPEC_KEYS = ("num_feat", "num_block", "res_scale")

    def archspec_block(self) -> dict:
        """The ArchSpec ``backbone`` block: ``{"type": "edsr", "num_feat", "num_block",
        "res_scale"}`` (scale and tail come from the ArchSpec's task)."""
        c = self.config
        return {"type": "edsr", "num_feat": c.num_feat, "num_block": c.num_block,
                "res_scale": c.res_scale}

    def forward(self, x: torch.Tensor, insert: InsertFn | None = None) -> torch.Tensor:
        """Restore ``x``.

        Args:
            x: ``(B, num_in_ch, H, W)`` low-quality image in [0, 1].
            insert: optional ``insert(label, feat, taps) -> feat`` called after each block with
                the block output ``feat`` ``(B, C, H, W)`` and ``taps`` (head output and earlier
                pre-attention block outputs, including this block's under its own label).

        Returns:
            ``(B, num_out_ch, sH, sW)`` restored image (not clamped).
        """
        inp = x
        feat = self.head(x - self.mean)
        taps: dict[str, torch.Tensor] = {"head": feat}
        h = feat
        for i, block in enumerate(self.body):
            h = block(h)
            label = f"b{i:02d}"
            taps[label] = h
            if insert is not None:
                h = insert(label, h, taps)
        h = self.body_conv(h) + feat
        out = self.tail(h)
        if self.config.tail == "conv":
            return out + inp
        return out + self.mean


PRESETS: dict[str, dict] = {
    # the standard EDSR-baseline: 16 blocks, 64 channels, res_scale 1 (1.37 M params at x2)
    "edsr-baseline": {"num_feat": 64, "num_block": 16, "res_scale": 1.0},
    # CPU-sized presets for search on a laptop and for the test suite
    "edsr-small": {"num_feat": 32, "num_block": 8, "res_scale": 1.0},
    "edsr-tiny": {"num_feat": 16, "num_block": 4, "res_scale": 1.0},
}

for _name, _kw in PRESETS.items():

    def _factory(scale: int = 2, tail: str = "upsample", _kw: dict = _kw, **kw) -> EDSR:
        return EDSR(**{**_kw, **kw}, scale=scale, tail=tail)

    _factory.__doc__ = f"EDSR preset {_name!r}: {_kw}."
    BACKBONES.register(_name)(_factory)
BACKBONES.register("edsr")(EDSR)


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
