"""Shared test fixtures. Real scenes live in ../shared/data (override with GS_SHARED_DATA)."""

import os
import sys
from pathlib import Path

import pytest

# As main.py: GNU OpenMP's idle threads otherwise spin at every barrier, and on a busy machine that made
# small-tensor work (the tiny SDS model's convolutions) ~20x slower in CPU time. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED_DATA = Path(os.environ.get("GS_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/data, or skip the test (with the reason) when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not found: {p} (set GS_SHARED_DATA to the shared/data folder)")
    return p
