"""Shared test fixtures: the reference data under ../shared/reference."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not SHARED_REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {SHARED_REFERENCE} (shared/ beside the checkout)")
    return SHARED_REFERENCE
