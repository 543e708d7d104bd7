"""Run logs: a JSON-lines file on rank 0, plus TensorBoard scalars when asked for.

TensorBoard (``search.tensorboard``, ``retrain.tensorboard``) is an optional dependency (the
``tensorboard`` extra) and off by default. Scalars are written under the row's ``phase``, or the
log's own (``supernet/l1``, ``alpha/e_gflops``, ``metrics/val_psnr``, ...) at the row's
``step``; gate probabilities (``probs``: ``{label: {value: p}}``) as ``gates/<label>/<value>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nas.engine import distributed as dist
from nas.errors import UsageError


def tensorboard_writer(folder: Path, field: str):
    """A TensorBoard ``SummaryWriter`` writing to ``folder``.

    Args:
        folder: the event folder.
        field: the config field that asked for it (named in the error).

    Raises:
        UsageError: the ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(f"{field}: needs the tensorboard package "
                         "(pip install 'acla-nas[tensorboard]')") from None
    return SummaryWriter(str(folder))


class RunLog:
    """Append rows to ``path`` (JSON lines) on rank 0, and to TensorBoard in ``tb_dir`` if given.

    A context manager; on ranks other than 0 it writes nothing. ``phase`` prefixes the scalars
    of rows that carry no ``phase`` of their own; :attr:`tb` (``None`` without TensorBoard) takes
    further scalars.

    Raises:
        UsageError: ``tb_dir`` given but TensorBoard is not installed.
    """

    def __init__(self, path: Path, tb_dir: Path | None = None, field: str = "tensorboard",
                 phase: str = "train"):
        self.main = dist.is_main()
        self.phase = phase
        self.file = Path(path).open("a") if self.main else open(os.devnull, "w")
        try:
            self.tb = tensorboard_writer(tb_dir, field) if tb_dir is not None and self.main \
                else None
        except UsageError:
            self.file.close()
            raise

    def write(self, row: dict[str, Any]) -> None:
        """One row: a JSON line (flushed) and its numbers as scalars."""
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is None:
            return
        phase, step = row.get("phase", self.phase), int(row["step"])
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                self.tb.add_scalar(f"{phase}/{k}", v, step)
        for label, probs in (row.get("probs") or {}).items():
            for value, p in probs.items():
                self.tb.add_scalar(f"gates/{label}/{value}", p, step)

    def close(self) -> None:
        """Close the file and flush the events."""
        self.file.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
