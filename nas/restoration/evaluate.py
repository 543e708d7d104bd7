"""Benchmark evaluation: PSNR / SSIM (/ PSNR-B) per image and per set, with the convention printed.

Conventions (as the SR and restoration papers report them; ``docs/design.md``, "Conventions"):

========== ======== ================ ================================================
task       channel  crop border      notes
========== ======== ================ ================================================
sr         Y        scale            HR modcropped to the scale; LR by MATLAB bicubic
denoise    RGB      0                AWGN with a fixed seed per image
demosaic   RGB      0                Bayer RGGB
jpeg       Y        0                PSNR, SSIM and PSNR-B
========== ======== ================ ================================================

Y is ITU-R BT.601 (``16 + 65.481 R + 128.553 G + 24.966 B``); outputs are quantised to 8 bits
before scoring. Colour order is RGB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from nas.restoration.data import PairedImage, make_pairs, to_image, to_tensor
from nas.restoration.images import load_set_with_gray
from nas.restoration.task import Task

#: restore(lq (1, 3, h, w) float [0, 1]) -> (1, 3, H, W) float [0, 1]
RestoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Convention:
    """How a table's numbers were computed."""

    y_channel: bool
    crop_border: int
    psnr_b: bool = False

    @classmethod
    def for_task(cls, task: Task) -> "Convention":
        """The papers' convention of a task (SR: Y, crop = scale; JPEG: Y, PSNR-B; else RGB)."""
        if task.name == "sr":
            return cls(True, task.scale)
        if task.name == "jpeg":
            return cls(True, 0, psnr_b=True)
        return cls(False, 0)

    def describe(self) -> str:
        """One line for table headers, e.g. ``Y (BT.601, 8-bit), crop_border=2, ...``."""
        ch = "Y (BT.601, 8-bit)" if self.y_channel else "RGB"
        return f"{ch}, crop_border={self.crop_border}, outputs quantised to uint8"


def gray_of(img: np.ndarray) -> np.ndarray:
    """Luma of ``(H, W, 3)`` uint8 with the BT.601 weights normalised to sum 1, rounded to uint8.

    For a gray image (equal channels) this is the gray image itself.
    """
    w = np.array([65.481, 128.553, 24.966]) / 219.0
    from nas.restoration.metrics import round_half_away

    return np.clip(round_half_away(img.astype(np.float64) @ w), 0, 255).astype(np.uint8)


def score(out: np.ndarray, hr: np.ndarray, conv: Convention,
          gray: bool = False) -> dict[str, float]:
    """PSNR (dB), SSIM (and PSNR-B) of a uint8 ``(H, W, 3)`` output against its HR image.

    ``gray``: the HR file is single-channel (Set14 ``bridge.png``, Classic5). With a Y
    convention it is scored on its gray values, as MATLAB scores a 2-D image, and the output is
    reduced to its luma (BT.601 weights normalised to 1). Putting a gray image through the Y
    formula instead would shrink its range by 219/255 and raise its PSNR by about 1.3 dB.
    """
    from nas.restoration.metrics import calculate_psnr, calculate_psnr_b, calculate_ssim

    if conv.y_channel and gray:
        out, hr = gray_of(out), hr[..., 0]
    kw = dict(crop_border=conv.crop_border, test_y_channel=conv.y_channel)
    row = {"psnr": float(calculate_psnr(out, hr, **kw)),
           "ssim": float(calculate_ssim(out, hr, **kw))}
    if conv.psnr_b:
        row["psnr_b"] = float(calculate_psnr_b(out, hr, **kw))
    return row


def baseline_output(pair: PairedImage, task: Task) -> np.ndarray:
    """The no-model baseline: MATLAB bicubic upscaling for SR, the degraded input otherwise."""
    if task.name == "sr":
        from nas.restoration.imresize import imresize_uint8

        return imresize_uint8(pair.lq.astype(np.uint8), task.scale)
    return np.clip(np.round(pair.lq), 0, 255).astype(np.uint8)


def model_restore_fn(model: torch.nn.Module, device: torch.device) -> RestoreFn:
    """Wrap a network as a :data:`RestoreFn` (eval mode, no grad, output clamped to [0, 1])."""
    model = model.eval().to(device)

    @torch.no_grad()
    def restore(lq: torch.Tensor) -> torch.Tensor:
        return model(lq.to(device)).clamp_(0, 1).cpu()

    return restore


