"""Shared fixtures of the model tests."""

from __future__ import annotations

import shutil

import pytest

from search_spaces.operators.acla_fused import fused_available


@pytest.fixture(scope="session")
def fused_kernel():
    """ACLA's fused CPU kernel, built (skips without a C++ compiler; a compiler present and no
    kernel is a failure)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the fused kernel cannot be built here")
    assert fused_available(), "a C++ compiler is present but the fused kernel did not build"
