"""Image-quality metrics with BasicSR / MATLAB semantics (PSNR, SSIM, PSNR-B).

Conventions (read this before comparing numbers with a paper):

* **Colour order is RGB everywhere** (numpy ``(H, W, 3)`` and torch ``(B, 3, H, W)``). BasicSR's
  ``bgr2ycbcr`` (OpenCV order) is *not* used; images loaded with PIL are already RGB.
* **Ranges:** numpy functions take ``uint8`` or float images in ``[0, 255]``; the torch twins
  (``*_pt``) take float tensors in ``[0, 1]``.
* **Y channel:** ITU-R BT.601 "studio swing", ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with
  ``R, G, B`` in ``[0, 1]`` (so Y is in ``[16, 235]`` on the 0-255 scale).
* **Order of operations** (BasicSR ``psnr_ssim.py``): crop ``crop_border`` pixels from every side
  first, then convert to Y, then compute in float64.
* **Y rounding (``round_y``).** MATLAB's ``rgb2ycbcr`` on a ``uint8`` image returns ``uint8``
  (``imlincomb`` rounds half away from zero), so the MATLAB scripts behind the published SR
  tables score Y rounded to 8 bits; BasicSR's ``to_y_channel`` keeps Y as float. The default
  here is ``round_y=True`` (:data:`SR_ROUND_Y`). Measured on the published bicubic table
  (Set5/Set14/B100 at x2/x3/x4; HR modcropped to the scale, MATLAB-bicubic uint8 LR, bicubic
  x s up, quantised): rounded Y is within 0.017 dB / 0.0005 SSIM of every cell, SSIM never
  high; float Y is within 0.022 dB but SSIM is high by +0.0004..+0.0009 in every cell. Pass
  ``round_y=False`` for BasicSR-identical numbers. ``round_y`` only matters when
  ``test_y_channel=True`` and the input has 3 channels.
* **Grayscale:** a ``(H, W)`` or ``(H, W, 1)`` image is taken as luminance already; with
  ``test_y_channel=True`` it is scored as is, *not* mapped through the BT.601 formula. This is
  what the published tables do for Set14's grayscale ``bridge.png`` (MATLAB scripts skip
  ``rgb2ycbcr`` for one-channel images). Converting it to RGB and scoring Y instead compresses
  its range by 219/255 and raises that image's PSNR by ~1.3 dB (Set14 mean +0.09 dB).
* **SSIM:** Wang et al. / MATLAB ``ssim_index``: 11 x 11 Gaussian window (sigma 1.5, normalised),
  ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, "valid" filtering (the 5-pixel rim of the
  SSIM map is dropped), mean over the map, then mean over channels.
* **PSNR** uses peak 255 and returns ``inf`` when the MSE is exactly 0.
* SR outputs should be quantised to 8 bits (:func:`quantize`) before scoring, as EDSR/BasicSR do.

Every function raises ``ValueError`` naming the offending argument on a shape mismatch, an
unsupported number of dimensions/channels or a bad ``crop_border``.

Public API: :func:`rgb_to_y`, :func:`rgb_to_y_pt`, :func:`quantize`, :func:`calculate_psnr`,
:func:`calculate_ssim`, :func:`calculate_psnr_b`, :func:`blocking_effect_factor`,
:func:`calculate_psnr_pt`, :func:`calculate_ssim_pt`, :data:`SR_ROUND_Y`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import correlate1d

__all__ = [
    "SR_ROUND_Y",
    "Y_COEFFS",
    "rgb_to_y",
    "rgb_to_y_pt",
    "quantize",
    "calculate_psnr",
    "calculate_ssim",
    "calculate_psnr_b",
    "blocking_effect_factor",
    "calculate_psnr_pt",
    "calculate_ssim_pt",
]

#: ITU-R BT.601 luma coefficients for R, G, B in [0, 1] -> Y on the 0-255 scale (plus 16).
Y_COEFFS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0
# The same in integers: 255000 * Y = 65481 R + 128553 G + 24966 B + 16 * 255000 (R, G, B 0-255).
_Y_INT = (65481, 128553, 24966)
_Y_INT_OFFSET = 16 * 255000
_Y_INT_DEN = 255000

#: Default Y rounding for the SR evaluation convention (MATLAB ``rgb2ycbcr`` on uint8).
SR_ROUND_Y = True

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
PSNRB_BLOCK = 8


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def round_half_away(x):
    """Round half away from zero (MATLAB ``round``/``uint8()``), numpy array or torch tensor."""
    if isinstance(x, torch.Tensor):
        return torch.sign(x) * torch.floor(x.abs() + 0.5)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _check_np_pair(img, img2) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(img)
    b = np.asarray(img2)
    for name, x in (("img", a), ("img2", b)):
        if x.ndim not in (2, 3):
            raise ValueError(f"{name} must be (H, W) or (H, W, C), got shape {x.shape}")
        if x.size == 0:
            raise ValueError(f"{name} is empty (shape {x.shape})")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"img and img2 must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _check_crop(crop_border, h: int, w: int, min_size: int = 1) -> int:
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)):
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    c = int(crop_border)
    if c < 0:
        raise ValueError(f"crop_border must be >= 0, got {c}")
    if h - 2 * c < min_size or w - 2 * c < min_size:
        raise ValueError(
            f"crop_border={c} leaves {h - 2 * c}x{w - 2 * c} of a {h}x{w} image "
            f"(need at least {min_size}x{min_size})"
        )
    return c


def _prepare(img, img2, crop_border, test_y_channel: bool, round_y: bool, min_size: int = 1):
    """Validate, crop, optional Y; returns float64 (H, W, C) arrays."""
    a, b = _check_np_pair(img, img2)
    c = _check_crop(crop_border, a.shape[0], a.shape[1], min_size)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if test_y_channel and a.shape[2] not in (1, 3):
        raise ValueError(
            f"test_y_channel=True needs 1 or 3 channels (RGB), img has shape {a.shape}"
        )
    if c:
        a = a[c:-c, c:-c]
        b = b[c:-c, c:-c]
    if test_y_channel and a.shape[2] == 3:
        a = rgb_to_y(a, round_to_uint8=round_y)[..., None]
        b = rgb_to_y(b, round_to_uint8=round_y)[..., None]
    return a.astype(np.float64), b.astype(np.float64)


# --------------------------------------------------------------------------------------------
# colour / quantisation
# --------------------------------------------------------------------------------------------


def rgb_to_y(img, *, round_to_uint8: bool = False) -> np.ndarray:
    """Luma of an RGB image, ITU-R BT.601: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``.

    Args:
        img: numpy ``(H, W, 3)`` **RGB** image, ``uint8`` or float in ``[0, 255]``.
        round_to_uint8: round Y half away from zero and clip to ``[0, 255]``, as MATLAB's
            ``rgb2ycbcr`` does on ``uint8`` input. ``False`` (BasicSR ``rgb2ycbcr(y_only=True)``)
            keeps the float value. Integer-valued input is rounded with exact integer
            arithmetic (exact ``.5`` ties always go up); other float input in float64.

    Returns:
        float64 ``(H, W)`` Y in ``[16, 235]`` for in-range input (integer-valued when rounded).
    """
    x = np.asarray(img)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"img must be an (H, W, 3) RGB image, got shape {x.shape}")
    if round_to_uint8 and _is_integral(x):
        # Exact: 255000 * Y = 65481 R + 128553 G + 24966 B + 16 * 255000 in int64, then round
        # half away from zero. Float arithmetic would misround some of the 194 RGB triplets
        # whose Y is exactly k + 0.5, depending on the order of operations.
        xi = x.astype(np.int64)
        num = _Y_INT[0] * xi[..., 0] + _Y_INT[1] * xi[..., 1] + _Y_INT[2] * xi[..., 2]
        num = num + _Y_INT_OFFSET
        y = np.where(num >= 0, (num + _Y_INT_DEN // 2) // _Y_INT_DEN,
                     -((-num + _Y_INT_DEN // 2) // _Y_INT_DEN))
        return np.clip(y, 0, 255).astype(np.float64)
    x = x.astype(np.float64)
    y = (
        Y_COEFFS[0] * x[..., 0] + Y_COEFFS[1] * x[..., 1] + Y_COEFFS[2] * x[..., 2]
    ) / 255.0 + Y_OFFSET
    if round_to_uint8:
        y = np.clip(round_half_away(y), 0.0, 255.0)
    return y


def _is_integral(x: np.ndarray) -> bool:
    if np.issubdtype(x.dtype, np.integer):
        return True
    if not np.issubdtype(x.dtype, np.floating) or x.size == 0:
        return False
    return bool(np.all(np.isfinite(x)) and np.all(x == np.round(x)) and np.abs(x).max() < 2**40)


def rgb_to_y_pt(img: torch.Tensor, *, round_to_uint8: bool = False) -> torch.Tensor:
    """Torch twin of :func:`rgb_to_y`: ``(B, 3, H, W)`` RGB in ``[0, 1]`` -> ``(B, 1, H, W)`` Y
    in ``[16/255, 235/255]``, same dtype and device.

    With ``round_to_uint8`` the 0-255 Y is rounded half away from zero (then divided by 255
    again); the computation is done in float64 and channel values within 1e-4 of an 8-bit level
    (``k / 255`` stored in float32) are snapped to it first, so quantised inputs give exactly the
    integer result of :func:`rgb_to_y`.
    """
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"img must be (B, 3, H, W) RGB, got shape {tuple(img.shape)}")
    if not round_to_uint8:
        w = torch.tensor(Y_COEFFS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
        return ((img * w).sum(dim=1, keepdim=True) + Y_OFFSET) / 255.0
    x = img.to(torch.float64) * 255.0
    r = torch.round(x)
    x = torch.where((x - r).abs() < 1e-4, r, x)
    w = torch.tensor(_Y_INT, dtype=torch.float64, device=img.device).view(1, 3, 1, 1)
    num = (x * w).sum(dim=1, keepdim=True) + _Y_INT_OFFSET  # 255000 * Y, exact for integers
    y = torch.sign(num) * torch.floor((num.abs() + _Y_INT_DEN / 2) / _Y_INT_DEN)
    return (torch.clamp(y, 0.0, 255.0) / 255.0).to(img.dtype)


def quantize(img):
    """Quantise an image in ``[0, 255]`` to 8 bits: round half away from zero, clip, ``uint8``.

    Accepts a numpy array (returns ``np.uint8``) or a torch tensor (returns ``torch.uint8``).
    Half-away rounding matches MATLAB ``uint8()``/``im2uint8``; for inputs away from exact .5
    ties it equals EDSR's ``utility.quantize`` and BasicSR's ``tensor2img``.
    """
    if isinstance(img, torch.Tensor):
        x = img.to(torch.float64) if not img.is_floating_point() else img
        return torch.clamp(round_half_away(x), 0, 255).to(torch.uint8)
    x = np.asarray(img)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"img must be a real numeric array, got dtype {x.dtype}")
    return np.clip(round_half_away(x.astype(np.float64)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# numpy metrics
# --------------------------------------------------------------------------------------------


def calculate_psnr(
    img,
    img2,
    crop_border: int = 0,
    test_y_channel: bool = False,
    *,
    round_y: bool = SR_ROUND_Y,
) -> float:
    """PSNR in dB (peak 255), BasicSR ``calculate_psnr`` semantics.

    Args:
        img, img2: numpy ``(H, W)`` or ``(H, W, C)`` images, ``uint8`` or float in ``[0, 255]``,
            same shape, RGB order when ``C == 3``.
        crop_border: pixels cropped from each border before anything else (SR: ``scale``).
        test_y_channel: score the BT.601 Y channel of RGB inputs instead of all channels.
        round_y: round Y to 8 bits (MATLAB convention, default); see the module notes.

    Returns:
        ``10 log10(255^2 / MSE)`` with the MSE over all remaining pixels and channels in float64;
        ``inf`` when the MSE is 0.
    """
    a, b = _prepare(img, img2, crop_border, test_y_channel, round_y)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation with ``g``, 'valid' part only."""
    r = len(g) // 2
    y = correlate1d(x, g, axis=0, mode="constant")
    y = correlate1d(y, g, axis=1, mode="constant")
    return y[r:-r, r:-r]


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MATLAB ``ssim_index`` map ('valid') of two float64 2-D images in [0, 255]."""
    g = _gaussian_1d()
    mu1 = _filter_valid(a, g)
    mu2 = _filter_valid(b, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(a * a, g) - mu1_sq
    s2 = _filter_valid(b * b, g) - mu2_sq
    s12 = _filter_valid(a * b, g) - mu12
    num = (2 * mu12 + SSIM_C1) * (2 * s12 + SSIM_C2)
    den = (mu1_sq + mu2_sq + SSIM_C1) * (s1 + s2 + SSIM_C2)
    return num / den


def calculate_ssim(
    img,
    img2,
    crop_border: int = 0,
    test_y_channel: bool = False,
    *,
    round_y: bool = SR_ROUND_Y,
) -> float:
    """SSIM (Wang et al. 2004; MATLAB ``ssim_index``), BasicSR ``calculate_ssim`` semantics.

    Args: as :func:`calculate_psnr`. After cropping the image must be at least 11 x 11.

    Returns:
        Mean of the 'valid' SSIM map (11 x 11 Gaussian, sigma 1.5, K = (0.01, 0.03), L = 255),
        averaged over channels; float64 computation.
    """
    a, b = _prepare(img, img2, crop_border, test_y_channel, round_y, min_size=SSIM_WINDOW)
    vals = [float(np.mean(_ssim_map(a[..., k], b[..., k]))) for k in range(a.shape[2])]
    return float(np.mean(vals))


def blocking_effect_factor(img, block_size: int = PSNRB_BLOCK) -> np.ndarray:
    """Blocking effect factor (Yim & Bovik 2011) of each channel of a numpy image.

    ``BEF = eta * max(D_B - D_Bc, 0)`` where ``D_B`` is the mean squared difference of
    horizontally/vertically adjacent pixel pairs that straddle a block boundary (between
    columns/rows ``8k - 1`` and ``8k``, 0-based), ``D_Bc`` the same over all other adjacent
    pairs, and ``eta = log2(B) / log2(min(H, W))``. Pairs are counted exactly (also for sizes
    that are not multiples of 8).

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` array in ``[0, 255]``.
        block_size: JPEG block size ``B`` (8).

    Returns:
        float64 array ``(C,)`` (``(1,)`` for 2-D input), on the 0-255 squared scale.
    """
    x = np.asarray(img, dtype=np.float64)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.size == 0:
        raise ValueError(f"img must be (H, W) or (H, W, C), got shape {np.shape(img)}")
    h, w = x.shape[:2]
    if min(h, w) < 2:
        raise ValueError(f"img must be at least 2x2 for the blocking effect factor, got {h}x{w}")
    dh = (x[:, 1:] - x[:, :-1]) ** 2  # (H, W-1): pair between column j and j+1
    dv = (x[1:, :] - x[:-1, :]) ** 2  # (H-1, W)
    bh = (np.arange(w - 1) % block_size) == block_size - 1
    bv = (np.arange(h - 1) % block_size) == block_size - 1
    n_b = h * bh.sum() + w * bv.sum()
    n_nb = h * (~bh).sum() + w * (~bv).sum()
    sum_b = dh[:, bh].sum(axis=(0, 1)) + dv[bv, :].sum(axis=(0, 1))
    sum_nb = dh[:, ~bh].sum(axis=(0, 1)) + dv[~bv, :].sum(axis=(0, 1))
    d_b = sum_b / n_b if n_b else np.zeros(x.shape[2])
    d_nb = sum_nb / n_nb if n_nb else np.zeros(x.shape[2])
    eta = math.log2(block_size) / math.log2(min(h, w))
    return np.where(d_b > d_nb, eta * (d_b - d_nb), 0.0)


def calculate_psnr_b(
    img,
    img2,
    crop_border: int = 0,
    test_y_channel: bool = False,
    *,
    round_y: bool = SR_ROUND_Y,
) -> float:
    """PSNR-B (Yim & Bovik 2011), the JPEG artifact-removal metric of SwinIR/FBCNN.

    Args:
        img: the **test** image (restored or compressed); its blocking effect factor is used.
        img2: the reference (ground truth).
        crop_border, test_y_channel, round_y: as :func:`calculate_psnr`.

    Returns:
        Per channel ``10 log10(255^2 / (MSE + BEF(img)))``, averaged over channels (SwinIR's
        ``calculate_psnrb``); ``inf`` when MSE + BEF is 0. Always ``<= calculate_psnr`` for one
        channel. The block grid is anchored at the top-left of the *cropped* image, as in SwinIR.
        For sizes that are multiples of 8 this equals SwinIR/FBCNN; for other sizes SwinIR
        counts ``H * (W // 8 - 1)`` boundary pairs while this counts the actual pairs.
    """
    a, b = _prepare(img, img2, crop_border, test_y_channel, round_y, min_size=2)
    bef = blocking_effect_factor(a)
    mse = np.mean((a - b) ** 2, axis=(0, 1))
    vals = []
    for m, e in zip(mse, bef):
        d = float(m + e)
        vals.append(float("inf") if d == 0 else 10.0 * math.log10(255.0**2 / d))
    return float(np.mean(vals))


# --------------------------------------------------------------------------------------------
# torch twins (validation during training)
# --------------------------------------------------------------------------------------------


def _prepare_pt(img, img2, crop_border, test_y_channel, round_y, min_size=1):
    for name, x in (("img", img), ("img2", img2)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if img.shape != img2.shape:
        raise ValueError(
            f"img and img2 must have the same shape, got {tuple(img.shape)} and "
            f"{tuple(img2.shape)}"
        )
    c = _check_crop(crop_border, img.shape[-2], img.shape[-1], min_size)
    if test_y_channel and img.shape[1] not in (1, 3):
        raise ValueError(
            f"test_y_channel=True needs 1 or 3 channels (RGB), img has shape {tuple(img.shape)}"
        )
    a = img.to(torch.float64)
    b = img2.to(torch.float64)
    if c:
        a = a[..., c:-c, c:-c]
        b = b[..., c:-c, c:-c]
    if test_y_channel and a.shape[1] == 3:
        a = rgb_to_y_pt(a, round_to_uint8=round_y)
        b = rgb_to_y_pt(b, round_to_uint8=round_y)
    return a, b


def calculate_psnr_pt(
    img: torch.Tensor,
    img2: torch.Tensor,
    crop_border: int = 0,
    test_y_channel: bool = False,
    *,
    round_y: bool = SR_ROUND_Y,
) -> torch.Tensor:
    """Batched PSNR in dB for float tensors ``(B, C, H, W)`` in ``[0, 1]`` (RGB when C == 3).

    Same conventions as :func:`calculate_psnr` (crop, then Y, float64, peak 1). Returns a float64
    tensor ``(B,)`` on the input device, ``inf`` where the MSE is 0. On inputs that are exact
    multiples of 1/255 it matches :func:`calculate_psnr` on ``255 * img``.
    """
    a, b = _prepare_pt(img, img2, crop_border, test_y_channel, round_y)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / mse)  # 1/0 -> inf -> inf dB


def calculate_ssim_pt(
    img: torch.Tensor,
    img2: torch.Tensor,
    crop_border: int = 0,
    test_y_channel: bool = False,
    *,
    round_y: bool = SR_ROUND_Y,
) -> torch.Tensor:
    """Batched SSIM for float tensors ``(B, C, H, W)`` in ``[0, 1]``; returns ``(B,)`` float64.

    Same window/constants as :func:`calculate_ssim` (computed on the 0-255 scale, 'valid'),
    mean over the map and channels.
    """
    a, b = _prepare_pt(img, img2, crop_border, test_y_channel, round_y, min_size=SSIM_WINDOW)
    a = a * 255.0
    b = b * 255.0
    n, ch = a.shape[:2]
    g = torch.from_numpy(_gaussian_1d()).to(device=a.device, dtype=a.dtype)
    win = torch.outer(g, g).expand(ch, 1, SSIM_WINDOW, SSIM_WINDOW)

    def filt(x):
        return F.conv2d(x, win, groups=ch)

    mu1, mu2 = filt(a), filt(b)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = filt(a * a) - mu1_sq
    s2 = filt(b * b) - mu2_sq
    s12 = filt(a * b) - mu12
    smap = ((2 * mu12 + SSIM_C1) * (2 * s12 + SSIM_C2)) / (
        (mu1_sq + mu2_sq + SSIM_C1) * (s1 + s2 + SSIM_C2)
    )
    return smap.reshape(n, ch, -1).mean(dim=2).mean(dim=1)
