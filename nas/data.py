"""Images, degradations, patch sampling and benchmark sets.

Colour order is **RGB** everywhere; images are ``uint8`` arrays ``(H, W, 3)`` until they become
model tensors ``(B, 3, H, W)`` float32 in [0, 1].

Data sources:

* the built-in photos shipped inside the scikit-image wheel (:data:`BUILTIN_PHOTOS`), the default
  data set: real images, no download;
* folders of HR images (``*.png``, ``*.jpg``, ``*.bmp``, ``*.tif``), e.g. T91 or the benchmark
  sets laid out as ``<root>/benchmarks/<Set>/HR/*.png`` (``--data-root`` or ``ACLA_NAS_DATA``).

Degradations (:class:`Task`): MATLAB-compatible bicubic x s (super-resolution), additive white
Gaussian noise of std sigma on the [0, 255] scale (denoising; fixed seed per image for evaluation,
unclipped float), Bayer RGGB mosaic (demosaicing; the 3-channel mosaic with zeros at missing
samples), JPEG at quality q via Pillow (artifact removal, 4:2:0 chroma subsampling as Pillow's
default).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nas.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SCALES = (2, 3, 4)
TASKS = ("sr", "denoise", "demosaic", "jpeg")

#: skimage.data photos used as the built-in data set (real photographs, shipped in the wheel)
BUILTIN_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle_left",
    "motorcycle_right",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
)


# --------------------------------------------------------------------------------------- images
def to_rgb_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Grayscale ``(H, W)``/``(H, W, 1)``, RGBA or bool -> ``(H, W, 3)`` uint8 RGB.

    Raises:
        UsageError: unsupported shape or dtype (names ``name``).
    """
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.size and img.max() <= 1.0:
            img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
        elif img.dtype == np.uint16:
            img = np.round(img / 257.0).astype(np.uint8)
        else:
            img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise UsageError(f"{name}: unsupported image shape {img.shape}")
    return np.ascontiguousarray(img)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (grayscale and RGBA are converted).

    Raises:
        UsageError: missing, unreadable or corrupt file (names the file).
    """
    return _read(path)[0]


def is_gray_file(path: str | os.PathLike) -> bool:
    """True when the file stores a single-channel image (PIL mode ``L``, ``I;16``, ``1``...)."""
    return _read(path)[1]


def _read(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from None
    return to_rgb_uint8(arr, str(path)), gray


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files in ``folder`` (not recursive).

    Raises:
        UsageError: the folder is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: image folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{folder}: no images ({'/'.join(IMAGE_SUFFIXES)}) in folder")
    return files


def load_builtin(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The built-in real photos of ``skimage.data`` as ``{name: (H, W, 3) uint8}``.

    Args:
        names: subset of :data:`BUILTIN_PHOTOS` (default: all).

    Raises:
        UsageError: unknown photo name.
    """
    import skimage.data as skd

    out: dict[str, np.ndarray] = {}
    for name in names or BUILTIN_PHOTOS:
        if name not in BUILTIN_PHOTOS:
            raise UsageError(
                f"unknown built-in photo {name!r}; known: {', '.join(BUILTIN_PHOTOS)}"
            )
        if name.startswith("motorcycle_"):
            left, right, _ = skd.stereo_motorcycle()
            img = left if name.endswith("left") else right
        else:
            img = getattr(skd, name)()
        out[name] = to_rgb_uint8(img, f"skimage.data.{name}")
    return out


