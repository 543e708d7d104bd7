"""Paired training data: degraded copies of HR images, train/val split, random aligned patches.

Images are ``uint8`` arrays ``(H, W, 3)`` (RGB) until they become model tensors ``(B, 3, H, W)``
float32 in [0, 1]. Degraded inputs of evaluation images can be cached on disk (keyed by image
content, task and seed).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nas.errors import UsageError, did_you_mean
from nas.restoration.images import (
    BUILTIN_GROUPS,
    BUILTIN_PHOTOS,
    image_size,
    list_images,
    load_builtin,
    load_folder,
)
from nas.restoration.task import Task, modcrop


def image_seed(name: str, base: int = 0) -> int:
    """A stable per-image seed (CRC32 of the name plus ``base``) for evaluation noise."""
    return (zlib.crc32(name.encode()) + base) % (2**31)


# ------------------------------------------------------------------------------ paired images
@dataclass
class PairedImage:
    """One HR image and its degraded input: ``hr`` uint8 ``(H, W, 3)``, ``lq`` float32 [0, 255]."""

    name: str
    hr: np.ndarray
    lq: np.ndarray
    gray: bool = False  # the HR file is single-channel: scored on gray values, not Y


def make_pairs(
    images: dict[str, np.ndarray], task: Task, seed: int = 0, cache_dir: Path | None = None,
    gray: set[str] | frozenset = frozenset(),
) -> list[PairedImage]:
    """Modcrop each HR image and degrade it (cached on disk when ``cache_dir`` is given).

    ``gray``: names of images stored as single-channel files (see :class:`PairedImage`).
    """
    pairs = []
    for name, img in images.items():
        hr = modcrop(img, task.hr_modulo)
        lq = _cached_degrade(hr, task, image_seed(name, seed), cache_dir)
        pairs.append(PairedImage(name, hr, lq, name in gray))
    return pairs


def _cached_degrade(hr: np.ndarray, task: Task, seed: int, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return task.degrade(hr, seed)
    key = hashlib.sha1(hr.tobytes() + repr((hr.shape, task, seed, 1)).encode()).hexdigest()
    path = Path(cache_dir) / f"{key}.npy"
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    lq = task.degrade(hr, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, lq)
    os.replace(tmp, path)
    return lq


def default_cache_dir() -> Path:
    """``$ACLA_NAS_CACHE`` or ``~/.cache/acla-nas`` (degraded benchmark inputs)."""
    env = os.environ.get("ACLA_NAS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "acla-nas"


def split_data(names: Sequence[str], val_fraction: float, score_fraction: float = 0.0,
               seed: int = 0, groups: Sequence[Sequence[str]] = ()) -> tuple[list, list, list]:
    """Split image names into (train, val, score): weights train on ``train``, the architecture
    logits on ``val``, and architectures are scored on ``score`` - images neither the weights nor
    the logits have seen. Names of one group (e.g. the two views of a stereo pair) stay together.

    Args:
        names: image names.
        val_fraction: share of images for the alpha split, in (0, 1).
        score_fraction: share of images for scoring, in [0, 1) (0: no scoring split).
        seed: seed of the shuffle.
        groups: sets of names that must land in one split.

    Returns:
        Sorted ``(train, val, score)`` name lists; every split that is asked for is non-empty.

    Raises:
        UsageError: fractions out of range, or too few images (or groups) for the splits.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"data.val_fraction: must be in (0, 1), got {val_fraction}")
    if not 0.0 <= score_fraction < 1.0 or val_fraction + score_fraction >= 1.0:
        raise UsageError(f"data.score_fraction: must be in [0, 1) with val_fraction + "
                         f"score_fraction < 1, got {score_fraction}")
    names = sorted(set(names))
    unit_of = {n: n for n in names}
    for g in groups:
        members = sorted(n for n in g if n in unit_of)
        for n in members:
            unit_of[n] = members[0]
    units: dict[str, list[str]] = {}
    for n in names:
        units.setdefault(unit_of[n], []).append(n)
    keys = sorted(units)
    need = 2 + (score_fraction > 0)
    if len(keys) < need:
        raise UsageError(f"data: need at least {need} images (or image groups) for the train/val"
                         f"{'/score' if score_fraction > 0 else ''} split, got {len(keys)}")
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    n = len(names)
    active = [(split, frac) for split, frac in (("score", score_fraction), ("val", val_fraction))
              if frac > 0]
    out: dict[str, list[str]] = {"score": [], "val": [], "train": []}
    i = 0
    for idx, (split, frac) in enumerate(active):
        reserve = len(active) - idx  # the later splits and train need a unit each
        want = max(1, round(frac * n))
        while i < len(order) - reserve:
            unit = units[order[i]]
            if out[split] and len(out[split]) + len(unit) > want:
                break
            out[split] += unit
            i += 1
            if len(out[split]) >= want:
                break
    for k in order[i:]:
        out["train"] += units[k]
    return sorted(out["train"]), sorted(out["val"]), sorted(out["score"])


