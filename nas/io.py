"""File I/O shared by every layer: atomic writes that honour the umask, and safe text reads.

Atomic writes go to a temporary file in the same folder, are fsynced, get the permissions a plain
``open(path, "w")`` would give (``0o666 & ~umask``, i.e. 0644 by default, not ``mkstemp``'s
0600) and are moved onto ``path`` with ``os.replace``: a crash mid-write leaves the previous file
intact (never a truncated checkpoint or ArchSpec).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from nas.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create folder ``path`` (and parents).

    Raises:
        UsageError: a parent is a file, or the folder cannot be created (names the path).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{path}: cannot create the {what}: a file is in the way") from None
    except NotADirectoryError:
        raise UsageError(f"{path}: cannot create the {what}: a parent is a file") from None
    except PermissionError:
        raise UsageError(f"{path}: cannot create the {what}: permission denied") from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file, fsync it, and move it onto ``path``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UsageError: the folder cannot be created (a parent is a file) or is not writable.
    """
    path = Path(path)
    ensure_dir(path.parent)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, expected a file path")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError:
        raise UsageError(f"{path.parent}: folder is not writable") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (see :func:`atomic_write`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` atomically (see :func:`atomic_write`)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict | None:
    """Load a training checkpoint written by :func:`atomic_torch_save`, for resuming.

    A missing file gives ``None``. A file that cannot be read (truncated or damaged by something
    else; our own writes are atomic) is moved aside to ``<name>.unreadable-<time>`` with a warning
    and ``None`` is returned, so the run starts over instead of refusing to run: what it held is
    lost either way, and nothing is left in the way of the re-run.

    Returns:
        The checkpoint dict, or ``None``.
    """
    import logging
    import time

    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a checkpoint dict")
        return state
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a damaged file
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        logging.getLogger("acla_nas").warning(
            "%s: unreadable checkpoint (%s); moved to %s, starting over", path,
            e.__class__.__name__, aside.name)
        return None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """Read a UTF-8 text file.

    Args:
        path: the file.
        what: what the file is, for messages ("config file", "ArchSpec file").

    Raises:
        UsageError: missing, a folder, unreadable, or not UTF-8 text (one line naming the file).
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, expected a {what}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what}") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the {what} ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not a text {what} (invalid UTF-8 at byte {e.start})") from None


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> None:
    """Drop the lines of a JSON-lines log whose ``step`` exceeds ``max_step`` (written after the
    checkpoint a run resumes from; they will be written again). Unparseable lines (a torn last
    line after a kill) are dropped too."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if ln.strip() and json.loads(ln).get("step", 0) <= max_step:
                keep.append(ln)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))
