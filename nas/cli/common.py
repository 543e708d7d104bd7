"""Helpers shared by the command modules: devices, config flags, run-folder ownership."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from nas.errors import UsageError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_arg(value: str) -> str:
    """argparse type of ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:K``."""
    if not DEVICE_RE.match(value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:K, got {value!r}")
    return value


def resolve_device(name: str):
    """The torch device of a ``--device`` value (``auto``: CUDA when available).

    Raises:
        UsageError: CUDA requested but not available, or ``cuda:K`` beyond the device count.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {name} requested but no CUDA device is available")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {name} requested but only {torch.cuda.device_count()} "
                             "CUDA device(s) are visible")
        return dev
    return torch.device(name)


def setup_device(name: str):
    """:func:`resolve_device`, then join the ``torchrun`` group if this process is one of several
    (``cuda`` becomes this rank's ``cuda:<LOCAL_RANK>``)."""
    from nas.engine import distributed as dist

    return dist.init(resolve_device(name))


def parse_scale(value: str) -> int:
    """argparse type of ``--scale`` (2, 3 or 4)."""
    try:
        s = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be 2, 3 or 4, got {value!r}") from None
    if s not in (2, 3, 4):
        raise argparse.ArgumentTypeError(f"scale must be 2, 3 or 4, got {s}")
    return s


def config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``-c/--config`` and ``--set KEY=VALUE`` (repeatable)."""
    p.add_argument("-c", "--config", type=Path, required=required, help="YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set search.steps=100 (repeatable)")


#: files a run command owns in its folder (removed by --force before a new run starts there)
OWNED = {"supernet": ("supernet", "search.pt", "log.jsonl", "arch.json", "result.json", "tb",
                      "config.yaml", "run.json"),
         "retrain": ("retrain.pt", "val.jsonl", "model_best.pt", "model_last.pt", "arch.json",
                     "config.yaml", "eval.csv", "eval_summary.csv", "eval_ema.csv",
                     "eval_summary_ema.csv", "result.json", "run.json", "tb")}


def claim_run_dir(out: Path, command: str, identity: dict, force: bool) -> None:
    """Make sure ``out`` is this run's folder before anything is written there.

    A run folder records what made it (``run.json``: the command and a digest of its config and
    inputs). Re-running the same command with the same inputs resumes; a folder that holds
    another run is refused unless ``force``, which removes the files the command owns first.

    Raises:
        UsageError: ``out`` is a file, or holds a different run (and not ``force``).
    """
    from nas.io import atomic_write_json, ensure_dir

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, expected a run folder")
    marker = out / "run.json"
    mine = {"command": command, **identity}
    if out.is_dir() and any(out.iterdir()):
        old = None
        if marker.is_file():
            try:
                old = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
        owned = [n for n in OWNED[command] if (out / n).exists()]
        foreign = old != mine if old is not None else bool(owned) or any(
            (out / n).exists() for names in OWNED.values() for n in names)
        if foreign and not force:
            what = (f"a {old.get('command')} run with another config" if isinstance(old, dict)
                    else "files of another run")
            raise UsageError(f"--out {out}: holds {what}; use another --out, or --force to "
                             "start over there")
        if foreign:
            for n in OWNED[command]:
                p = out / n
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
    ensure_dir(out, "run folder")
    atomic_write_json(marker, mine)