def augment_pair(lq, hr, rng, keep_bayer: bool):
    """Random horizontal/vertical flips and transposition of an aligned ``(lq, hr)`` pair
    (``(h, w, 3)`` arrays; for a Bayer mosaic only transposition, which keeps the RGGB phase)."""
    if not keep_bayer:
        if rng.random() < 0.5:
            lq, hr = lq[:, ::-1], hr[:, ::-1]
        if rng.random() < 0.5:
            lq, hr = lq[::-1], hr[::-1]
    if rng.random() < 0.5:
        lq, hr = lq.transpose(1, 0, 2), hr.transpose(1, 0, 2)
    return lq, hr


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """``(B, H, W, 3)`` or ``(H, W, 3)`` on [0, 255] -> ``(B, 3, H, W)`` float32 on [0, 1]."""
    if batch.ndim == 3:
        batch = batch[None]
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).float() / 255.0


def to_image(t: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8 (rounded, clipped)."""
    if t.dim() == 4:
        t = t[0]
    arr = t.detach().float().cpu().clamp(0, 1).mul(255.0).round().byte().numpy()
    return arr.transpose(1, 2, 0)


@dataclass
class DataConfig:
    """Where training/validation images come from (the ``data`` block of a config).

    Attributes:
        source: ``"builtin"`` (skimage photos) or a folder path of HR images.
        images: subset of built-in photo names (default: all of :data:`BUILTIN_PHOTOS`).
        val_fraction: share of images held out for the alpha steps.
        score_fraction: share of images held out for scoring architectures (0: none).
        groups: names that must stay in one split (the built-in stereo pair always does).
        split_seed: seed of the train/val/score split (not the run's seed: every trial of a study
            splits alike, whatever its own seed).
        patch_size: HR patch side.
        batch_size: patches per step (the global batch: all ranks of a torchrun group together).
        lr_source: a folder of paired LR images (SR; the DIV2K layout ``0001x2.png`` for
            ``0001.png``) instead of MATLAB bicubic.
        storage: ``memory`` (decode every image once and keep it), ``subimages`` (cut the images
            into sub-images cached on disk, memory flat in the number of images), or ``auto``
            (``subimages`` for folders of more than 50 images or with ``lr_source``).
        workers: ``DataLoader`` worker processes building the patches (0: the training process).
        augment: random flips and transposition of every training and alpha patch (BasicSR's
            ``use_hflip`` + ``use_rot``); ``false`` for data whose orientation carries meaning
            (e.g. the planted problem's left-to-right copy).
    """

    source: str = "builtin"
    images: list[str] = field(default_factory=list)
    val_fraction: float = 0.2
    score_fraction: float = 0.2
    groups: list = field(default_factory=list)
    split_seed: int = 0
    patch_size: int = 48
    batch_size: int = 8
    lr_source: typing.Optional[str] = None
    storage: str = "auto"
    workers: int = 0
    augment: bool = True

    def disk_backed(self, n_images: int) -> bool:
        """Whether the training and alpha splits are read from a sub-image cache."""
        if self.storage == "auto":
            return self.source != "builtin" and (n_images > 50 or self.lr_source is not None)
        return self.storage == "subimages"

    def split_groups(self) -> list[list[str]]:
        """The groups kept together by :func:`split_data` (the built-in stereo pair, plus
        ``groups``)."""
        out = [list(g) for g in self.groups]
        if self.source == "builtin":
            out += [list(g) for g in BUILTIN_GROUPS]
        return out

    def load(self) -> dict[str, np.ndarray]:
        """The selected images as ``{name: (H, W, 3) uint8}``.

        Raises:
            UsageError: unknown built-in photo, missing folder, unreadable image, or a name in
                ``images`` that the folder does not hold.
        """
        if self.source == "builtin":
            return load_builtin(self.images or None)
        imgs = load_folder(self.source)
        if self.images:
            missing = [n for n in self.images if n not in imgs]
            if missing:
                raise UsageError(f"data.images: not in {self.source}: {missing}")
            imgs = {n: imgs[n] for n in self.images}
        return imgs

    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """``{name: (H, W)}`` of the selected images, read from file headers (no decoding).

        Raises:
            UsageError: as :meth:`load`.
        """
        if self.source == "builtin":
            return {n: img.shape[:2] for n, img in load_builtin(self.images or None).items()}
        sizes = {p.stem: image_size(p) for p in list_images(self.source)}
        if self.images:
            missing = [n for n in self.images if n not in sizes]
            if missing:
                raise UsageError(f"data.images: not in {self.source}: {missing}")
            sizes = {n: sizes[n] for n in self.images}
        return sizes

    def check(self, task: Task, min_images: int = 2) -> None:
        """Validate the block against a task before anything is trained.

        Raises:
            UsageError: unknown built-in photo, missing or empty folder, ``val_fraction`` outside
                (0, 1), ``patch_size`` < 8 or not a multiple of the task's HR modulo (the scale
                for SR, 2 for demosaicing), ``batch_size`` < 1, fewer than ``min_images`` images,
                or an image smaller than a patch (names the image).
        """
        if self.source == "builtin":
            bad = [n for n in self.images if n not in BUILTIN_PHOTOS]
            if bad:
                raise UsageError(f"data.images: unknown built-in photo {bad[0]!r}"
                                 f"{did_you_mean(bad[0], BUILTIN_PHOTOS)}; known: "
                                 f"{', '.join(BUILTIN_PHOTOS)}")
        elif not Path(self.source).is_dir():
            raise UsageError(f"data.source: {self.source}: image folder does not exist")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"data.val_fraction: must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.score_fraction < 1 or self.val_fraction + self.score_fraction >= 1:
            raise UsageError(f"data.score_fraction: must be in [0, 1) with val_fraction + "
                             f"score_fraction < 1, got {self.score_fraction}")
        for i, g in enumerate(self.groups):
            if not isinstance(g, list) or not all(isinstance(n, str) for n in g):
                raise UsageError(f"data.groups[{i}]: expected a list of image names, got {g!r}")
        if self.patch_size < 8:
            raise UsageError(f"data.patch_size: must be >= 8, got {self.patch_size}")
        if self.patch_size % task.hr_modulo:
            raise UsageError(f"data.patch_size: {self.patch_size} is not a multiple of "
                             f"{task.hr_modulo} ({task.describe()})")
        if self.batch_size < 1:
            raise UsageError(f"data.batch_size: must be >= 1, got {self.batch_size}")
        if self.storage not in ("auto", "memory", "subimages"):
            raise UsageError(f"data.storage: 'auto', 'memory' or 'subimages', got {self.storage!r}"
                             f"{did_you_mean(self.storage, ('auto', 'memory', 'subimages'))}")
        if self.workers < 0:
            raise UsageError(f"data.workers: must be >= 0, got {self.workers}")
        if not isinstance(self.augment, bool):
            raise UsageError(f"data.augment: expected true or false, got {self.augment!r}")
        if self.lr_source is not None:
            if task.name != "sr":
                raise UsageError("data.lr_source: paired LR images are for super-resolution")
            if self.source == "builtin":
                raise UsageError("data.lr_source: needs a folder of HR images as data.source")
            if not Path(self.lr_source).is_dir():
                raise UsageError(f"data.lr_source: {self.lr_source}: folder does not exist")
            if self.storage == "memory":  # the in-memory path degrades HR images itself
                raise UsageError("data.storage: 'memory' does not read data.lr_source; use "
                                 "'auto' or 'subimages' with paired LR images")
        try:
            sizes = self.image_sizes()
        except UsageError as e:
            msg = str(e)
            raise UsageError(msg if msg.startswith("data") else f"data.source: {msg}") from None
        for i, g in enumerate(self.groups):
            missing = [n for n in g if n not in sizes]
            if missing:
                raise UsageError(f"data.groups[{i}]: no image {missing[0]!r} in the data")
        if len(sizes) < min_images:
            raise UsageError(f"data.source: {self.source}: {len(sizes)} image(s), need at least "
                             f"{min_images} for a train/validation split")
        for name, (h, w) in sizes.items():
            if min(h, w) < self.patch_size:
                raise UsageError(f"data.patch_size: {self.patch_size} is larger than image "
                                 f"{name!r} ({w}x{h})")
