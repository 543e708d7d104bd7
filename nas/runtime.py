"""Run-time facts shared by the engine and the study layer: RNG states, git commit, versions."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def rng_state() -> dict:
    """The global torch RNG state (CPU, and every CUDA device when available), for checkpoints."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore a state from :func:`rng_state` (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_commit() -> str:
    """The short git commit of the package checkout, or ``"unknown"`` (not a checkout, no git)."""
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, cwd=Path(__file__).resolve().parent, timeout=5)
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> str:
    """``acla-nas X, torch Y, optuna Z, python W, git C`` (one line, for run records)."""
    import optuna

    from nas import __version__

    return (f"acla-nas {__version__}, torch {torch.__version__}, optuna {optuna.__version__}, "
            f"python {platform.python_version()}, git {git_commit()}")
