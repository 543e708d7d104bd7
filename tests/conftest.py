"""Shared fixtures: the real-image data root (../shared/data or $ACLA_NAS_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    env = os.environ.get("ACLA_NAS_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if (root / "benchmarks" / "Set5" / "HR").is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real benchmark images not found: set ACLA_NAS_DATA or put shared/data beside "
                    "the checkout")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ACLA_NAS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from threads; one thread keeps timings stable on shared CPUs
    (and two worker processes from starving each other)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
