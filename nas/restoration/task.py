"""Restoration tasks and their degradations (no file I/O: the model layer may import this).

Colour order is **RGB**; images are ``uint8`` arrays ``(H, W, 3)``.

Degradations (:class:`Task`): MATLAB-compatible bicubic x s (super-resolution), additive white
Gaussian noise of std sigma on the [0, 255] scale (denoising; unclipped float), Bayer RGGB mosaic
(demosaicing; the 3-channel mosaic with zeros at missing samples), JPEG at quality q via Pillow
(artifact removal, 4:2:0 chroma subsampling as Pillow's default).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from nas.errors import UsageError, did_you_mean

SCALES = (2, 3, 4)
TASKS = ("sr", "denoise", "demosaic", "jpeg")


def modcrop(img: np.ndarray, modulo: int) -> np.ndarray:
    """Crop the bottom/right so that H and W are multiples of ``modulo`` (MATLAB ``modcrop``)."""
    h, w = img.shape[:2]
    return img[: h - h % modulo, : w - w % modulo]


# --------------------------------------------------------------------------------- degradations
@dataclass(frozen=True)
class Task:
    """A restoration task and its degradation.

    Attributes:
        name: ``"sr"``, ``"denoise"``, ``"demosaic"`` or ``"jpeg"``.
        scale: SR factor in {2, 3, 4} (1 for the other tasks).
        sigma: AWGN standard deviation on the [0, 255] scale (denoising).
        quality: JPEG quality 1..100 (artifact removal).

    Raises:
        UsageError: unknown task, scale not in {2, 3, 4}, sigma <= 0, quality outside 1..100.
    """

    name: str = "sr"
    scale: int = 2
    sigma: float = 25.0
    quality: int = 10

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise UsageError(f"task.name: unknown task {self.name!r}{did_you_mean(self.name, TASKS)}; "
                             f"known: {', '.join(TASKS)}")
        if self.name == "sr" and self.scale not in SCALES:
            raise UsageError(f"task.scale: must be one of 2, 3, 4 for super-resolution, got "
                             f"{self.scale!r}")
        if self.name != "sr" and self.scale != 1:
            object.__setattr__(self, "scale", 1)
        if self.name == "denoise" and not self.sigma > 0:
            raise UsageError(f"task.sigma: must be > 0, got {self.sigma}")
        if self.name == "jpeg" and not 1 <= int(self.quality) <= 100:
            raise UsageError(f"task.quality: must be in 1..100, got {self.quality}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "task") -> "Task":
        """A task from ``{name, scale, sigma, quality}`` (a config's or an ArchSpec's block).

        Raises:
            UsageError: unknown key (did-you-mean), wrong type, or a value the task refuses
                (names ``where.<key>``).
        """
        types_ = {"name": (str,), "scale": (int,), "sigma": (int, float), "quality": (int,)}
        kw: dict[str, Any] = {}
        for key, value in d.items():
            if key not in types_:
                raise UsageError(f"{where}.{key}: unknown key{did_you_mean(key, types_)}; known: "
                                 f"{', '.join(types_)}")
            if isinstance(value, bool) or not isinstance(value, types_[key]):
                if key in ("scale", "quality") and isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    want = {"name": "a string", "sigma": "a number"}.get(key, "an integer")
                    raise UsageError(f"{where}.{key}: expected {want}, got {value!r}")
            kw[key] = float(value) if key == "sigma" else value
        try:
            return cls(**kw)
        except UsageError as e:
            msg = str(e)
            raise UsageError(msg.replace("task.", f"{where}.", 1) if where != "task" else msg) \
                from None

    def to_dict(self) -> dict:
        """The compact block: ``{"name": "sr", "scale": 2}``, ``{"name": "denoise", "sigma": 25.0}``,
        ``{"name": "jpeg", "quality": 10}`` or ``{"name": "demosaic"}``."""
        d: dict = {"name": self.name}
        if self.name == "sr":
            d["scale"] = self.scale
        elif self.name == "denoise":
            d["sigma"] = self.sigma
        elif self.name == "jpeg":
            d["quality"] = self.quality
        return d

    @property
    def hr_modulo(self) -> int:
        """HR sizes are cropped to a multiple of this (scale for SR, 2 for the Bayer phase)."""
        return {"sr": self.scale, "demosaic": 2}.get(self.name, 1)

    def describe(self) -> str:
        """One line for table headers, e.g. ``SR x2 (MATLAB bicubic)``."""
        return {
            "sr": f"SR x{self.scale} (MATLAB bicubic)",
            "denoise": f"colour denoising, AWGN sigma={self.sigma:g}",
            "demosaic": "demosaicing, Bayer RGGB",
            "jpeg": f"JPEG artifact removal, q={self.quality}",
        }[self.name]

    # -- degradation -------------------------------------------------------------------------
    def degrade(self, hr: np.ndarray, seed: int = 0) -> np.ndarray:
        """Degrade an HR image (``(H, W, 3)`` uint8, H and W multiples of :attr:`hr_modulo`).

        Returns:
            The low-quality input ``(h, w, 3)`` float32 on the [0, 255] scale: uint8-valued for
            SR/demosaic/JPEG, unclipped and unquantised for AWGN (seeded by ``seed``).
        """
        if self.name == "sr":
            from nas.restoration.imresize import bicubic_degrade

            return bicubic_degrade(hr, self.scale).astype(np.float32)
        if self.name == "denoise":
            rng = np.random.default_rng(seed)
            noise = rng.standard_normal(hr.shape, dtype=np.float32) * np.float32(self.sigma)
            return hr.astype(np.float32) + noise
        if self.name == "demosaic":
            return bayer_rggb(hr).astype(np.float32)
        return jpeg_compress(hr, self.quality).astype(np.float32)


def bayer_rggb(img: np.ndarray) -> np.ndarray:
    """RGGB Bayer mosaic as a 3-channel image with zeros at the samples the sensor lacks.

    ``(H, W, 3) -> (H, W, 3)``, same dtype; R at (even, even), G at (even, odd) and (odd, even),
    B at (odd, odd).
    """
    out = np.zeros_like(img)
    out[0::2, 0::2, 0] = img[0::2, 0::2, 0]
    out[0::2, 1::2, 1] = img[0::2, 1::2, 1]
    out[1::2, 0::2, 1] = img[1::2, 0::2, 1]
    out[1::2, 1::2, 2] = img[1::2, 1::2, 2]
    return out


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode ``(H, W, 3)`` uint8 RGB with Pillow's JPEG at ``quality``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()