def evaluate_pairs(
    pairs: Sequence[PairedImage],
    task: Task,
    restore: RestoreFn | None,
    set_name: str = "",
    progress: bool = True,
) -> pd.DataFrame:
    """Score every image of a set.

    Args:
        pairs: HR images with their degraded inputs (see :func:`nas.restoration.data.make_pairs`).
        task: the task (fixes the convention, see :class:`Convention`).
        restore: the model as a :data:`RestoreFn`, or ``None`` for :func:`baseline_output`.
        set_name: label for the ``set`` column and the progress bar.
        progress: show a tqdm bar over images.

    Returns:
        One row per image: ``set, image, psnr [dB], ssim (, psnr_b [dB]), seconds``.
    """
    conv = Convention.for_task(task)
    rows = []
    bar = tqdm(pairs, desc=f"eval {set_name}", unit="img", disable=not progress, leave=False)
    for pair in bar:
        t0 = time.perf_counter()
        if restore is None:
            out = baseline_output(pair, task)
        else:
            out = to_image(restore(to_tensor(pair.lq)))
        if out.shape != pair.hr.shape:
            raise ValueError(
                f"{set_name}/{pair.name}: output shape {out.shape} != HR shape {pair.hr.shape}"
            )
        rows.append(
            {"set": set_name, "image": pair.name, **score(out, pair.hr, conv, pair.gray),
             "seconds": time.perf_counter() - t0}
        )
    return pd.DataFrame(rows)


def evaluate_sets(
    data_root: Path,
    sets: Sequence[str],
    task: Task,
    restore: RestoreFn | None,
    cache_dir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`evaluate_pairs` over several benchmark sets found below ``data_root``.

    Degraded inputs are cached in ``cache_dir`` (keyed by image content, task and seed), so a
    second evaluation does not redo the bicubic / JPEG / noise.

    Raises:
        UsageError: unknown or missing set, unreadable image (see :mod:`nas.restoration.data`).
    """
    frames = []
    images = {name: load_set_with_gray(data_root, name) for name in sets}  # fail early
    for name in sets:
        imgs, gray = images[name]
        pairs = make_pairs(imgs, task, seed=seed, cache_dir=cache_dir, gray=gray)
        frames.append(evaluate_pairs(pairs, task, restore, set_name=name, progress=progress))
    return pd.concat(frames, ignore_index=True)


def per_set_means(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per set (``images`` = count), in the order the sets were given."""
    metrics = [c for c in ("psnr", "ssim", "psnr_b") if c in per_image]
    order = list(dict.fromkeys(per_image["set"]))
    g = per_image.groupby("set", sort=False)
    out = g[metrics].mean()
    out.insert(0, "images", g.size())
    return out.loc[order].reset_index()


@torch.no_grad()
def psnr_on_centre_crops(net: torch.nn.Module, pairs: Sequence[PairedImage], task: Task, crop: int,
                         to_device: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> float:
    """Mean PSNR (dB) of ``net`` on centre ``crop x crop`` HR crops of ``pairs``.

    Scored with the task's benchmark convention (:class:`Convention`: SR on Y with ``scale``
    pixels cropped, ...); crops keep the LR/HR alignment and the Bayer phase. ``net`` is put in
    eval mode.

    Args:
        net: ``(1, 3, h, w) -> (1, 3, H, W)`` in [0, 1].
        pairs: HR images with their degraded inputs.
        task: the task.
        crop: HR crop side in pixels (reduced to fit each image and the task's modulo).
        to_device: moves an input tensor to the network's device (and memory format).

    Returns:
        The mean PSNR in dB over ``pairs``.
    """
    conv = Convention.for_task(task)
    m = 2 * task.hr_modulo
    s = task.scale
    vals = []
    net.eval()
    for pair in pairs:
        h, w = pair.hr.shape[:2]
        c = min(crop - crop % m, h - h % m, w - w % m)
        y, x = (h - c) // 2 // m * m, (w - c) // 2 // m * m
        hr = pair.hr[y: y + c, x: x + c]
        lq = pair.lq[y // s: (y + c) // s, x // s: (x + c) // s]
        out = net(to_device(to_tensor(lq))).float().clamp(0, 1)
        vals.append(score(to_image(out), hr, conv)["psnr"])
    return float(np.mean(vals))
