"""Image files: the built-in photos, folders of HR images, and the benchmark sets.

Colour order is **RGB** everywhere; images are ``uint8`` arrays ``(H, W, 3)``.

Data sources:

* the built-in photos shipped inside the scikit-image wheel (:data:`BUILTIN_PHOTOS`), the default
  data set: real images, no download;
* folders of HR images (``*.png``, ``*.jpg``, ``*.bmp``, ``*.tif``), e.g. T91 or the benchmark
  sets laid out as ``<root>/benchmarks/<Set>/HR/*.png`` (``--data-root`` or ``ACLA_NAS_DATA``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from nas.errors import UsageError, did_you_mean

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

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

#: built-in photos that must land in the same split: the two views of one stereo pair
BUILTIN_GROUPS = (("motorcycle_left", "motorcycle_right"),)


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


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (no decoding).

    Raises:
        UsageError: missing or unreadable file (names the file).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise UsageError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from None
    return h, w


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
    """The built-in real photos of ``skimage.data`` as ``{name: (H, W, 3) uint8}`` (read-only
    arrays, decoded once per process).

    Args:
        names: subset of :data:`BUILTIN_PHOTOS` (default: all).

    Raises:
        UsageError: unknown photo name (with a did-you-mean).
    """
    out: dict[str, np.ndarray] = {}
    for name in names or BUILTIN_PHOTOS:
        if name not in BUILTIN_PHOTOS:
            raise UsageError(f"unknown built-in photo {name!r}{did_you_mean(name, BUILTIN_PHOTOS)}; "
                             f"known: {', '.join(BUILTIN_PHOTOS)}")
        out[name] = _builtin(name)
    return out


@functools.lru_cache(maxsize=None)
def _builtin(name: str) -> np.ndarray:
    import skimage.data as skd

    if name.startswith("motorcycle_"):
        left, right, _ = skd.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(skd, name)()
    img = to_rgb_uint8(img, f"skimage.data.{name}")
    img.setflags(write=False)
    return img


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
        hint = did_you_mean(name, SET_LOCATIONS)
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
