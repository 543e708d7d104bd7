"""Training patches at any scale: image sources, a deterministic patch stream, DataLoader workers.

**Sources** of paired images (:class:`PairSource`):

* :class:`MemorySource` - decoded images held in memory (the built-in photos, small folders);
* :class:`SubImageSource` - a folder of HR images of any size and number (DIV2K: 800 images at
  2K) cut once into overlapping sub-images (BasicSR's ``extract_subimages``: 480-pixel crops,
  step 240) stored as PNG in a cache folder, together with their degraded inputs made once
  (MATLAB bicubic for SR, JPEG, or read from a folder of paired LR images in the DIV2K layout,
  ``0001x2.png`` beside ``0001.png``). Preparation handles one image at a time and training reads
  one sub-image per patch, so memory does not grow with the number of images.

**The stream** (:class:`PatchStream`): the patch in slot ``j`` of the global batch of step ``t``
is a pure function of ``(seed, t, j)`` - which image, where, which flips, which noise - drawn
from ``numpy.random.default_rng([seed, t, j])``. So resuming at step ``t`` is exact (the stream's
whole state is the step), ``DataLoader`` workers can build the patches in any order, and the
ranks of a ``torchrun`` group each take their disjoint slots of the same global batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from nas.errors import UsageError
from nas.restoration.data import PairedImage, augment_pair, to_tensor
from nas.restoration.images import list_images, load_image
from nas.restoration.task import Task, modcrop


class PairSource:
    """A set of paired images, by index (``len``, ``pair(i)``, ``size(i)``)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def pair(self, i: int) -> PairedImage:
        """The ``i``-th image and its degraded input."""
        raise NotImplementedError

    def size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of the ``i``-th HR image."""
        return self.pair(i).hr.shape[:2]

    def name(self, i: int) -> str:
        """The name of the ``i``-th image (for error messages)."""
        return self.pair(i).name


class MemorySource(PairSource):
    """Paired images held in memory (:func:`nas.restoration.data.make_pairs`)."""

    def __init__(self, pairs: Sequence[PairedImage]) -> None:
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def pair(self, i: int) -> PairedImage:
        """The ``i``-th pair (no copy)."""
        return self.pairs[i]


def lr_partner(lr_folder: Path, hr_path: Path, scale: int) -> Path:
    """The LR file paired with an HR file: DIV2K's ``<stem>x<scale>.<ext>`` or the same stem.

    Raises:
        UsageError: neither exists (names both).
    """
    for cand in [lr_folder / f"{hr_path.stem}x{scale}{hr_path.suffix}",
                 *(lr_folder / f"{hr_path.stem}x{scale}{s}" for s in (".png", ".bmp", ".jpg")),
                 *(lr_folder / f"{hr_path.stem}{s}" for s in (hr_path.suffix, ".png"))]:
        if cand.is_file():
            return cand
    raise UsageError(f"data.lr_source: no LR image for {hr_path.name} in {lr_folder} (looked for "
                     f"{hr_path.stem}x{scale}{hr_path.suffix} and {hr_path.name})")


class SubImageSource(PairSource):
    """HR images cut into sub-images cached as PNG files with their degraded inputs.

    Args:
        files: the HR image files.
        task: the task (SR inputs from MATLAB bicubic or ``lr_folder``; JPEG made once;
            denoising and demosaicing degrade on the fly).
        cache_root: where prepared sub-images live (``$ACLA_NAS_CACHE/subimages/<key>/``).
        crop, step: sub-image side and stride (HR pixels), BasicSR's 480 / 240 by default.
        lr_folder: paired LR images (SR only), instead of MATLAB bicubic.
        progress: print one line per 50 prepared images.

    Raises:
        UsageError: unreadable image, missing LR partner, an LR image of the wrong size.
    """

    def __init__(self, files: Sequence[Path], task: Task, cache_root: Path, crop: int = 480,
                 step: int = 240, lr_folder: Path | None = None, progress: bool = False) -> None:
        self.task = task
        m = task.hr_modulo * 2
        crop, step = crop - crop % m, max(m, step - step % m)
        key = hashlib.sha256(json.dumps({
            "files": [(str(f), os.path.getsize(f), os.path.getmtime(f)) for f in files],
            "task": task.to_dict(), "crop": crop, "step": step,
            "lr": str(lr_folder) if lr_folder else None, "version": 1}).encode()).hexdigest()[:16]
        self.folder = Path(cache_root) / "subimages" / key
        index = self.folder / "index.json"
        if not index.is_file():
            self._prepare(files, crop, step, lr_folder, progress)
        self.items = json.loads(index.read_text())

    def _prepare(self, files, crop, step, lr_folder, progress) -> None:
        from PIL import Image

        from nas.io import atomic_write, atomic_write_json

        s = self.task.scale
        stores_lq = self.task.name in ("sr", "jpeg")
        items = []
        for n, f in enumerate(files):
            hr = modcrop(load_image(f), self.task.hr_modulo)
            if stores_lq:
                if lr_folder is not None:
                    lq = load_image(lr_partner(Path(lr_folder), Path(f), s))
                    if lq.shape[0] * s != hr.shape[0] or lq.shape[1] * s != hr.shape[1]:
                        raise UsageError(f"data.lr_source: {f.name}: LR {lq.shape[1]}x{lq.shape[0]} "
                                         f"is not HR {hr.shape[1]}x{hr.shape[0]} / {s}")
                else:
                    lq = self.task.degrade(hr).round().clip(0, 255).astype(np.uint8)
            h, w = hr.shape[:2]
            ys = list(range(0, max(h - crop, 0) + 1, step)) or [0]
            xs = list(range(0, max(w - crop, 0) + 1, step)) or [0]
            if ys[-1] + crop < h:
                ys.append(max(h - crop, 0))
            if xs[-1] + crop < w:
                xs.append(max(w - crop, 0))
            for y in ys:
                for x in xs:
                    name = f"{Path(f).stem}_{y:05d}_{x:05d}"
                    sub = hr[y:y + crop, x:x + crop]
                    for kind, img in [("hr", sub)] + ([("lq", lq[y // s:(y + crop) // s,
                                                                  x // s:(x + crop) // s])]
                                                       if stores_lq else []):
                        path = self.folder / kind / f"{name}.png"
                        atomic_write(path, lambda fh, a=img: Image.fromarray(a).save(fh, "PNG"))
                    items.append({"name": name, "h": int(sub.shape[0]), "w": int(sub.shape[1])})
            if progress and (n + 1) % 50 == 0:
                print(f"sub-images: {n + 1}/{len(files)} images prepared", flush=True)
        atomic_write_json(self.folder / "index.json", items)

    def __len__(self) -> int:
        return len(self.items)

    def size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of sub-image ``i`` (from the index, no decoding)."""
        return self.items[i]["h"], self.items[i]["w"]

    def name(self, i: int) -> str:
        """Sub-image ``i``'s name, ``<image>_<y>_<x>``."""
        return self.items[i]["name"]

    def pair(self, i: int) -> PairedImage:
        """Sub-image ``i`` read from the cache (its input degraded on the fly when not stored)."""
        name = self.items[i]["name"]
        hr = load_image(self.folder / "hr" / f"{name}.png")
        lq_file = self.folder / "lq" / f"{name}.png"
        if lq_file.is_file():
            lq = load_image(lq_file).astype(np.float32)
        else:
            lq = self.task.degrade(hr)
        return PairedImage(name, hr, lq)