def load_folder(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """All images of a folder as ``{file stem: (H, W, 3) uint8}`` (see :func:`list_images`)."""
    return load_folder_with_gray(folder)[0]


def load_folder_with_gray(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], set[str]]:
    """:func:`load_folder` plus the stems of single-channel files (scored on gray, not Y)."""
    images, gray = {}, set()
    for p in list_images(folder):
        images[p.stem], g = _read(p)
        if g:
            gray.add(p.stem)
    return images, gray


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
            raise UsageError(f"task.name: unknown task {self.name!r}; known: {', '.join(TASKS)}")
        if self.name == "sr" and self.scale not in SCALES:
            raise UsageError(
                f"scale: must be one of 2, 3, 4 for super-resolution, got {self.scale}"
            )
        if self.name != "sr" and self.scale != 1:
            object.__setattr__(self, "scale", 1)
        if self.name == "denoise" and not self.sigma > 0:
            raise UsageError(f"task.sigma: must be > 0, got {self.sigma}")
        if self.name == "jpeg" and not 1 <= int(self.quality) <= 100:
            raise UsageError(f"task.quality: must be in 1..100, got {self.quality}")

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        known = {"name", "scale", "sigma", "quality"}
        bad = set(d) - known
        if bad:
            raise UsageError(f"task: unknown key(s) {sorted(bad)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
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
            from nas.imresize import bicubic_degrade

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


def split_names(names: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Split image names into (train, val) for bilevel search; at least one image each.

    Raises:
        UsageError: fewer than two images, or ``val_fraction`` outside (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"data.val_fraction: must be in (0, 1), got {val_fraction}")
    names = sorted(names)
    if len(names) < 2:
        raise UsageError(f"data: need at least 2 images for a train/val split, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val


class PatchSampler:
    """Random aligned (LQ, HR) patches with flips and 90-degree rotations.

    Args:
        pairs: degraded images (see :func:`make_pairs`).
        task: the task (its scale aligns LQ and HR crops; AWGN is re-drawn for every patch).
        patch_size: HR patch side in pixels (LQ side = patch_size / scale).
        augment: random horizontal/vertical flips and transposition.
        seed: seed of the sampler's own generator (its state is checkpointed).

    Raises:
        UsageError: patch_size not a multiple of the scale (or 2 for demosaicing), or an image
            smaller than a patch (names the image).
    """

    def __init__(
        self,
        pairs: Sequence[PairedImage],
        task: Task,
        patch_size: int,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if patch_size % task.hr_modulo:
            raise UsageError(
                f"patch_size: {patch_size} is not a multiple of {task.hr_modulo} "
                f"({task.describe()})"
            )
        for p in pairs:
            if min(p.hr.shape[:2]) < patch_size:
                raise UsageError(
                    f"{p.name}: image {p.hr.shape[1]}x{p.hr.shape[0]} is smaller than the patch "
                    f"size {patch_size}"
                )
        if not pairs:
            raise UsageError("data: no training images")
        self.pairs = list(pairs)
        self.task = task
        self.patch_size = patch_size
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        # clean LQ for AWGN: noise is drawn per patch
        self._clean = task.name == "denoise"

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a batch: ``(lq (B, 3, p/s, p/s), hr (B, 3, p, p))`` float32 in [0, 1]."""
        s, p = self.task.scale, self.patch_size
        mod = 2 if self.task.name == "demosaic" else 1  # keep the Bayer phase
        lqs, hrs = [], []
        for _ in range(batch_size):
            pair = self.pairs[self.rng.integers(len(self.pairs))]
            h, w = pair.hr.shape[:2]
            y = int(self.rng.integers(0, (h - p) // (s * mod) + 1)) * s * mod
            x = int(self.rng.integers(0, (w - p) // (s * mod) + 1)) * s * mod
            hr = pair.hr[y : y + p, x : x + p].astype(np.float32)
            if self._clean:
                lq = hr + self.rng.standard_normal(hr.shape, dtype=np.float32) * np.float32(
                    self.task.sigma
                )
            else:
                lq = pair.lq[y // s : (y + p) // s, x // s : (x + p) // s]
            if self.augment:
                lq, hr = _augment(lq, hr, self.rng, keep_bayer=self.task.name == "demosaic")
            lqs.append(np.ascontiguousarray(lq))
            hrs.append(np.ascontiguousarray(hr))
        return to_tensor(np.stack(lqs)), to_tensor(np.stack(hrs))


def _augment(lq, hr, rng, keep_bayer: bool):
    # flips and transposition; for a Bayer mosaic only transposition keeps the RGGB phase
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


# ----------------------------------------------------------------------------- benchmark sets
#: where each benchmark set lives below the data root (the layout of ../shared/data)
SET_LOCATIONS: dict[str, tuple[str, ...]] = {
    "Set5": ("benchmarks/Set5/HR",),
    "Set14": ("benchmarks/Set14/HR",),
    "B100": ("benchmarks/B100/HR",),
    "Urban100": ("benchmarks/Urban100/HR",),
    "Manga109": ("benchmarks/Manga109/HR",),
    "CBSD68": ("denoise/CBSD68",),
    "Kodak24": ("denoise/Kodak24",),
    "McMaster": ("demosaic/McMaster",),
    "LIVE1": ("jpeg/LIVE1",),
    "Classic5": ("jpeg/Classic5",),
    "T91": ("train/T91",),
}


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """``data_root``, else ``$ACLA_NAS_DATA``.

    Raises:
        UsageError: neither given, or the folder does not exist.
    """
    root = data_root or os.environ.get("ACLA_NAS_DATA")
    if not root:
        raise UsageError("--data-root: not given and ACLA_NAS_DATA is not set")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"--data-root: {root} does not exist or is not a folder")
    return root


def find_set(data_root: Path, name: str) -> Path:
    """Folder of benchmark set ``name`` below ``data_root``.

    ``data_root`` may be the data folder itself (``.../data``), its ``benchmarks`` sub-folder, or
    a folder holding ``<name>/HR`` or ``<name>``.

    Raises:
        UsageError: unknown set name, or the set is not found below the root.
    """
    known = {k.lower(): k for k in SET_LOCATIONS}
    canon = known.get(name.lower())
    candidates: list[Path] = [data_root / name / "HR", data_root / name]
    if canon is not None:
        for rel in SET_LOCATIONS[canon]:
            candidates += [data_root / rel, data_root.parent / rel]
            candidates.append(data_root / Path(rel).relative_to(Path(rel).parts[0]))
    for c in candidates:
        if c.is_dir():
            return c
    if canon is None:
        import difflib

        close = difflib.get_close_matches(name, SET_LOCATIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"--sets: unknown set {name!r}{hint}; known: {', '.join(SET_LOCATIONS)}")
    raise UsageError(
        f"--sets: {canon} not found below {data_root} (looked for {SET_LOCATIONS[canon][0]})"
    )


def load_set(data_root: Path, name: str) -> dict[str, np.ndarray]:
    """HR images of benchmark set ``name`` as ``{stem: (H, W, 3) uint8}``."""
    return load_folder(find_set(data_root, name))


def load_set_with_gray(data_root: Path, name: str) -> tuple[dict[str, np.ndarray], set[str]]:
    """:func:`load_set` plus the stems of single-channel files."""
    return load_folder_with_gray(find_set(data_root, name))


@dataclass
class DataConfig:
    """Where training/validation images come from (the ``data`` block of a config).

    Attributes:
        source: ``"builtin"`` (skimage photos) or a folder path of HR images.
        images: subset of built-in photo names (default: all of :data:`BUILTIN_PHOTOS`).
        val_fraction: fraction of images held out for the alpha step / validation.
        patch_size: HR patch side.
        batch_size: patches per step.
    """

    source: str = "builtin"
    images: list[str] = field(default_factory=list)
    val_fraction: float = 0.2
    patch_size: int = 48
    batch_size: int = 8

    def load(self) -> dict[str, np.ndarray]:
        if self.source == "builtin":
            return load_builtin(self.images or None)
        imgs = load_folder(self.source)
        if self.images:
            missing = [n for n in self.images if n not in imgs]
            if missing:
                raise UsageError(f"data.images: not in {self.source}: {missing}")
            imgs = {n: imgs[n] for n in self.images}
        return imgs