def folder_source(folder: str | os.PathLike, task: Task, names: Sequence[str] | None = None,
                  lr_folder: str | os.PathLike | None = None,
                  cache_root: Path | None = None) -> SubImageSource:
    """A :class:`SubImageSource` of the images of ``folder`` (those in ``names`` if given)."""
    from nas.restoration.data import default_cache_dir

    files = list_images(folder)
    if names is not None:
        keep = set(names)
        files = [f for f in files if f.stem in keep]
    return SubImageSource(files, task, cache_root or default_cache_dir(),
                          lr_folder=Path(lr_folder) if lr_folder else None)


class PatchDataset(torch.utils.data.Dataset):
    """Patch ``(t, j)``: slot ``j`` of the global batch of step ``t`` (see the module docstring).

    Args:
        source: the images.
        task: the task (scale, Bayer phase, AWGN drawn per patch).
        patch_size: HR patch side.
        seed: seed of the stream.
        augment: random flips and transposition.

    Raises:
        UsageError: the patch size is not a multiple of the task's HR modulo, or an image is
            smaller than a patch.
    """

    def __init__(self, source: PairSource, task: Task, patch_size: int, seed: int,
                 augment: bool = True) -> None:
        if patch_size % task.hr_modulo:
            raise UsageError(f"patch_size: {patch_size} is not a multiple of {task.hr_modulo} "
                             f"({task.describe()})")
        if len(source) == 0:
            raise UsageError("data: no training images")
        self.source, self.task, self.patch, self.seed, self.augment = (source, task, patch_size,
                                                                       seed, augment)
        for i in range(len(source)):
            h, w = source.size(i)
            if min(h, w) < patch_size:
                raise UsageError(f"{source.name(i)}: image {w}x{h} is smaller than the patch size "
                                 f"{patch_size}")

    def __len__(self) -> int:  # an endless stream: the index is (step, slot)
        return 2 ** 62

    def __getitem__(self, index: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lq (3, p/s, p/s), hr (3, p, p))`` float32 in [0, 1] of patch ``(step, slot)``."""
        t, j = index
        rng = np.random.default_rng([self.seed, t, j])
        pair = self.source.pair(int(rng.integers(len(self.source))))
        s, p = self.task.scale, self.patch
        mod = 2 if self.task.name == "demosaic" else 1
        h, w = pair.hr.shape[:2]
        y = int(rng.integers(0, (h - p) // (s * mod) + 1)) * s * mod
        x = int(rng.integers(0, (w - p) // (s * mod) + 1)) * s * mod
        hr = pair.hr[y:y + p, x:x + p].astype(np.float32)
        if self.task.name == "denoise":
            lq = hr + rng.standard_normal(hr.shape, dtype=np.float32) * np.float32(self.task.sigma)
        else:
            lq = pair.lq[y // s:(y + p) // s, x // s:(x + p) // s]
        if self.augment:
            lq, hr = augment_pair(lq, hr, rng, keep_bayer=self.task.name == "demosaic")
        return to_tensor(np.ascontiguousarray(lq))[0], to_tensor(np.ascontiguousarray(hr))[0]


class _StepBatches(torch.utils.data.Sampler):
    """Index lists ``[(t, j) for this rank's slots j]`` for steps ``start, start+1, ...``."""

    def __init__(self, start: int, batch: int, rank: int, world: int) -> None:
        self.start, self.batch, self.rank, self.world = start, batch, rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        n = self.batch // self.world
        t = self.start
        while True:
            yield [(t, j) for j in range(self.rank * n, (self.rank + 1) * n)]
            t += 1

    def __len__(self) -> int:
        return 2 ** 62


class PatchStream:
    """This rank's shard of each step's global batch, built by ``workers`` processes.

    Args:
        source: the images.
        task: the task.
        patch_size: HR patch side.
        batch_size: the global batch (all ranks together).
        seed: seed of the stream.
        workers: ``DataLoader`` worker processes (0: the calling process).
        augment: flips and transposition.

    Under ``torch.distributed`` each rank serves its slots of the global batch.

    The whole state is :attr:`step` (``state_dict``/``load_state_dict`` for checkpoints).

    Raises:
        UsageError: a batch size the ranks cannot share, or bad patches (see
            :class:`PatchDataset`).
    """

    def __init__(self, source: PairSource, task: Task, patch_size: int, batch_size: int,
                 seed: int, workers: int = 0, augment: bool = True) -> None:
        import torch.distributed as tdist

        self.dataset = PatchDataset(source, task, patch_size, seed, augment)
        self.batch, self.workers = batch_size, workers
        grouped = tdist.is_available() and tdist.is_initialized()
        self.rank = tdist.get_rank() if grouped else 0
        self.world = tdist.get_world_size() if grouped else 1
        if batch_size % self.world:
            raise UsageError(f"batch size {batch_size} is not a multiple of the {self.world} "
                             "processes")
        self.step = 0
        self._it = None

    def _iterator(self):
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_StepBatches(self.step, self.batch, self.rank, self.world),
            num_workers=self.workers, persistent_workers=False,
            prefetch_factor=2 if self.workers else None,
            # its own generator: creating the iterator must not draw from the global RNG,
            # whose state is part of a resumable run (the patches depend on (seed, t, j) only)
            generator=torch.Generator().manual_seed(self.dataset.seed))
        return iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(lq, hr)`` of the next step: ``(B/W, 3, h, w)``, ``(B/W, 3, H, W)``."""
        if self._it is None:
            self._it = self._iterator()
        lq, hr = next(self._it)
        self.step += 1
        return lq, hr

    def state_dict(self) -> dict:
        """``{"step": t}``: the next step the stream will serve."""
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``state["step"]`` (workers restart there)."""
        self.step = int(state["step"])
        self._it = None

    def close(self) -> None:
        """Stop the worker processes."""
        self._it = None
